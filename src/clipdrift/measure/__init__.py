"""Measuring a model against the pretrained one: attention statistics and CKA on the probe,
zero-shot transfer, curves (interpolation and kept epochs), and the evaluation runtime they
share. No file I/O. This face imports none of its modules, so a job loads only those it uses."""
