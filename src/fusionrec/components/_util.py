"""Plumbing shared by the component bodies (imported inside them, at run time, in the step image)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``{"a.b.c": value}`` (bools and non-finite numbers dropped)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_metrics(metrics: Any, source: str | Path | Mapping[str, Any], prefix: str = "", limit: int = 200) -> int:
    """Log the numeric values of a JSON file (or mapping) to a KFP ``Metrics`` artifact; returns how many.

    KFP shows a Metrics artifact as a flat table, so nested keys are joined with dots. ``limit``
    keeps the table readable (per-user arrays never belong in it).
    """
    if not isinstance(source, Mapping):
        path = Path(source)
        if not path.exists():
            return 0
        source = json.loads(path.read_text(encoding="utf-8"))
    flat = flatten(source, prefix)
    for name in sorted(flat)[:limit]:
        metrics.log_metric(name, flat[name])
    return min(len(flat), limit)


def config(cls: type, section: Mapping[str, Any] | None, **explicit: Any):
    """Build a step config: the pipeline's ``<step>_config`` dict, then explicit parameters on top.

    Explicit parameters given as ``None`` (or empty strings) mean "keep the section/default value".
    """
    from fusionrec.config import load_config

    overrides = dict(section or {})
    overrides.update({k: v for k, v in explicit.items() if v is not None and v != ""})
    return load_config(cls, None, overrides=overrides)
