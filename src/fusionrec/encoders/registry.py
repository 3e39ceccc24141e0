"""Encoders found by name, per modality (as RecBole/MMRec find models by name).

An encoder turns a batch of one modality's raw inputs into float32 vectors:
``text`` -> ``str``; ``image``/``audio`` -> ``pathlib.Path`` (absolute, inside the dataset
artifact); ``tabular`` -> ``dict`` (one item's tabular columns). ``encode_batch`` returns
``(vectors [n, dim] float32, reasons)`` where ``reasons[i]`` is ``None`` for a good row or a
short reason string ("corrupt image: ...") that masks that item for this modality.
An encoder that learns from the catalog (tabular) also has ``fit(rows)``: the encode step calls
it with ALL items' inputs before encoding (see ``FittableEncoder``).

Example:
    >>> enc = get_encoder("text", "minilm")       # all-MiniLM-L6-v2 from its PyPI package, offline
    >>> vecs, reasons = enc.encode_batch(["a red bicycle", ""])
    >>> vecs.shape, reasons
    ((2, 384), [None, 'empty text'])
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

MODALITIES = ("text", "image", "audio", "tabular")


@runtime_checkable
class Encoder(Protocol):
    modality: str
    name: str
    dim: int

    def describe(self) -> dict[str, Any]:
        """What the manifest records: weights (package/path and version), preprocessing, dim."""
        ...

    def encode_batch(self, batch: Sequence[Any]) -> tuple[np.ndarray, list[str | None]]: ...


@runtime_checkable
class FittableEncoder(Encoder, Protocol):
    """An encoder with a fitting step (optional part of the protocol): ``fit`` sees every item."""

    def fit(self, rows: Sequence[Any]) -> Any: ...


_REGISTRY: dict[str, dict[str, Callable[..., Encoder]]] = {m: {} for m in MODALITIES}
_DEFAULTS: dict[str, str] = {}


def register(modality: str, name: str, default: bool = False) -> Callable:
    """Class/factory decorator: make an encoder available as ``get_encoder(modality, name)``."""
    if modality not in _REGISTRY:
        raise ValueError(f"unknown modality '{modality}', expected one of {MODALITIES}")

    def wrap(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[modality][name] = factory
        if default:
            _DEFAULTS[modality] = name
        return factory

    return wrap


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators; each imports torch etc. lazily.
    import importlib

    for mod in ("text", "image", "audio", "tabular"):
        try:
            importlib.import_module(f"fusionrec.encoders.{mod}")
        except ModuleNotFoundError as exc:  # a module not written yet must not hide the others
            if exc.name != f"fusionrec.encoders.{mod}":
                raise


def available(modality: str) -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY[modality])


def default_encoder(modality: str) -> str:
    _load_builtin()
    if modality not in _DEFAULTS:
        raise KeyError(f"no default encoder registered for '{modality}'")
    return _DEFAULTS[modality]


def get_encoder(modality: str, name: str | None = None, **kwargs: Any) -> Encoder:
    """Build the encoder ``name`` (or the modality's default) with ``kwargs``."""
    _load_builtin()
    if modality not in _REGISTRY:
        raise ValueError(f"unknown modality '{modality}', expected one of {MODALITIES}")
    name = name or default_encoder(modality)
    if name not in _REGISTRY[modality]:
        raise ValueError(f"unknown {modality} encoder '{name}'; available: {', '.join(available(modality)) or 'none'}")
    return _REGISTRY[modality][name](**kwargs)
