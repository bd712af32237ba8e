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
- :mod:`clipdrift.pipeline.jobs.warm.server`: the server. It imports what the workflow scripts' code imports
  (derived from their import closures), starts no thread, runs no tensor computation, sets no
  thread count and never initialises CUDA before it forks.
- :mod:`clipdrift.pipeline.jobs.warm.child`: what a forked child does before it runs the script: the job's
  working directory, environment, umask, standard streams, signal dispositions and random
  seeds, then the script itself, read from disk.
- :mod:`clipdrift.pipeline.jobs.warm.protocol`: the socket directory, the framing of messages, the code and
  environment fingerprint, and the process facts both sides read from ``/proc``.

The server also imports the package modules the scripts reach, so a child starts with nothing
left to import. The fingerprint (every byte of the package's files, the interpreter, the
installed distributions, the import-relevant environment) ties a server to what it imported: a
client whose fingerprint differs retires the old server and starts a fresh one, so a job never
runs code older than the files on disk.
"""
