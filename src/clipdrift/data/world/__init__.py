"""The offline synthetic world: procedural image–caption data, a tiny CLIP pretrained on it,
and stand-in tasks for EuroSAT, Oxford-IIIT Pets and CIFAR-100.

Everything is determined by :class:`WorldConfig` (its seed) and, for the backbone,
:class:`PretrainConfig`; nothing is shipped in git or downloaded.

- :mod:`clipdrift.data.world.render`: the world's images and captions from attributes
- :mod:`clipdrift.data.world.tasks`: the stand-in tasks (their classes, shifts and splits)
- :mod:`clipdrift.train.pretrain`: contrastive pretraining of the tiny CLIP (open_clip)

This package module imports none of them, so a data job does not load open_clip for the
pretraining code it never runs: import from the submodules.
"""
