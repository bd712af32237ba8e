"""Warm job start-up: a job server that holds the heavy imports and forks each job.

Every Snakemake job is its own Python process, and a model job pays 7-8 s importing torch,
torchvision, open_clip, peft, pandas and pyarrow before it computes anything. Locally, the first
job of a ``snakemake`` run starts a server (one per working directory and user) that imports
that stack once; every job's script then hands its job to the server and waits, and the server
forks a child that *is* the job. Jobs stay separate Snakemake jobs: same inputs, outputs, logs,
benchmarks and rerun behaviour.

- :mod:`clipdrift.pipeline.jobs.warm.client`: ``hand_over(snakemake)``, the first call of every workflow
  script. Stdlib only, so the process Snakemake starts stays a thin client. It runs the job
  through the server and exits with the job's status, or returns (the job then runs cold in
  this process, exactly as without a server) and says why in the job's log.
- :mod:`clipdrift.pipeline.jobs.warm.connect`: reaching this user's server, verified before a
  byte is sent, or starting one; a deadline on every wait.
- :mod:`clipdrift.pipeline.jobs.warm.state`: where a server keeps its files: a folder only its
  user controls, outside the working directory, reached through one checked descriptor.
- :mod:`clipdrift.pipeline.jobs.warm.server`: the server. It starts no thread, runs no tensor
  computation, sets no thread count and never initialises CUDA before it forks.
- :mod:`clipdrift.pipeline.jobs.warm.stack`: what the server imports (derived from the workflow
  scripts' import closures) and when it is safe to fork.
- :mod:`clipdrift.pipeline.jobs.warm.child`: what a forked child does before it runs the script: the job's
  working directory, environment, umask, standard streams, signal dispositions and random
  seeds, then the script itself, read from disk.
- :mod:`clipdrift.pipeline.jobs.warm.freshness`: never old code: the fingerprint of the package and the
  Python environment, and the files the server imported, checked before each fork.
- :mod:`clipdrift.pipeline.jobs.warm.wire`: the framing of messages, the peer's credentials and the
  process facts both sides read from ``/proc``.

The server also imports the package modules the scripts reach, so a child starts with nothing
left to import. The fingerprint (every byte of the package's files, the interpreter, the
installed distributions, the files Python runs at start-up, the import-relevant environment)
ties a server to what it imported: a client whose fingerprint differs retires the old server and
starts a fresh one; a server that finds a file it imported changed retires too. A job never runs
code older than the files on disk.
"""
