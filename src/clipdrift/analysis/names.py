"""The names of the study's tables (what the aggregate step writes under tables/).

No imports: the Snakefile reads them to declare the aggregate step's outputs on every start.
"""

# Table names as written under tables/ (the paper tables only for the paper preset).
TABLES = ("runs", "cells", "methods", "layers", "stats", "correlations", "cka_entropy", "probe_sensitivity", "curves",
          "layer_groups", "layer_tests", "traces", "zeroshot", "curve_tasks")
PAPER_TABLES = ("paper_cells", "paper_methods", "paper_correlations", "paper_ablations")
