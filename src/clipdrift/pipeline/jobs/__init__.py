"""How and where a job runs: the runner every script calls, GPU slots, the warm job server."""
