"""Image datasets as the study uses them: the split format, sampling, the real datasets and
building a study's task (from the synthetic world or from disk)."""
