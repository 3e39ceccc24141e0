"""Encoders found by name, per modality (as RecBole/MMRec find models by name).

An encoder turns a batch of one modality's raw inputs into float32 vectors:
``text`` -> ``str``; ``image``/``audio`` -> ``pathlib.Path`` (absolute, inside the dataset
artifact); ``tabular`` -> ``dict`` (one item's tabular columns). ``encode_batch`` returns
``(vectors [n, dim] float32, reasons)`` where ``reasons[i]`` is ``None`` for a good row or a
short reason string ("corrupt image: ...") that masks that item for this modality.
An encoder that learns from the catalog (tabular) also has ``fit(rows)``: the encode step calls
it with ALL items' inputs before encoding (see ``FittableEncoder``).

A new encoder is one file in ``fusionrec/encoders/`` with a factory decorated by
``@register(modality, name)``: the modules that register are discovered (every module of this
package whose source has a top-level ``@register(``), and imported on first use.

Example:
    >>> enc = build("text", "minilm")                            # doctest: +SKIP
    >>> vecs, reasons = enc.encode_batch(["a red bicycle"])     # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, get_args, runtime_checkable

import numpy as np

Modality = Literal["text", "image", "audio", "tabular"]
"""The item modalities of the data contract (``EncodeConfig.modality`` is typed by it)."""
MODALITIES: tuple[str, ...] = get_args(Modality)


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
    """Class/factory decorator: make an encoder available as ``build(modality, name)``."""
    if modality not in _REGISTRY:
        raise ValueError(f"unknown modality '{modality}', expected one of {MODALITIES}")

    def wrap(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[modality][name] = factory
        if default:
            _DEFAULTS[modality] = name
        return factory

    return wrap


_DISCOVERED = False
_REGISTERS = re.compile(r"^@register\(", re.MULTILINE)


def encoder_modules() -> list[str]:
    """The modules of this package that register encoders (found by their ``@register(`` lines, not imported)."""
    here = Path(__file__).parent
    return [f"{__package__}.{m.name}" for m in pkgutil.iter_modules([str(here)])
            if _REGISTERS.search((here / f"{m.name}.py").read_text(encoding="utf-8"))]


def _discover() -> None:
    # Importing the modules runs their @register decorators; each imports torch etc. lazily.
    global _DISCOVERED
    if not _DISCOVERED:
        for module in encoder_modules():
            importlib.import_module(module)
        _DISCOVERED = True


def available(modality: str) -> list[str]:
    _discover()
    return sorted(_REGISTRY[modality])


def default_encoder(modality: str) -> str:
    _discover()
    if modality not in _DEFAULTS:
        raise KeyError(f"no default encoder registered for '{modality}'")
    return _DEFAULTS[modality]


def build(modality: str, name: str | None = None, options: Mapping[str, Any] | None = None, **kwargs: Any) -> Encoder:
    """Build the encoder ``name`` (or the modality's default) with ``kwargs``.

    ``options`` are run-wide settings (``device``, text ``max_length``) handed to the factory only
    when it names that parameter and ``kwargs`` does not set it.
    """
    _discover()
    if modality not in _REGISTRY:
        raise ValueError(f"unknown modality '{modality}', expected one of {MODALITIES}")
    name = name or default_encoder(modality)
    if name not in _REGISTRY[modality]:
        raise ValueError(f"unknown {modality} encoder '{name}'; available: {', '.join(available(modality)) or 'none'}")
    factory = _REGISTRY[modality][name]
    if options:
        params = inspect.signature(factory).parameters
        kwargs = {**{k: v for k, v in options.items() if k in params and k not in kwargs}, **kwargs}
    return factory(**kwargs)
