"""The study's analysis: tidy tables, statistics, findings, figures, the published comparison.

Pure functions of the run artifacts (``docs/artifacts.md``); no model code and no file I/O —
the aggregate and report scripts read artifacts, call these, and write with ``clipdrift.core.io``.

- ``tables``: :func:`run_table`, :func:`cell_table`, :func:`method_table`, :func:`layer_table`
- ``stats`` / ``compare``: :func:`bootstrap_ci`, :func:`holm`, :func:`comparisons`, :func:`correlations`
- ``findings``: regimes that method-only averages hide, as generated sentences
- ``reference``: the published numbers, :func:`paper_comparison`, :func:`paper_correlations`
- ``relations``: CKA against entropy drift, per run and per layer, with permutation p-values
- ``sensitivity``: how much of a drift the probe subset alone could explain
- ``study``: :func:`build_tables`, every table of a study at once; ``names``: the tables' names
"""
