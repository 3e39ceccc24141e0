"""A/B end to end: two tiny exported models, ONE real Triton server (pytriton) serving both, replay over gRPC.

The arms are small modules with the serving signature, exported with the real export step:
control scores items by a random item embedding's similarity to the last item; treatment by the
first-order transition counts of the training events (a Markov chain). One server start for the
whole module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fusionrec.ab.config import ABConfig
from fusionrec.model_repository import OnnxRanker
from fusionrec.ab.online import assign_arms, replay_part
from fusionrec.artifacts import read_json, read_manifest
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.models.recommender import exclude_items

MAX_LEN, K = 12, 20


class LastItemScorer(nn.Module):
    """score(j) = S[last item, j] (+ a tiny fixed tie-breaker); history items excluded; top-K."""

    def __init__(self, S: torch.Tensor, k: int):
        super().__init__()
        n = S.shape[0]
        tie = torch.linspace(0, 1e-3, n)[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
        S = S.clone().float() + tie.unsqueeze(0)
        S[:, 0] = -1e9
        self.register_buffer("S", S)
        self.k = k

    def forward(self, history: torch.Tensor, exclude: torch.Tensor | None = None):
        scores = self.S[history[:, -1]]
        scores = exclude_items(scores, history, exclude)
        score, idx = torch.topk(scores, self.k, dim=1)
        return idx, score


def _export(module: nn.Module, dataset: Path, out: Path, name: str) -> Path:
    from fusionrec.export import ExportConfig, export_module

    ds = DatasetArtifact(dataset)
    cfg = ExportConfig(name=name, k=K, instance_kind="KIND_CPU", dynamo=False, max_queue_delay_microseconds=500)
    return export_module(module, ds.n_items, MAX_LEN, [str(x) for x in ds.item_ids.tolist()], dataset, out, cfg, k=K)


@pytest.fixture(scope="module")
def repos(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    ds = DatasetArtifact(tiny_dataset)
    n = ds.n_items + 1
    emb = torch.randn(n, 8, generator=torch.Generator().manual_seed(1))
    control = LastItemScorer(emb @ emb.T, K)
    # transition counts over EVERY event, held-out ones included: a treatment known in advance to be better
    # (it has seen the test transitions), so the decision this test expects is "promote"
    trans = torch.zeros(n, n)
    for _, g in ds.events.groupby("user_idx"):
        seq = g["item_idx"].to_numpy()
        for a, b in zip(seq[:-1], seq[1:]):
            trans[int(a), int(b)] += 1.0
    treatment = LastItemScorer(trans, K)
    root = tmp_path_factory.mktemp("ab_repos")
    return _export(control, tiny_dataset, root / "control_repo", "random_emb"), _export(treatment, tiny_dataset, root / "treatment_repo", "markov")


CFG = dict(k_max=K, metrics=["ndcg@10", "recall@20", "mrr"], cold_recall_metric="recall@20", max_len=MAX_LEN,
           bootstrap_resamples=300, online_k=10, interleaving_k=10, online_warmup=2)  # latency: the default relative rule


@pytest.fixture(scope="module")
def ab_report(repos, tiny_dataset, tmp_path_factory) -> Path:
    from fusionrec.ab import run
    from fusionrec.serving.ab_online import replay_on_triton

    out = tmp_path_factory.mktemp("ab") / "report"
    return run(repos[0], repos[1], tiny_dataset, out, ABConfig(**CFG), online=replay_on_triton)


def test_report_artifact_from_triton_replay(ab_report):
    manifest = read_manifest(ab_report, kind="ab_report")
    assert set(manifest["inputs"]) == {"control", "treatment", "dataset"}
    for f in ("decision.json", "report.md", "report.html", "metrics.json", "offline.json", "online.json",
              "online_requests.parquet", "per_case.parquet", "lift.png", "user_diffs.png", "latency.png", "interleaving.png"):
        assert (ab_report / f).is_file(), f
    decision = read_json(ab_report / "decision.json")
    assert decision["online_run"]
    assert {r["rule"] for r in decision["rules"]} == {"primary_metric", "latency_p99", "coverage", "cold_start_recall", "online_hit_rate"}
    # the transition-count scorer that saw the test transitions beats random embeddings; same graph cost, so the
    # relative latency rule (same replay) passes however loaded the machine is
    assert decision["promote"] is True and decision["decided_by"] == "all_rules_passed", decision["reason"]
    lat = next(r for r in decision["rules"] if r["rule"] == "latency_p99")
    assert lat["evaluated"] and lat["treatment_p99_ms"] > 0 and lat["p99_ratio_ci"][0] <= lat["max_ratio"]
    metrics = read_json(ab_report / "metrics.json")
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["promote"] == float(decision["promote"])
    online = read_json(ab_report / "online.json")
    assert online["source"].startswith("triton grpc 127.0.0.1:")
    html = (ab_report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "not run" not in html
    md = (ab_report / "report.md").read_text()
    assert ("PROMOTE" if decision["promote"] else "REJECT") in md


def test_served_lists_match_the_onnx_graph_in_process(ab_report, repos, tiny_dataset):
    """Every replayed request's hit equals what onnxruntime in-process says for that arm, and the hash split holds."""
    cfg = ABConfig(**CFG)
    ds = DatasetArtifact(tiny_dataset)
    req = pd.read_parquet(ab_report / "online_requests.parquet")
    cases, hist = ds.eval_cases("test", MAX_LEN)
    consumed = ds.consumed_before(cases)
    user_id = ds.users.set_index("user_idx")["user_id"].astype(str).reindex(cases["user_idx"]).to_numpy()
    part = replay_part(user_id, cfg)
    assert 0 < part.sum() < len(cases)
    # the replay used exactly its part of the users' events (the offline comparison used the others)
    assert len(req) == part.sum() and set(req["case_id"]) == set(cases.loc[part, "case_id"])
    assert (req["latency_ms"] > 0).all()
    by_case = cases.set_index("case_id")
    row = {c: i for i, c in enumerate(cases["case_id"])}
    expected_arm = assign_arms(req["user_id"].tolist(), cfg.online_share, cfg.online_salt)
    assert np.array_equal(req["arm"].to_numpy() == "treatment", expected_arm)
    for arm, repo in zip(("control", "treatment"), repos):
        sub = req[req["arm"] == arm]
        if sub.empty:
            continue
        rows = [row[c] for c in sub["case_id"]]
        k = cfg.online_k
        idx, score = OnnxRanker(repo).topk(hist[rows], k + 1, exclude=consumed[rows])  # whole history excluded
        target = by_case.loc[sub["case_id"], "item_idx"].to_numpy()[:, None]
        expected = (idx[:, :k] == target).any(1)
        # Triton batched these requests into other shapes than this call: float noise may swap the
        # k-th and (k+1)-th items when their scores are within 1e-5, so such a case may go either way
        near_tie = (np.abs(score[:, k - 1] - score[:, k]) <= 1e-5) & (idx[:, k - 1: k + 1] == target).any(1)
        assert np.array_equal(sub["hit"].to_numpy()[~near_tie], expected[~near_tie]), arm
    online = read_json(ab_report / "online.json")
    for arm in ("control", "treatment"):
        sub = req[req["arm"] == arm]
        assert online[arm]["n_requests"] == len(sub) and online[arm]["hits"] == int(sub["hit"].sum())
    inter = online["interleaving"]
    assert inter["n_requests"] == len(req)
    assert inter["credit_treatment"] == int((req["interleaving_credit"] > 0).sum())


def test_offline_part_matches_per_case_metrics(ab_report, repos, tiny_dataset):
    ds = DatasetArtifact(tiny_dataset)
    cfg = ABConfig(**CFG)
    cases, hist = ds.eval_cases("test", MAX_LEN)
    user_id = ds.users.set_index("user_idx")["user_id"].astype(str).reindex(cases["user_idx"]).to_numpy()
    off = ~replay_part(user_id, cfg)
    cases, hist = cases[off].reset_index(drop=True), hist[off]
    per_case = pd.read_parquet(ab_report / "per_case.parquet")
    idx, _ = OnnxRanker(repos[1]).topk(hist, K, exclude=ds.consumed_before(cases))
    hit20 = (idx == cases["item_idx"].to_numpy()[:, None]).any(1).astype(float)
    assert np.array_equal(per_case.sort_values("case_id")["case_id"].to_numpy(), cases["case_id"].to_numpy())
    assert np.allclose(per_case.sort_values("case_id")["recall@20_treatment"].to_numpy(), hit20)
    offline = read_json(ab_report / "offline.json")
    prim = next(c for c in offline["comparisons"] if c["metric"] == "ndcg@10" and c["segment"] == "overall")
    assert prim["n_cases"] == len(cases) and prim["n_users"] == cases["user_idx"].nunique()
    # coverage split by train count: the treatment's bands are its own lists' items, and sum to its coverage
    counts = np.bincount(ds.split("train")["item_idx"].to_numpy(), minlength=ds.n_items + 1)
    bands = offline["coverage_by_train_count"]["treatment"]
    shown = np.unique(idx[:, :10][idx[:, :10] > 0])
    assert bands[0]["band"] == "0" and bands[0]["shown"] == int((counts[shown] == 0).sum())
    assert sum(b["shown"] for b in bands) == pytest.approx(offline["coverage"]["treatment"] * ds.n_items)
    assert "by how often training saw them" in (ab_report / "report.md").read_text()
    # independent evidence: no user's events are in both parts, and the decision says which part used what
    req = pd.read_parquet(ab_report / "online_requests.parquet")
    assert not set(req["user_id"]) & set(user_id[off])
    events = read_json(ab_report / "decision.json")["events"]
    assert events["offline"]["n_cases"] == len(cases) and events["online"]["n_cases"] == len(req)
    assert events["online"]["whole_history_excluded"] is True


def test_aa_same_model_is_not_promoted_and_cli(repos, tiny_dataset, tmp_path):
    """A/A through the CLI (offline only, so no second server): identical arms never promote."""
    from typer.testing import CliRunner

    from fusionrec.cli import app

    out = tmp_path / "aa"
    res = CliRunner().invoke(app, ["ab", "--control", str(repos[1]), "--treatment", str(repos[1]), "--dataset", str(tiny_dataset),
                                   "--out", str(out), "--no-online", "--set", f"k_max={K}", "--set", f"max_len={MAX_LEN}",
                                   "--set", "bootstrap_resamples=200"])
    assert res.exit_code == 0, res.output
    assert "REJECT: decided by primary_metric" in res.output and "online replay: not run" in res.output
    d = json.loads((out / "decision.json").read_text())
    assert d["promote"] is False and d["rules"][0]["pvalue"] == 1.0 and d["rules"][0]["lift"] == 0.0
    assert "not run" in (out / "report.md").read_text()
    bad = CliRunner().invoke(app, ["ab", "--control", str(tmp_path / "nope"), "--treatment", str(repos[1]),
                                   "--dataset", str(tiny_dataset), "--out", str(out), "--no-online"])
    assert bad.exit_code == 2 and "not found" in bad.output
