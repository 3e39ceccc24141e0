"""Tabular encoder: standardised numeric columns + one-hot/hashed categorical columns.

``fit(rows)`` learns, over ALL items of the catalog (so shards agree), per numeric column its
mean/std and median (NaN/inf/None are imputed with the median and flagged in a missing-indicator
feature; standardised values are clipped to +-``clip``), and per categorical column its
``top_k`` most frequent values (one-hot) plus ``hash_buckets`` stable hash buckets (blake2b)
for every other value and one missing-indicator. Booleans count as numeric (0/1); a column is
numeric when every non-missing value parses as a number. The output dimension depends only on
the columns and the fitted state, and is fixed after ``fit``.

Example:
    >>> enc = build("tabular")                                   # doctest: +SKIP
    >>> enc.fit([{"price": 9.5, "format": "series"}, {"price": None, "format": "short"}])  # doctest: +SKIP
    >>> vecs, reasons = enc.encode_batch([{"price": 3.0, "format": "long"}])            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from fusionrec.data.dataset import is_missing
from fusionrec.encoders.registry import register

ALL_MISSING = "all tabular values missing"


def _is_missing(v: Any) -> bool:
    """Missing as a dataset cell is (``is_missing``), or an infinite number (no usable value either)."""
    return is_missing(v) or (isinstance(v, (float, np.floating)) and not math.isfinite(float(v)))


def _as_number(v: Any) -> float | None:
    """``v`` as a float, or None when it is not a number (strings that parse count as numbers)."""
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    if hasattr(v, "timestamp"):  # datetime / pandas Timestamp -> epoch seconds
        try:
            return float(v.timestamp())
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _category(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)


def _bucket(value: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little") % n


class TabularEncoder:
    """Deterministic numeric + categorical features of an item's tabular columns.

    Args:
        columns: the columns to use (default: every column seen in ``fit``'s rows).
        top_k: one-hot slots per categorical column (its most frequent values).
        hash_buckets: stable hash buckets for the remaining values of a categorical column.
        clip: standardised numeric values are clipped to ``[-clip, clip]``.
    """

    modality = "tabular"
    name = "standard"

    def __init__(self, columns: Sequence[str] | None = None, top_k: int = 16, hash_buckets: int = 8, clip: float = 5.0, device: str = "cpu") -> None:
        self.columns = list(columns) if columns is not None else None
        self.top_k = int(top_k)
        self.hash_buckets = int(hash_buckets)
        self.clip = float(clip)
        self.spec: list[dict[str, Any]] | None = None
        self.dim = 0

    # -- fitting
    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "TabularEncoder":
        """Learn each column's statistics / vocabulary from all items' rows."""
        columns = self.columns if self.columns is not None else sorted({k for r in rows for k in r})
        spec: list[dict[str, Any]] = []
        for col in columns:
            values = [r.get(col) for r in rows]
            present = [v for v in values if not _is_missing(v)]
            nums = [_as_number(v) for v in present]
            if all(n is not None for n in nums):
                x = np.asarray([n for n in nums if math.isfinite(n)], dtype=np.float64)
                if x.size:
                    mean, std, median = float(x.mean()), float(x.std()), float(np.median(x))
                else:
                    mean, std, median = 0.0, 0.0, 0.0
                spec.append({"column": col, "type": "numeric", "mean": mean, "std": std if std > 1e-12 else 1.0, "median": median})
            else:
                counts = Counter(_category(v) for v in present)
                top = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_k]]
                spec.append({"column": col, "type": "categorical", "top": top, "hash_buckets": self.hash_buckets})
        self.spec = spec
        self.dim = sum(2 if s["type"] == "numeric" else len(s["top"]) + s["hash_buckets"] + 1 for s in spec)
        return self

    def state_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        if self.spec is None:
            raise RuntimeError("tabular encoder not fitted: call fit(rows) first")
        return {
            "encoder": self.name,
            "dim": self.dim,
            "weights": {"fitted_state_sha256": self.state_hash()},
            "preprocessing": {
                "numeric": f"(x - mean) / std, clipped to +-{self.clip}; missing -> median + missing indicator",
                "categorical": f"one-hot of top {self.top_k} values + {self.hash_buckets} blake2b hash buckets + missing indicator",
                "columns": self.spec,
            },
        }

    # -- encoding
    def _row(self, row: Mapping[str, Any]) -> tuple[np.ndarray, bool]:
        assert self.spec is not None
        out = np.zeros(self.dim, dtype=np.float32)
        pos = 0
        any_present = False
        for s in self.spec:
            v = row.get(s["column"])
            missing = _is_missing(v)
            if s["type"] == "numeric":
                n = None if missing else _as_number(v)
                if n is None or not math.isfinite(n):
                    n, flag = s["median"], 1.0
                else:
                    flag, any_present = 0.0, True
                out[pos] = np.clip((n - s["mean"]) / s["std"], -self.clip, self.clip)
                out[pos + 1] = flag
                pos += 2
            else:
                width = len(s["top"]) + s["hash_buckets"] + 1
                if missing:
                    out[pos + width - 1] = 1.0
                else:
                    any_present = True
                    c = _category(v)
                    try:
                        out[pos + s["top"].index(c)] = 1.0
                    except ValueError:
                        if s["hash_buckets"]:
                            out[pos + len(s["top"]) + _bucket(c, s["hash_buckets"])] = 1.0
                pos += width
        return out, any_present

    def encode_batch(self, batch: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[str | None]]:
        if self.spec is None:
            raise RuntimeError("tabular encoder not fitted: call fit(rows) first")
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        reasons: list[str | None] = []
        for i, row in enumerate(batch):
            vec, ok = self._row(row)
            if ok:
                out[i] = vec
                reasons.append(None)
            else:
                reasons.append(ALL_MISSING)
        return out, reasons


@register("tabular", "standard", default=True)
def standard(columns: Sequence[str] | None = None, top_k: int = 16, hash_buckets: int = 8, clip: float = 5.0, device: str = "cpu") -> TabularEncoder:
    """Standardised numeric + one-hot/hashed categorical features (needs ``fit``)."""
    return TabularEncoder(columns=columns, top_k=top_k, hash_buckets=hash_buckets, clip=clip, device=device)
