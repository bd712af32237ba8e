"""clipdrift: what does fine-tuning do to a pretrained CLIP, and what does it cost in transfer?

The science package of the clipdrift study workflow, one folder per layer, each importing only
from the layers below it (docs/design.md; tests/test_layers.py keeps it so):

- ``core``: errors, device and precision, artifact I/O
- ``data``, ``world``: image datasets and the synthetic world's
- ``model``: CLIP through open_clip, explicit attention, adapters, checkpoints, interpolation
- ``train``: fine-tuning and the synthetic world's pretraining
- ``measure``: drift on the probe, zero-shot transfer, curves
- ``analysis``, ``report``: tidy tables, statistics, findings; figures and the HTML report
- ``pipeline``: settings from the config, code digests, the protocol, how jobs run
"""

__version__ = "0.1.0"
