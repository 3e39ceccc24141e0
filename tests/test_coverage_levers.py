"""benchmarks/coverage_levers.py: its rankers change exactly the scores they say, and the choice rule reads validation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from coverage_levers import AdjustedRanker, choose, levers  # noqa: E402


def test_adjusted_ranker_is_the_model_until_told_otherwise(tiny_text_image_model, tiny_dataset):
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models.recommender import load_model
    from fusionrec.train import TrainConfig

    model_dir = tiny_text_image_model[0]
    model = load_model(model_dir)
    ds = DatasetArtifact(tiny_dataset)
    cases, hist = ds.eval_cases("test", model.max_len)
    exclude = ds.consumed_before(cases)
    same, _ = AdjustedRanker(model, 10).topk(hist, 10, exclude=exclude)
    np.testing.assert_array_equal(same, model.topk(hist, 10, exclude=exclude)[0])

    counts = np.bincount(ds.split("train")["item_idx"].to_numpy(), minlength=ds.n_items + 1)
    cfg = TrainConfig(**json.loads((model_dir / "manifest.json").read_text())["params"])
    rankers = levers(model, ds, cfg, 10, counts)
    assert {"as trained", "logit adjustment 0.1", "norm^-1.0", "centre 0.25", "cold bias"} <= set(rankers)
    # an overwhelming logit adjustment ranks by train count, least trained first (never-trained items count as once)
    huge = AdjustedRanker(model, 10, offset=-1e4 * torch.from_numpy(np.log1p(np.maximum(counts, 1)).astype(np.float32)))
    top, _ = huge.topk(hist, 10, exclude=exclude)
    shown = np.maximum(counts[top], 1)
    assert (np.diff(shown, axis=1) >= 0).all() and shown[:, 0].max() == 1
    # cosine scoring: every scorable item vector has norm 1
    table = rankers["norm^-1.0"].module.item_table
    norms = table.norm(dim=1)[model.scorable()]
    np.testing.assert_allclose(norms.numpy(), 1.0, rtol=1e-5)


def test_choose_keeps_the_guardrail_and_then_the_best_validation_ndcg():
    rows = [{"model": "id", "lever": "as trained", "coverage@10": 0.50, "valid_ndcg@10": 0.07},
            {"model": "fused", "lever": "as trained", "coverage@10": 0.40, "valid_ndcg@10": 0.08},
            {"model": "fused", "lever": "a", "coverage@10": 0.46, "valid_ndcg@10": 0.05},
            {"model": "fused", "lever": "b", "coverage@10": 0.455, "valid_ndcg@10": 0.06},
            {"model": "fused", "lever": "c", "coverage@10": 0.449, "valid_ndcg@10": 0.075}]
    assert choose({"rows": rows}, "fused", "id", 0.10)["lever"] == "b"  # c is outside 0.9 x 0.50
    assert choose({"rows": rows[:3]}, "fused", "id", 0.05) is None
