"""Device choice: CUDA when present (or asked for), else CPU."""

from __future__ import annotations


def pick_device(requested: str | None = "auto") -> str:
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{requested}' requested but no CUDA GPU is visible")
    return requested
