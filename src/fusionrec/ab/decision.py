"""Promote or reject: the primary metric decides, guardrails can only block.

Rules, checked in this order (``decided_by`` names the first that fails, else ``all_rules_passed``):

1. ``primary_metric`` — the primary metric's (default NDCG@10 overall) paired test is
   significant (two-sided p < alpha) **and** its lift is > 0.
2. ``latency_p99`` — relative: the treatment's replay p99 latency is not, with 95% confidence,
   more than ``latency_p99_max_increase`` above the control's p99 measured in the same replay
   (both arms are interleaved in time, so load on the machine hits both; online only).
   ``latency_p99_slo`` — the absolute SLO ``latency_p99_slo_ms``, a separate rule, off by default.
3. ``coverage`` — the treatment's item coverage dropped by at most ``coverage_drop_max`` (relative).
4. ``cold_start_recall`` — cold-start recall@20 dropped by at most ``cold_recall_drop_max`` (relative).
5. ``online_hit_rate`` — the online hit rate is not significantly lower (user-clustered z-test).

Secondary metrics are reported with Holm-adjusted p-values; they inform, they do not decide.

Example:
    >>> bool(primary_rule(0.01, 0.05, alpha=0.05))
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusionrec.ab.config import ABConfig
from fusionrec.ab.offline import OfflineResult
from fusionrec.ab.online import OnlineResult


def primary_rule(pvalue, lift, alpha: float = 0.05):
    """Significant improvement: ``p < alpha and lift > 0`` (vectorised over arrays)."""
    p = np.asarray(pvalue, dtype=np.float64)
    d = np.asarray(lift, dtype=np.float64)
    out = (p < alpha) & (d > 0)
    return out if out.ndim else bool(out)


def p99_ratio(treatment_ms: np.ndarray, control_ms: np.ndarray, n_resamples: int = 2000, seed: int = 0,
              confidence: float = 0.95) -> tuple[float, float, float]:
    """(p99_t / p99_c, CI low, CI high): a percentile bootstrap resampling each arm's requests independently."""
    t = np.asarray(treatment_ms, dtype=np.float64)
    c = np.asarray(control_ms, dtype=np.float64)
    if len(t) == 0 or len(c) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    bt = np.percentile(t[rng.integers(0, len(t), (n_resamples, len(t)))], 99, axis=1)
    bc = np.percentile(c[rng.integers(0, len(c), (n_resamples, len(c)))], 99, axis=1)
    ratios = bt / np.maximum(bc, 1e-9)
    lo, hi = np.percentile(ratios, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(np.percentile(t, 99) / max(np.percentile(c, 99), 1e-9)), float(lo), float(hi)


def _rel_drop(control: float, treatment: float) -> float:
    """Relative drop of treatment below control (negative = it improved); 0 when control is 0."""
    if control == 0 or control is None or math.isnan(control):
        return 0.0
    return (control - treatment) / control


def decide(offline: OfflineResult, online: OnlineResult | None, cfg: ABConfig) -> dict[str, Any]:
    """The decision with every number behind it (the content of ``decision.json``)."""
    rules: list[dict[str, Any]] = []
    prim = offline.primary
    if prim is None:
        raise ValueError(f"primary metric {cfg.primary_metric} on segment {cfg.primary_segment} was not computed (no cases?)")
    p = prim.p_ttest if cfg.primary_test == "ttest" else prim.p_wilcoxon
    rules.append({
        "rule": "primary_metric", "metric": cfg.primary_metric, "segment": cfg.primary_segment, "test": cfg.primary_test,
        "alpha": cfg.alpha, "pvalue": p, "lift": prim.lift, "lift_ci": [prim.lift_ci_low, prim.lift_ci_high],
        "diff": prim.diff, "mean_control": prim.mean_control, "mean_treatment": prim.mean_treatment,
        "cohens_dz": prim.cohens_dz, "n_users": prim.n_users, "n_cases": prim.n_cases,
        "passed": bool(primary_rule(p, prim.diff, cfg.alpha)),
        "why": f"{cfg.primary_test} p={p:.4g} {'<' if p < cfg.alpha else '>='} alpha={cfg.alpha}, lift={prim.lift:+.2%}",
    })

    if cfg.latency_p99_max_increase is not None:
        if online is None:
            rules.append({"rule": "latency_p99", "evaluated": False, "passed": True, "why": "online replay not run"})
        else:
            ratio, lo, hi = p99_ratio(online.treatment.latency_ms, online.control.latency_ms, cfg.bootstrap_resamples,
                                      cfg.seed, cfg.confidence)
            limit = 1.0 + cfg.latency_p99_max_increase
            rules.append({
                "rule": "latency_p99", "evaluated": True, "kind": "relative to control, same replay",
                "treatment_p99_ms": online.treatment.latency_p99_ms, "control_p99_ms": online.control.latency_p99_ms,
                "p99_ratio": ratio, "p99_ratio_ci": [lo, hi], "max_ratio": limit,
                "passed": bool(not (lo > limit)),
                "why": f"p99 treatment/control {ratio:.2f} [{lo:.2f}, {hi:.2f}] vs max {limit:.2f} "
                       f"({online.treatment.latency_p99_ms:.2f} vs {online.control.latency_p99_ms:.2f} ms)",
            })
    if cfg.latency_p99_slo_ms is not None:
        if online is None:
            rules.append({"rule": "latency_p99_slo", "evaluated": False, "passed": True, "why": "online replay not run"})
        else:
            p99 = online.treatment.latency_p99_ms
            rules.append({
                "rule": "latency_p99_slo", "evaluated": True, "slo_ms": cfg.latency_p99_slo_ms,
                "treatment_p99_ms": p99, "control_p99_ms": online.control.latency_p99_ms,
                "passed": bool(p99 <= cfg.latency_p99_slo_ms),
                "why": f"treatment p99 {p99:.2f} ms vs SLO {cfg.latency_p99_slo_ms} ms",
            })

    if cfg.coverage_drop_max is not None:
        cc, ct = offline.coverage["control"], offline.coverage["treatment"]
        drop = _rel_drop(cc, ct)
        rules.append({
            "rule": "coverage", "evaluated": True, "k": cfg.coverage_k, "control": cc, "treatment": ct,
            "relative_drop": drop, "max_drop": cfg.coverage_drop_max, "passed": bool(drop <= cfg.coverage_drop_max),
            "why": f"coverage@{cfg.coverage_k} {cc:.3f} -> {ct:.3f} (change {-drop:+.1%}, max drop {cfg.coverage_drop_max:.0%})",
        })

    if cfg.cold_recall_drop_max is not None:
        pc = offline.per_case
        cold = (pc["segment"] == "cold").to_numpy()
        if not cold.any():
            rules.append({"rule": "cold_start_recall", "evaluated": False, "passed": True, "why": "no cold-start cases"})
        else:
            m = cfg.cold_recall_metric
            rc = float(pc.loc[cold, f"{m}_control"].mean())
            rt = float(pc.loc[cold, f"{m}_treatment"].mean())
            drop = _rel_drop(rc, rt)
            rules.append({
                "rule": "cold_start_recall", "evaluated": True, "metric": m, "n_cases": int(cold.sum()),
                "control": rc, "treatment": rt, "relative_drop": drop, "max_drop": cfg.cold_recall_drop_max,
                "passed": bool(drop <= cfg.cold_recall_drop_max),
                "why": f"cold {m} {rc:.4f} -> {rt:.4f} (" + (f"change {-drop:+.1%}" if rc > 0 else "control 0, no drop possible")
                       + f", max drop {cfg.cold_recall_drop_max:.0%})",
            })

    if cfg.online_hit_rate_guardrail:
        if online is None:
            rules.append({"rule": "online_hit_rate", "evaluated": False, "passed": True, "why": "online replay not run"})
        else:
            pz = online.p_clustered
            worse = (online.treatment.hit_rate < online.control.hit_rate) and (not math.isnan(pz)) and pz < cfg.alpha
            rules.append({
                "rule": "online_hit_rate", "evaluated": True, "control": online.control.hit_rate,
                "treatment": online.treatment.hit_rate, "pvalue_clustered": pz, "alpha": cfg.alpha, "passed": not worse,
                "why": f"hit@{online.k} {online.control.hit_rate:.4f} -> {online.treatment.hit_rate:.4f} (clustered p={pz:.3g})",
            })

    failed = [r for r in rules if not r["passed"]]
    promote = not failed
    decided_by = "all_rules_passed" if promote else failed[0]["rule"]
    return {
        "promote": promote,
        "decided_by": decided_by,
        "reason": "every rule passed" if promote else failed[0]["why"],
        "failed_rules": [r["rule"] for r in failed],
        "rules": rules,
        "alpha": cfg.alpha,
        "primary": {"metric": cfg.primary_metric, "segment": cfg.primary_segment, "test": cfg.primary_test},
        "online_run": online is not None,
        "secondary": [c.to_dict() for c in offline.comparisons if c is not prim],
        "multiple_testing": "Holm over the secondary (metric, segment) comparisons; the primary metric alone decides",
        "events": {"offline": offline.events, "online": online.events if online is not None else None},
    }
