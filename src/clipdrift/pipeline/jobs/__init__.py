"""How and where a job runs, not what it computes: the runner every script calls, GPU slots and
the warm job server. Outside every code digest (:mod:`clipdrift.pipeline.codedigest`)."""
