"""Alignment, fusion, the sequential user model, baselines and training."""
