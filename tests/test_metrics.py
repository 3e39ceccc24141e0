"""Metric code vs a naive, obviously-right reference on random rankings; evaluation of a real ranker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusionrec.metrics import coverage_by_count, item_coverage, per_case_metrics, ranks_from_topk


def naive_case(ranking: list[int], target: int, k: int) -> dict[str, float]:
    """Reference for one case: walk the list, compare item by item."""
    pos = None
    for i, item in enumerate(ranking):
        if item == target:
            pos = i + 1
            break
    recall = 1.0 if pos is not None and pos <= k else 0.0
    ndcg = 1.0 / math.log2(pos + 1) if pos is not None and pos <= k else 0.0  # ideal DCG is 1 for one relevant item
    rr = 1.0 / pos if pos is not None else 0.0
    return {"recall": recall, "ndcg": ndcg, "rr": rr}


def naive_coverage(lists: list[list[int]], n_items: int, k: int) -> float:
    seen = set()
    for lst in lists:
        for item in lst[:k]:
            if item != 0:
                seen.add(item)
    return len(seen) / n_items


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_naive_reference_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    n_items, n_cases, K = 60, 200, 25
    topk = np.stack([rng.permutation(np.arange(1, n_items + 1))[:K] for _ in range(n_cases)])
    targets = rng.integers(1, n_items + 1, n_cases)
    ks = (1, 5, 10, 20)
    ranks = ranks_from_topk(topk, targets)
    got = per_case_metrics(ranks, ks)
    for c in range(n_cases):
        for k in ks:
            ref = naive_case(topk[c].tolist(), int(targets[c]), k)
            assert got[f"recall@{k}"][c] == ref["recall"]
            assert got[f"ndcg@{k}"][c] == pytest.approx(ref["ndcg"], abs=1e-12)
        assert got["mrr"][c] == pytest.approx(naive_case(topk[c].tolist(), int(targets[c]), K)["rr"], abs=1e-12)
    # some hits and some misses, so the comparison covered both branches
    assert 0 < (ranks > 0).sum() < n_cases
    for k in ks:
        assert item_coverage(topk, n_items, k) == pytest.approx(naive_coverage(topk.tolist(), n_items, k))


def test_coverage_by_count_matches_a_per_item_count_and_sums_to_coverage():
    rng = np.random.default_rng(3)
    n_items, k = 300, 10
    counts = np.concatenate([[0], rng.integers(0, 80, n_items)])  # row 0 is padding
    counts[1:30] = 0  # some items training never saw
    topk = rng.integers(0, n_items + 1, (50, 20))  # 0 = padding, never counted
    bands = coverage_by_count(topk, counts, k)
    assert [b["band"] for b in bands] == ["0", "1-2", "3-9", "10-49", "50+"]
    shown = {int(i) for i in topk[:, :k].ravel() if i > 0}
    edges = [(0, 1), (1, 3), (3, 10), (10, 50), (50, 10**9)]
    for b, (lo, hi) in zip(bands, edges):
        in_band = {i for i in range(1, n_items + 1) if lo <= counts[i] < hi}
        assert b["catalog"] == len(in_band) and b["shown"] == len(in_band & shown)
    assert sum(b["catalog"] for b in bands) == n_items
    assert sum(b["shown"] for b in bands) == pytest.approx(item_coverage(topk, n_items, k) * n_items)


def test_rank_zero_means_not_found_and_coverage_ignores_padding():
    ranks = ranks_from_topk(np.array([[4, 2, 0], [1, 2, 3]]), np.array([9, 3]))
    assert ranks.tolist() == [0, 3]
    m = per_case_metrics(ranks, ks=(2, 3))
    assert m["recall@2"].tolist() == [0.0, 0.0] and m["recall@3"].tolist() == [0.0, 1.0]
    assert m["mrr"].tolist() == pytest.approx([0.0, 1 / 3])
    assert item_coverage(np.array([[4, 2, 0], [1, 2, 3]]), n_items=10, k=3) == pytest.approx(0.4)


class RandomRanker:
    """A real (if useless) TopKRanker: a random permutation per history, history items excluded."""

    max_len = None  # any history length (the TopKRanker protocol)
    k = None  # the whole catalog

    def __init__(self, n_items: int, seed: int = 0):
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def topk(self, histories, k, exclude=None):
        out = np.zeros((len(histories), k), np.int64)
        for i, h in enumerate(histories):
            banned = set(h.tolist()) | (set(exclude[i].tolist()) if exclude is not None else set())
            items = np.array([j for j in self.rng.permutation(np.arange(1, self.n_items + 1)) if j not in banned])
            out[i] = items[:k]
        self.calls.append((histories, out))
        return out, np.zeros((len(histories), k), np.float32)


class NoExcludeRanker(RandomRanker):
    """The same ranker with only the plain ``topk(histories, k)`` API (as an older exported graph has)."""

    def topk(self, histories, k):
        return super().topk(histories, k)


def test_evaluate_agrees_with_naive_per_case_and_segments(tmp_path):
    from synth_rec import make_dataset

    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.evaluate import evaluate

    ds = DatasetArtifact(make_dataset(tmp_path / "ds", n_items=30, n_users=40, events=8))
    ranker = RandomRanker(ds.n_items)
    res = evaluate(ranker, ds, "test", ks=(5, 10), k_max=20, max_len=10, batch_size=16)
    cases, hist = ds.eval_cases("test", 10)
    lists = np.concatenate([o for _, o in ranker.calls])
    assert len(res.per_case) == len(cases) and set(res.per_case["segment"]) == {"warm", "cold"}
    for c in range(len(cases)):
        ref = naive_case(lists[c].tolist(), int(cases["item_idx"][c]), 10)
        in_hist = int(cases["item_idx"][c]) in set(hist[c].tolist()) | set(ds.consumed_before(cases)[c].tolist())
        assert res.per_case["recall@10"][c] == (0.0 if in_hist else ref["recall"])
        assert res.per_case["ndcg@10"][c] == pytest.approx(0.0 if in_hist else ref["ndcg"])
    for seg in ("warm", "cold"):
        sel = (res.per_case["segment"] == seg).to_numpy()
        assert res.summary[seg]["n"] == sel.sum()
        assert res.summary[seg]["ndcg@10"] == pytest.approx(res.per_case["ndcg@10"][sel].mean())
        assert res.summary[seg]["coverage@5"] == pytest.approx(naive_coverage(lists[sel].tolist(), ds.n_items, 5))
    assert res.summary["overall"]["n"] == len(cases)
    # re-consumed targets are counted as misses, and counted
    assert res.summary["overall"]["target_in_history"] == int(res.per_case["target_in_history"].sum())
    assert (res.per_case.loc[res.per_case["target_in_history"], "rank"] == 0).all()


def test_the_whole_history_is_excluded_not_only_the_last_max_len_items(tmp_path):
    """Issue 13 item 1. Old behaviour: only the last max_len items were excluded, so popularity recommended
    items the user had consumed earlier; now no case's list holds any item its user consumed before it."""
    import torch
    from synth_rec import make_dataset

    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.evaluate import evaluate
    from fusionrec.models.recommender import ModelSpec, PopularityRanker

    ds = DatasetArtifact(make_dataset(tmp_path / "ds", n_items=30, n_users=40, events=14))
    counts = np.bincount(ds.split("train")["item_idx"], minlength=ds.n_items + 1).astype(np.float32)
    pop = PopularityRanker(ModelSpec(kind="popularity", n_items=ds.n_items, max_len=3), torch.from_numpy(counts))
    res = evaluate(pop, ds, "test", ks=(10,), k_max=10, max_len=3)
    cases, _ = ds.eval_cases("test", 3)
    consumed = ds.consumed_before(cases)
    assert (consumed >= 0).sum(1).max() > 3, "the fixture must have histories longer than max_len"
    for top, ex in zip(res.topk, consumed):
        assert not set(top.tolist()) & set(ex[ex > 0].tolist())
    old = evaluate(pop, ds, "test", ks=(10,), k_max=10, max_len=3, exclude_history=False)
    leaked = sum(bool(set(t.tolist()) & set(e[e > 0].tolist())) for t, e in zip(old.topk, consumed))
    assert leaked > len(cases) // 2, "the window-only exclusion recommends earlier-consumed items"
    # re-consumed targets (the target is somewhere in the whole history) count as misses, and are counted
    again = (consumed == cases["item_idx"].to_numpy()[:, None]).any(1)
    assert res.per_case["target_in_history"].tolist() == again.tolist() and (res.per_case.loc[again, "rank"] == 0).all()


def test_a_ranker_without_an_exclude_input_is_excluded_by_overfetch():
    from fusionrec.ranking import exclusion_lists, topk_excluding

    ranker = NoExcludeRanker(20, seed=3)
    hist = np.array([[0, 5, 6], [7, 8, 9]])
    ex = exclusion_lists([[1, 2, 3, 5, 6], [4]])
    assert ex.tolist() == [[1, 2, 3, 5, 6], [4, -1, -1, -1, -1]]
    idx, _ = topk_excluding(ranker, hist, 10, ex)
    full = ranker.calls[-1][1]
    for row, h, e, f in zip(idx, hist, ex, full):
        banned = set(h[h > 0].tolist()) | set(e[e > 0].tolist())
        assert not set(row.tolist()) & banned and len(set(row.tolist())) == 10
        assert row.tolist() == [i for i in f.tolist() if i not in banned][:10]  # order kept: exact top-10 after exclusion
