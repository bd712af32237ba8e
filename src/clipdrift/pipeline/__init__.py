"""The workflow's own layer: settings from the config, code digests, the published protocol,
the artifacts' names, and how jobs run (:mod:`clipdrift.pipeline.jobs`)."""
