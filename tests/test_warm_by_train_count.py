"""benchmarks/warm_by_train_count.py: the bins split the warm cases, and each bin's comparison reads only its cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from warm_by_train_count import by_train_count  # noqa: E402


def test_each_bin_compares_only_its_warm_cases():
    rng = np.random.default_rng(0)
    counts = np.array([1, 2, 5, 8, 20, 30, 60, 200, 0, 0] * 30)
    segment = np.where(counts > 0, "warm", "cold")
    ref = rng.uniform(0, 0.2, counts.size)
    # the treatment is better by 0.1 on targets seen 10-49 times, worse by 0.05 on 50+, equal elsewhere
    treat = ref + np.where((counts >= 10) & (counts <= 49), 0.1, 0.0) - np.where(counts >= 50, 0.05, 0.0)
    per_case = {"t": {"segment": segment, "ndcg@10": treat}, "r": {"segment": segment, "ndcg@10": ref}}
    table = by_train_count(per_case, counts, "t", "r")
    assert [table[b]["n"] for b in ("1-2", "3-9", "10-49", "50+")] == [60, 60, 60, 60]
    assert table["all warm"]["n"] == 240  # the cold cases are in no bin
    assert table["10-49"]["diff"] == 0.1 and table["10-49"]["verdict"] == "beats"
    assert table["50+"]["diff"] == -0.05 and table["50+"]["verdict"] == "loses"
    assert table["1-2"]["diff"] == 0 and table["3-9"]["diff"] == 0
    assert abs(table["all warm"]["diff"] - (0.1 - 0.05) / 4) < 1e-4
