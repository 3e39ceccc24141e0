"""benchmarks/ablation.py end to end on the tiny catalog: train + save, then the one-time test read from the saved models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation  # noqa: E402

TINY_TRAIN = ["--set", "epochs=1", "--set", "patience=1", "--set", "dim=32", "--set", "layers=1", "--set", "heads=2",
              "--set", "max_len=20"]


def run_ablation(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["ablation.py", *argv])
    return ablation.main()


def test_train_save_then_test_read_from_the_saved_models(tiny_raw, tiny_dataset, tiny_text_image_model, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    for name, target in (("raw", tiny_raw), ("dataset", tiny_dataset), ("aligned", tiny_text_image_model[1])):
        (work / name).symlink_to(target, target_is_directory=True)
    results = tmp_path / "results"
    common = ["--work", str(work), "--seeds", "0,1", "--variants", "id,fused", "--results", str(results), *TINY_TRAIN]

    assert run_ablation(monkeypatch, *common, "--save", "--tag", "trained") == 0
    trained = json.loads((results / "ablation_trained.json").read_text())
    assert set(trained["table"]) == {"id", "fused"} and "test" not in trained["table"]["fused"]
    assert "fused vs id" in trained["comparisons_valid"] and not trained["comparisons_test"]
    assert len(list((work / "models").iterdir())) == 4  # two variants x two seeds
    # the fusion's ID-channel weight by train-count bin: a share of each item's weights, only for a model that fuses
    weights = trained["runs"]["fused"][0]["diagnostics"]["id_weight_by_train_count"]
    assert set(weights) == {"1-2", "3-9", "10-49", "50+"} and any(w is not None for w in weights.values())
    assert all(0 < w <= 1 for w in weights.values() if w is not None)
    assert "id_weight_by_train_count" not in trained["runs"]["id"][0]["diagnostics"]

    # the test read: no retraining, the same validation figures, test paired on warm and on the cold items no choice read
    assert run_ablation(monkeypatch, *common, "--from-saved", "--test", "id,fused", "--tag", "read") == 0
    read = json.loads((results / "ablation_read.json").read_text())
    for name in ("id", "fused"):
        np.testing.assert_allclose(read["per_case_valid"][name]["ndcg@10"], trained["per_case_valid"][name]["ndcg@10"], atol=1e-6)
        assert [r["training"] for r in read["runs"][name]] == [r["training"] for r in trained["runs"][name]]
    assert set(read["comparisons_test"]) == {"fused vs id", "id vs fused"}
    assert set(read["comparisons_test"]["fused vs id"]) == {"warm", "cold_rest"}
    cold_rest_n = read["runs"]["fused"][0]["test"]["cold_rest"]["n"]
    cold_n = read["runs"]["fused"][0]["test"]["cold"]["n"]
    cold_valid_n = read["runs"]["fused"][0]["valid"]["cold_valid"]["n"]
    assert cold_rest_n + cold_valid_n == cold_n > cold_rest_n > 0  # the two halves of the cold test cases
    assert 0 < read["floors"]["random_ndcg@10"]["test_cold_rest"] < 1

    # a variant that reads longer histories (id:len200): the run's histories grow to its length and a model of the
    # common length keeps its own last max_len items of them, so ID-only (retrained, same seeds) scores as before
    assert run_ablation(monkeypatch, *common, "--variants", "id,id:len200", "--tag", "long") == 0
    long = json.loads((results / "ablation_long.json").read_text())
    assert long["eval_history_len"] == 200 and trained["eval_history_len"] == 20
    assert [r["config"]["max_len"] for r in long["runs"]["id:len200"]] == [200, 200]
    assert [r["config"]["max_len"] for r in long["runs"]["id"]] == [20, 20]
    np.testing.assert_allclose(long["per_case_valid"]["id"]["ndcg@10"], trained["per_case_valid"]["id"]["ndcg@10"], atol=1e-6)
    assert "id:len200 vs id" in long["comparisons_valid"]
