"""clipdrift: what does fine-tuning do to a pretrained CLIP, and what does it cost in transfer?

The science package of the clipdrift study workflow. Modules (see DESIGN.md §1):

- ``backbones``: building CLIP through open_clip, explicit attention, attention capture
- ``adapters``: the fine-tuning methods (Full FT, LoRA via peft) and their trainable state
- ``checkpoints``: adapter-aware safetensors checkpoints that rebuild the model
- ``io``: atomic writes, safetensors with metadata, tables
"""

__version__ = "0.1.0"
