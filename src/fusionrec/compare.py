"""Quality-table statistics: means over seeds with a 95% interval, paired model comparisons, verdicts.

The rules (docs/evaluation.md):

- a table row is the mean over >= 3 training seeds with a Student-t 95% interval of that mean
  (the seed-to-seed spread of a model trained again);
- "A beats B" is a **paired** comparison on the same cases: the per-case difference A - B,
  averaged over the seeds both were trained with, and a bootstrap 95% interval that resamples
  *users* (a user's cases are not independent, as in :mod:`fusionrec.ab.stats`); with several
  seeds the per-seed mean differences also get a t-interval;
- the verdict is ``beats`` only when every interval computed lies above zero, ``loses`` when
  every one lies below, else ``on par``.

Example:
    >>> seed_interval([0.10, 0.12, 0.11])["mean"]
    0.11
    >>> verdict([0.01, 0.03], [0.002, 0.04])
    'beats'
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["seed_interval", "paired_difference", "verdict"]


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of per-seed values with a Student-t interval (``ci`` is ``None`` for fewer than 2 seeds)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = len(v)
    out: dict = {"mean": round(float(v.mean()), 6) if n else None, "n_seeds": n, "values": [round(float(x), 6) for x in v]}
    if n >= 2:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n))
        out.update(sd=round(sd, 6), ci=[round(float(v.mean()) - half, 6), round(float(v.mean()) + half, 6)])
    else:
        out.update(sd=None, ci=None)
    return out


def _cluster_bootstrap_ci(diff: np.ndarray, users: np.ndarray, n_boot: int, seed: int, confidence: float) -> list[float]:
    """Percentile CI of the case-weighted mean difference, resampling users (sum of diffs / number of cases)."""
    uniq, inv = np.unique(users, return_inverse=True)
    sums = np.bincount(inv, weights=diff, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(uniq), (n_boot, len(uniq)))
    means = sums[pick].sum(1) / np.maximum(counts[pick].sum(1), 1.0)
    lo, hi = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    return [round(float(lo), 6), round(float(hi), 6)]


def paired_difference(a: np.ndarray, b: np.ndarray, users: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """A - B on the same cases. ``a``/``b``: per-case values [n_seeds, n_cases] (or [n_cases]); ``users``: [n_cases].

    Returns the mean difference, its user-bootstrap interval over the seed-averaged per-case
    differences (``ci_cases``), the per-seed differences with a t-interval (``ci_seeds``, when
    both have >= 2 seeds, paired seed by seed over the common ones) and the verdict.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1] or a.shape[1] != len(users):
        raise ValueError(f"paired comparison needs the same cases: {a.shape}, {b.shape}, {len(users)} users")
    diff = a.mean(0) - b.mean(0)
    out = {"mean_a": round(float(a.mean()), 6), "mean_b": round(float(b.mean()), 6), "diff": round(float(diff.mean()), 6),
           "n_cases": int(a.shape[1]), "n_users": int(len(np.unique(users))),
           "ci_cases": _cluster_bootstrap_ci(diff, np.asarray(users), n_boot, seed, confidence)}
    n = min(len(a), len(b))
    per_seed = (a[:n].mean(1) - b[:n].mean(1)) if (len(a) > 1 and len(b) > 1) else None
    if len(a) > 1 and len(b) == 1:
        per_seed = a.mean(1) - b.mean()
    elif len(b) > 1 and len(a) == 1:
        per_seed = a.mean() - b.mean(1)
    out["seeds"] = {"a": int(len(a)), "b": int(len(b))}
    if per_seed is not None and len(per_seed) >= 2:
        s = seed_interval(per_seed, confidence)
        out["ci_seeds"] = s["ci"]
        out["per_seed_diff"] = s["values"]
    else:
        out["ci_seeds"] = None
    out["verdict"] = verdict(out["ci_cases"], out["ci_seeds"])
    return out


def verdict(*intervals: Sequence[float] | None) -> str:
    """``beats`` if every given interval is above 0, ``loses`` if every one is below, else ``on par``."""
    given = [iv for iv in intervals if iv is not None]
    if not given:
        return "on par"
    if all(iv[0] > 0 for iv in given):
        return "beats"
    if all(iv[1] < 0 for iv in given):
        return "loses"
    return "on par"
