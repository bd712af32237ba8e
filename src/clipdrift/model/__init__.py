"""CLIP as the study uses it: building it through open_clip with explicit attention, the
fine-tuning methods (adapters), checkpoints and weight interpolation."""
