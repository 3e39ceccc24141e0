"""Pretrained per-modality encoders behind a name registry, and the encode step."""
