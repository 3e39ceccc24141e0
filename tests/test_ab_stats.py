"""A/B statistics: checked against scipy.stats, calibrated (A/A), covering (bootstrap), and the decision rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fusionrec.ab.config import ABConfig
from fusionrec.ab.decision import decide, primary_rule
from fusionrec.ab.interleaving import credit, interleave_evaluate, team_draft
from fusionrec.ab.offline import IdMap, offline_from_topk
from fusionrec.ab.online import ArmOnline, OnlineResult, assign_arms, hash_unit, replay
from fusionrec.ab.stats import (
    bootstrap_lift_ci,
    cohens_dz,
    holm,
    paired_compare,
    paired_ttest,
    ratio_delta_ztest,
    sign_test,
    two_proportion_ztest,
    wilcoxon_test,
    wilson_ci,
)

ALPHA = 0.05


# ---------------------------------------------------------------------------------------------
# wrappers agree with scipy.stats / direct formulas
# ---------------------------------------------------------------------------------------------
def test_paired_tests_match_scipy():
    rng = np.random.default_rng(1)
    c = rng.random(200)
    t = c + rng.normal(0.03, 0.2, 200)
    d = t - c
    ref = stats.ttest_rel(t, c)
    got = paired_ttest(d)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-10)
    # one-sided conventions follow scipy's
    assert paired_ttest(d, alternative="greater").pvalue == pytest.approx(stats.ttest_rel(t, c, alternative="greater").pvalue)
    assert paired_ttest(d, alternative="greater").pvalue == pytest.approx(got.pvalue / 2) if got.statistic > 0 else True
    w = wilcoxon_test(d)
    wref = stats.wilcoxon(t, c)
    assert w.pvalue == pytest.approx(wref.pvalue, rel=1e-10)
    assert w.statistic == pytest.approx(wref.statistic)
    # Cohen's d_z by its definition
    assert cohens_dz(d) == pytest.approx(d.mean() / d.std(ddof=1))
    # vectorised rows == one call per row
    D = rng.normal(0.0, 1.0, (5, 50))
    rows = paired_ttest(D, axis=-1)
    for i in range(5):
        assert rows.pvalue[i] == pytest.approx(stats.ttest_1samp(D[i], 0).pvalue)


def test_degenerate_differences():
    z = np.zeros(30)
    assert paired_ttest(z).pvalue == 1.0 and paired_ttest(z).statistic == 0.0
    assert wilcoxon_test(z).pvalue == 1.0
    assert cohens_dz(z) == 0.0
    const = np.full(30, 0.1)
    assert paired_ttest(const).pvalue == 0.0 and paired_ttest(const).statistic == math.inf
    assert primary_rule(paired_ttest(z).pvalue, 0.0) is False


def test_holm_against_hand_computation():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.20*1 -> max(0.09, 0.2)
    assert holm(p).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert np.isnan(holm([0.01, float("nan")])[1])
    assert holm([0.5, 0.6]).max() <= 1.0


def test_proportion_tests_match_direct_computation():
    ht, nt, hc, nc = 130, 1000, 100, 1000
    z = two_proportion_ztest(ht, nt, hc, nc)
    chi2 = stats.chi2_contingency([[ht, nt - ht], [hc, nc - hc]], correction=False)
    assert z.statistic**2 == pytest.approx(chi2.statistic, rel=1e-9)
    assert z.pvalue == pytest.approx(chi2.pvalue, rel=1e-9)
    # Wilson interval by its formula
    lo, hi = wilson_ci(ht, nt)
    p, n, q = ht / nt, nt, stats.norm.ppf(0.975)
    centre = (p + q * q / (2 * n)) / (1 + q * q / n)
    half = q / (1 + q * q / n) * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n))
    assert (lo, hi) == pytest.approx((centre - half, centre + half), rel=1e-9)
    # one request per user: the clustered test is the unpooled two-proportion z-test
    rng = np.random.default_rng(0)
    a, b = rng.random(800) < 0.13, rng.random(900) < 0.10
    zc = ratio_delta_ztest(a.astype(float), np.ones(800), b.astype(float), np.ones(900))
    pa, pb = a.mean(), b.mean()
    se = math.sqrt(pa * (1 - pa) / 799 + pb * (1 - pb) / 899)  # ddof=1 variances
    assert zc.statistic == pytest.approx((pa - pb) / se, rel=1e-9)
    # sign test == binomtest
    s = sign_test(37, 21)
    assert s.pvalue == pytest.approx(stats.binomtest(37, 58, 0.5).pvalue)
    assert s.statistic == pytest.approx(37 / 58)


def test_bootstrap_ci_matches_scipy_and_is_seeded():
    rng = np.random.default_rng(3)
    c = rng.random(150)
    t = c * 1.1 + rng.normal(0, 0.05, 150)
    lo, hi, lifts = bootstrap_lift_ci(t, c, n_resamples=4000, seed=7)
    assert (lo, hi) == bootstrap_lift_ci(t, c, n_resamples=4000, seed=7)[:2]
    assert len(lifts) == 4000
    ref = stats.bootstrap((t, c), lambda a, b, axis: a.sum(axis) / b.sum(axis) - 1, paired=True, vectorized=True,
                          n_resamples=4000, method="percentile", random_state=np.random.default_rng(11))
    point = t.sum() / c.sum() - 1
    assert lo < point < hi
    width = hi - lo
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.1 * width)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.1 * width)


def test_bootstrap_ci_covers_the_true_lift():
    """Users with 1-3 cases, hit metric with known rates: the 95% CI should cover the true lift ~95% of the time."""
    rng = np.random.default_rng(2024)
    p_c, true_lift, users, reps = 0.3, 0.2, 300, 200
    p_t = p_c * (1 + true_lift)
    covered = 0
    for r in range(reps):
        n = rng.integers(1, 4, users)
        c = rng.binomial(n, p_c).astype(float)
        t = rng.binomial(n, p_t).astype(float)
        lo, hi, _ = bootstrap_lift_ci(t, c, n_resamples=400, seed=r)
        covered += lo <= true_lift <= hi
    coverage = covered / reps
    # binomial noise over 200 reps is ~1.5 points; percentile bootstrap at n=300 is close to nominal
    assert 0.89 <= coverage <= 0.99, coverage


# ---------------------------------------------------------------------------------------------
# calibration: A/A over many random splits, vectorised over precomputed per-user metrics
# ---------------------------------------------------------------------------------------------
def _exchangeable_per_user(rng, users=400):
    """Per-user NDCG@10 sums of two runs of the same model (exchangeable arms), 1-3 cases each."""
    n = rng.integers(1, 4, users)
    out = []
    for _ in range(2):
        sums = np.zeros(users)
        for j in range(3):
            rank = rng.geometric(0.08, users)
            ndcg = np.where(rank <= 10, 1 / np.log2(rank + 1), 0.0)
            sums += np.where(j < n, ndcg, 0.0)
        out.append(sums)
    return out[0], out[1], n


def test_aa_offline_promotes_at_most_alpha():
    rng = np.random.default_rng(5)
    a, b, n = _exchangeable_per_user(rng)
    splits = 4000
    # a random split = which of the two exchangeable runs each user's "treatment" is
    flip = rng.integers(0, 2, (splits, len(a))).astype(bool)
    T = np.where(flip, a, b)
    C = np.where(flip, b, a)
    res = paired_ttest(T - C, axis=-1)
    lift = T.sum(1) / C.sum(1) - 1
    promote = primary_rule(res.pvalue, lift, ALPHA)
    noise = 3 * math.sqrt(ALPHA * (1 - ALPHA) / splits)
    assert promote.mean() <= ALPHA + noise
    # and the test is calibrated, not merely conservative: two-sided rejections ~ alpha
    assert abs((res.pvalue < ALPHA).mean() - ALPHA) <= noise
    # identical arms (the same model in both): never promote
    assert not primary_rule(paired_ttest(a - a).pvalue, 0.0, ALPHA)


def test_aa_online_hash_splits_reject_at_alpha():
    rng = np.random.default_rng(9)
    users = 3000
    hits = (rng.random(users) < 0.12).astype(float)  # one model's per-user hit
    splits = 300
    treat = np.stack([assign_arms([f"user{u}" for u in range(users)], 0.5, salt=f"s{s}") for s in range(splits)])
    ht, nt = treat @ hits, treat.sum(1)
    hc, nc = (~treat) @ hits, (~treat).sum(1)
    p = two_proportion_ztest(ht, nt, hc, nc).pvalue
    noise = 3 * math.sqrt(ALPHA * (1 - ALPHA) / splits)
    assert (p < ALPHA).mean() <= ALPHA + noise


# ---------------------------------------------------------------------------------------------
# stable hash split
# ---------------------------------------------------------------------------------------------
def test_hash_split_is_stable_and_near_share():
    ids = [f"u{i}" for i in range(20000)]
    a = assign_arms(ids, 0.3, "exp")
    assert np.array_equal(a, assign_arms(ids, 0.3, "exp"))
    # order-independent: a user's arm does not depend on who else is in the list
    assert np.array_equal(assign_arms(ids[::-1], 0.3, "exp")[::-1], a)
    assert abs(a.mean() - 0.3) < 0.012
    assert (a != assign_arms(ids, 0.3, "other")).mean() > 0.3
    assert hash_unit("u1", "exp") == hash_unit("u1", "exp") and 0 <= hash_unit("u1", "exp") < 1
    with pytest.raises(ValueError):
        assign_arms(ids[:3], 1.5)


# ---------------------------------------------------------------------------------------------
# interleaving on hand-built lists
# ---------------------------------------------------------------------------------------------
class ScriptedCoin:
    """Coin flips in a given order (0 = control first, 1 = treatment first)."""

    def __init__(self, flips):
        self.flips = list(flips)

    def integers(self, low, high):
        return self.flips.pop(0)


def test_team_draft_hand_built():
    items, team = team_draft([1, 2, 3], [2, 1, 4], k=4, rng=ScriptedCoin([0, 1]))
    # A picks 1; B picks 2 (its best unseen); tie -> coin 1: B picks 4; A picks 3
    assert items.tolist() == [1, 2, 4, 3]
    assert team.tolist() == [0, 1, 1, 0]
    assert credit(items, team, 2) == 1  # B placed 2 although A ranked it 2nd
    assert credit(items, team, 3) == -1
    assert credit(items, team, 9) == 0
    items, team = team_draft([1, 2, 3, 4], [5, 6, 7, 8], k=4, rng=ScriptedCoin([1, 0]))
    assert items.tolist() == [5, 1, 2, 6] and team.tolist() == [1, 0, 0, 1]
    # one list exhausted: the other keeps picking; padding skipped
    items, team = team_draft([1, 0, 0], [2, 3, 4], k=4, rng=ScriptedCoin([0, 0]))
    assert items.tolist() == [1, 2, 3, 4] and team.tolist() == [0, 1, 1, 1]


def test_interleaving_credit_and_sign_test():
    n_users, per_user = 30, 2
    users = np.repeat(np.arange(n_users), per_user)
    targets = np.arange(len(users)) + 100
    control = np.tile(np.arange(1, 11), (len(users), 1))  # never the target
    treatment = control.copy()
    treatment[:, 0] = targets  # target always first
    res = interleave_evaluate(control, treatment, targets, users, k=10, seed=0, unit="user")
    assert res.wins_treatment == n_users and res.wins_control == 0
    assert res.pvalue == pytest.approx(stats.binomtest(n_users, n_users).pvalue)
    req = interleave_evaluate(control, treatment, targets, users, k=10, seed=0, unit="request")
    assert req.wins_treatment == len(users) and req.credit_treatment == len(users)
    # identical lists: the credit goes to whoever placed the item, a fair coin -> share near 1/2
    same = interleave_evaluate(treatment, treatment, targets, np.arange(len(users) * 20 // 20), k=10, seed=1, unit="request")
    assert same.requests_clicked == len(users)
    assert same.pvalue > 0.001


# ---------------------------------------------------------------------------------------------
# id mapping between an arm's item table and the dataset's
# ---------------------------------------------------------------------------------------------
def test_idmap_round_trip():
    ds = ["", "a", "b", "c", "d"]
    model = ["", "c", "a", "x", "b"]  # d unknown to the model, x unknown to the dataset
    m = IdMap.build(ds, model)
    assert not m.identity and m.unknown_to_model == 1
    h = m.histories_to_model(np.array([[0, 1, 4, 3]]))
    assert h.tolist() == [[0, 0, 2, 1]]  # d dropped, re-left-padded
    assert m.items_from_model(np.array([[1, 3, 2, -1]])).tolist() == [[3, 0, 1, 0]]
    assert IdMap.build(ds, list(ds)).identity


# ---------------------------------------------------------------------------------------------
# decision rules: the primary metric decides, each guardrail can block
# ---------------------------------------------------------------------------------------------
def _cases(n_users=120, cold_per_user=1):
    rows = []
    for u in range(n_users):
        rows.append((u, 1000 + u, "warm"))
        for j in range(cold_per_user):
            rows.append((u, 2000 + u * 10 + j, "cold"))
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "segment"])
    df["case_id"] = np.arange(len(df))
    return df


def _lists(cases, hit_share, rng, k=100, filler=None):
    """Top-k lists where a ``hit_share`` of cases have their target at rank 1..5."""
    n = len(cases)
    top = np.tile(filler if filler is not None else np.arange(1, k + 1), (n, 1))
    hit = rng.random(n) < hit_share
    pos = rng.integers(0, 5, n)
    top[np.flatnonzero(hit), pos[hit]] = cases["item_idx"].to_numpy()[hit]
    return top


def _online(p99_t=5.0, hit_c=0.2, hit_t=0.2, p_clustered=0.5, p99_c=4.0):
    def arm(name, rate, p99):
        # 1,000 request latencies whose 99th percentile is ~p99 (lognormal body, as replay latencies look)
        lat = np.random.default_rng(len(name)).lognormal(0.0, 0.4, 1000)
        lat = lat / np.percentile(lat, 99) * p99
        return ArmOnline(name, 100, 1000, int(rate * 1000), rate, rate - 0.02, rate + 0.02, float(np.median(lat)), p99,
                         float(lat.mean()), lat)

    return OnlineResult(10, 0.5, "s", arm("control", hit_c, p99_c), arm("treatment", hit_t, p99_t),
                        hit_t / hit_c - 1, 0.0, p_clustered, 0.0, p_clustered)


def test_decision_rules_each_can_block():
    rng = np.random.default_rng(0)
    cases = _cases()
    cfg = ABConfig(bootstrap_resamples=200)
    top_c = _lists(cases, 0.2, rng)
    better = top_c.copy()
    warm = (cases["segment"] == "warm").to_numpy()
    miss = warm & (~(top_c == cases["item_idx"].to_numpy()[:, None]).any(1))
    better[np.flatnonzero(miss)[:60], 0] = cases["item_idx"].to_numpy()[np.flatnonzero(miss)[:60]]
    good = offline_from_topk(cases, top_c, better, n_items=3000, cfg=cfg)
    d = decide(good, _online(), cfg)
    assert d["promote"] and d["decided_by"] == "all_rules_passed"
    assert d["rules"][0]["pvalue"] < 0.05 and d["rules"][0]["lift"] > 0
    json.dumps(d, default=float)  # serialisable

    # primary: identical arms -> not significant
    same = offline_from_topk(cases, top_c, top_c, n_items=3000, cfg=cfg)
    d = decide(same, None, cfg)
    assert not d["promote"] and d["decided_by"] == "primary_metric"
    # primary: significantly WORSE is not a promotion either
    d = decide(offline_from_topk(cases, better, top_c, n_items=3000, cfg=cfg), None, cfg)
    assert not d["promote"] and d["decided_by"] == "primary_metric" and d["rules"][0]["pvalue"] < 0.05

    # latency, relative to the control in the same replay: a treatment 60x slower is blocked ...
    d = decide(good, _online(p99_t=250.0), cfg)
    assert not d["promote"] and d["decided_by"] == "latency_p99"
    lat = d["rules"][1]
    assert lat["p99_ratio"] == pytest.approx(62.5, rel=1e-6) and lat["p99_ratio_ci"][0] > lat["max_ratio"] == 1.25
    assert decide(good, _online(p99_t=250.0), cfg.model_copy(update={"latency_p99_max_increase": None}))["promote"]
    # ... a loaded machine that slows BOTH arms is not (the old absolute 100 ms rule rejected this better model) ...
    loaded = _online(p99_t=150.0, p99_c=148.0)
    assert decide(good, loaded, cfg)["promote"]
    # ... and the absolute ceiling is its own, opt-in SLO rule
    d = decide(good, loaded, cfg.model_copy(update={"latency_p99_slo_ms": 100.0}))
    assert not d["promote"] and d["decided_by"] == "latency_p99_slo"
    assert ABConfig(latency_p99_budget_ms=80).latency_p99_slo_ms == 80  # the old key still configures the SLO

    # coverage: the treatment shows far fewer distinct items
    narrow = better.copy()
    narrow[:, 5:] = np.arange(6, 101)[None, :]
    wide_c = top_c.copy()
    wide_c[:, 5:] = rng.integers(1, 3001, (len(cases), 95))
    cov_cfg = cfg.model_copy(update={"coverage_k": 100})
    d = decide(offline_from_topk(cases, wide_c, narrow, n_items=3000, cfg=cov_cfg), None, cov_cfg)
    assert d["decided_by"] == "coverage" and not d["promote"]

    # cold-start recall: better on warm, broken on cold
    cold = (cases["segment"] == "cold").to_numpy()
    top_cold_c = top_c.copy()
    top_cold_c[np.flatnonzero(cold), 0] = cases["item_idx"].to_numpy()[cold]  # control finds every cold item
    worse_cold = better.copy()
    worse_cold[np.flatnonzero(cold)] = np.arange(1, 101)
    top_cold_c[np.flatnonzero(warm)] = top_c[np.flatnonzero(warm)]
    cold_cfg = cfg.model_copy(update={"primary_segment": "warm", "coverage_drop_max": None})
    res = offline_from_topk(cases, top_cold_c, worse_cold, n_items=3000, cfg=cold_cfg)
    d = decide(res, None, cold_cfg)
    assert d["rules"][0]["passed"] and d["decided_by"] == "cold_start_recall" and not d["promote"]
    assert decide(res, None, cold_cfg.model_copy(update={"cold_recall_drop_max": None}))["promote"]

    # online hit rate significantly lower
    d = decide(good, _online(hit_c=0.25, hit_t=0.15, p_clustered=1e-6), cfg)
    assert d["decided_by"] == "online_hit_rate" and not d["promote"]
    # ... but a non-significant dip does not block
    assert decide(good, _online(hit_c=0.21, hit_t=0.20, p_clustered=0.4), cfg)["promote"]


def test_secondary_metrics_get_holm():
    rng = np.random.default_rng(1)
    cases = _cases(60)
    cfg = ABConfig(bootstrap_resamples=200)
    res = offline_from_topk(cases, _lists(cases, 0.2, rng), _lists(cases, 0.3, rng), n_items=3000, cfg=cfg)
    assert res.primary.p_holm is None
    sec = [c for c in res.comparisons if c is not res.primary]
    assert len(sec) == 3 * 3 - 1
    assert np.allclose([c.p_holm for c in sec], holm([c.p_ttest for c in sec]))


def test_paired_compare_is_case_weighted_and_user_clustered():
    # user 0 has 3 cases, user 1 has 1: means are over cases, tests over users
    t, c, n = np.array([3.0, 0.0]), np.array([1.0, 0.0]), np.array([3, 1])
    r = paired_compare(t, c, n, n_resamples=100)
    assert r.mean_treatment == pytest.approx(3 / 4) and r.mean_control == pytest.approx(1 / 4)
    assert r.n_users == 2 and r.n_cases == 4
    assert r.lift == pytest.approx(2.0)


def test_config_validation():
    with pytest.raises(ValueError):
        ABConfig(metrics=["ndcg@200"])
    with pytest.raises(ValueError):
        ABConfig(metrics=["auc"])
    with pytest.raises(ValueError):
        ABConfig(segments=["hot"])
    cfg = ABConfig(primary_metric="recall@50")
    assert cfg.metrics[0] == "recall@50" and 50 in cfg.metric_ks()


# ---------------------------------------------------------------------------------------------
# the replay logic with in-process rankers (the Triton run is tests/test_ab_online.py)
# ---------------------------------------------------------------------------------------------
class OracleRanker:
    """Returns the true next item first for a known mapping history-last-item -> target."""

    max_len = None  # any history length (the TopKRanker protocol)
    k = None  # the whole catalog

    def __init__(self, next_of: dict[int, int], good: bool):
        self.next_of, self.good = next_of, good

    def topk(self, histories, k):
        out = np.tile(np.arange(1, k + 1) + 10_000, (len(histories), 1))
        if self.good:
            out[:, 0] = [self.next_of.get(int(h[-1]), 0) for h in histories]
        return out, np.zeros(out.shape, np.float32)


def test_replay_in_process():
    n = 400
    cases = pd.DataFrame({"user_idx": np.arange(n) // 2, "item_idx": np.arange(n) + 1, "timestamp": np.arange(n)})
    hist = np.zeros((n, 4), np.int64)
    hist[:, -1] = np.arange(n) + 5000
    next_of = {5000 + i: i + 1 for i in range(n)}
    ticks = iter(np.arange(0, 10_000, 0.001))
    cfg = ABConfig(online_warmup=2, online_k=5, interleaving_k=5)
    res = replay(cases, hist, [f"u{u}" for u in cases["user_idx"]], OracleRanker(next_of, False), OracleRanker(next_of, True), cfg,
                 clock=lambda: next(ticks))
    assert res.treatment.hit_rate == 1.0 and res.control.hit_rate == 0.0
    assert res.control.n_requests + res.treatment.n_requests == n
    assert abs(res.treatment.n_users - 100) < 30
    assert res.treatment.latency_p50_ms == pytest.approx(1.0)  # one scripted tick per request
    assert res.p_clustered < 1e-6 and res.p_pooled < 1e-6
    assert res.interleaving.wins_treatment == res.interleaving.n_users


# ---------------------------------------------------------------------------------------------
# the step without a server: fusionrec.ab.run with in-process rankers writes a complete report
# ---------------------------------------------------------------------------------------------
class CountRanker:
    """Items by train count (or its reverse), history excluded: a TopKRanker."""

    max_len = None  # any history length (the TopKRanker protocol)
    k = None  # the whole catalog

    def __init__(self, ds, reverse: bool = False):
        tr = ds.split("train")
        counts = np.bincount(tr["item_idx"].to_numpy(np.int64), minlength=ds.n_items + 1).astype(float)
        counts[0] = -np.inf
        self.order = np.argsort(counts if reverse else -counts, kind="stable")
        self.order = self.order[self.order > 0]

    def topk(self, histories, k):
        out = np.zeros((len(histories), k), np.int64)
        for i, h in enumerate(histories):
            seen = set(h[h > 0].tolist())
            row = [x for x in self.order if x not in seen][:k]
            out[i, : len(row)] = row  # 0 = nothing (a catalog smaller than history + k)
        return out, np.zeros(out.shape, np.float32)


def test_run_offline_report(tiny_dataset, tmp_path):
    from fusionrec.ab import run
    from fusionrec.artifacts import read_json, read_manifest
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.metrics import per_case_metrics, ranks_from_topk

    ds = DatasetArtifact(tiny_dataset)
    cfg = ABConfig(bootstrap_resamples=200, k_max=20, max_len=20)
    out = run(CountRanker(ds, reverse=True), CountRanker(ds), tiny_dataset, tmp_path / "ab", cfg)
    assert read_manifest(out, kind="ab_report")["decided_by"] == read_json(out / "decision.json")["decided_by"]
    d = read_json(out / "decision.json")
    assert not d["online_run"]
    assert all(not r["evaluated"] for r in d["rules"] if r["rule"] in ("latency_p99", "online_hit_rate"))
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "not run" in html
    assert not (out / "online.json").exists()
    metrics = read_json(out / "metrics.json")
    # the overall NDCG@10 of the treatment equals a direct computation on its lists
    cases, hist = ds.eval_cases("test", 20)
    idx, _ = CountRanker(ds).topk(hist, 20)
    direct = per_case_metrics(ranks_from_topk(idx, cases["item_idx"].to_numpy()), (10,))["ndcg@10"].mean()
    assert metrics["overall.ndcg@10.treatment"] == pytest.approx(direct)
    assert metrics["promote"] == float(d["promote"])


def test_replay_part_splits_users_stably_and_apart_from_the_arm_split():
    """Issue 13 item 11: the replay's users are a stable-hash share, independent of the treatment split."""
    from fusionrec.ab.online import assign_arms, replay_part

    users = [f"user{i}" for i in range(4000)]
    cfg = ABConfig(online_user_share=0.3)
    part = replay_part(users, cfg)
    assert abs(part.mean() - 0.3) < 0.03
    assert np.array_equal(part, replay_part(list(reversed(users)), cfg)[::-1])  # per user, not per position
    arms = assign_arms(users, cfg.online_share, cfg.online_salt)
    # a different salt: replay membership says nothing about the arm (both halves ~50% treatment)
    assert abs(arms[part].mean() - 0.5) < 0.05 and abs(arms[~part].mean() - 0.5) < 0.05


def test_overall_decision_against_a_control_blind_to_cold_items_is_flagged():
    from fusionrec.ab.offline import cold_blind_warning

    rng = np.random.default_rng(2)
    cases = _cases(60)
    cold = (cases["segment"] == "cold").to_numpy()
    assert cold.any() and not cold.all()
    cfg = ABConfig(bootstrap_resamples=200)
    top_c, top_t = _lists(cases, 0.2, rng), _lists(cases, 0.3, rng)
    blind = top_c.copy()
    blind[cold] = np.arange(2901, 3001)  # an ID-only control: never a cold target in its lists
    targets = cases["item_idx"].to_numpy()
    assert not (blind[cold] == targets[cold, None]).any()
    w = cold_blind_warning(offline_from_topk(cases, blind, top_t, n_items=3000, cfg=cfg), cfg)
    assert w is not None and f"none of the {int(cold.sum())} cold targets" in w and "primary_segment: warm" in w
    # deciding on warm, or a control that finds some cold targets, is not flagged
    warm_cfg = cfg.model_copy(update={"primary_segment": "warm"})
    assert cold_blind_warning(offline_from_topk(cases, blind, top_t, n_items=3000, cfg=warm_cfg), warm_cfg) is None
    sees = blind.copy()
    first_cold = np.flatnonzero(cold)[0]
    sees[first_cold, 0] = targets[first_cold]
    assert cold_blind_warning(offline_from_topk(cases, sees, top_t, n_items=3000, cfg=cfg), cfg) is None
