"""The study's figures and its one self-contained HTML report."""
