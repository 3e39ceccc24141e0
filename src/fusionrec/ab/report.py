"""The ``ab_report`` artifact: decide, plot and write the report of an A/B comparison (``fusionrec.ab.run``).

``ab_report/`` holds ``decision.json`` (promote + the rule that decided + every number),
``metrics.json`` (flat name -> number, for KFP ``Metrics``), ``offline.json``/``online.json``
(full results), ``per_case.parquet``, ``report.md`` and a self-contained ``report.html``
(plots embedded as base64 PNGs; the PNGs also lie beside it), and ``manifest.json``.

Example:
    >>> write_report("artifacts/ab", offline, online, ABConfig(), names, inputs)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fusionrec.ab.config import ABConfig
from fusionrec.ab.decision import decide
from fusionrec.ab.offline import OfflineResult
from fusionrec.ab.online import OnlineResult
from fusionrec.artifacts import (ArtifactError, artifact_dir, artifact_hash, atomic_write_json, atomic_write_text,
                                 read_manifest, save_parquet, write_manifest)
from fusionrec.progress import get_logger

log = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_lifts(offline: OfflineResult, path: Path) -> Path:
    plt = _plt()
    comps = offline.comparisons
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(comps) + 1.2))
    labels = [f"{c.metric} ({c.segment})" for c in comps]
    y = np.arange(len(comps))[::-1]
    lift = np.array([c.lift for c in comps]) * 100
    lo = np.array([c.lift_ci_low for c in comps]) * 100
    hi = np.array([c.lift_ci_high for c in comps]) * 100
    finite = np.concatenate([a[np.isfinite(a)] for a in (lift, lo, hi)])
    edge = float(np.abs(finite).max()) * 1.15 if len(finite) else 100.0
    edge = edge or 100.0  # an unbounded lift (control mean 0) is drawn at the edge and labelled
    lift_f, lo_f, hi_f = (np.clip(np.nan_to_num(a, nan=0.0, posinf=edge, neginf=-edge), -edge, edge) for a in (lift, lo, hi))
    for yi, l in zip(y, lift):
        if np.isinf(l):
            ax.annotate("unbounded (control = 0)", (edge, yi), xytext=(-4, 6), textcoords="offset points", ha="right", fontsize=8)
    colors = ["tab:green" if l > 0 and lo_ > 0 else "tab:red" if h < 0 else "tab:gray" for l, lo_, h in zip(lift_f, lo_f, hi_f)]
    for yi, l, lo_, h, col in zip(y, lift_f, lo_f, hi_f, colors):
        ax.errorbar([l], [yi], xerr=[[max(l - lo_, 0.0)], [max(h - l, 0.0)]], fmt="o", color=col, ecolor=col, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels)
    ax.set_xlabel("relative lift of treatment over control, % (95% bootstrap CI)")
    ax.set_title("Offline lift per metric")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_user_diffs(offline: OfflineResult, path: Path) -> Path:
    plt = _plt()
    prim = offline.primary
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    d = prim.user_diffs if prim is not None and prim.user_diffs is not None else np.zeros(0)
    nz = d[d != 0]
    ax.hist(nz, bins=40, color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", lw=0.8)
    if len(d):
        ax.axvline(float(d.mean()), color="tab:orange", lw=1.5, label=f"mean {d.mean():+.4f}")
        ax.legend()
    ax.set_xlabel(f"per-user difference of {prim.metric if prim else ''} (treatment - control)")
    ax.set_ylabel("users")
    ax.set_title(f"Per-user differences ({len(d) - len(nz)} of {len(d)} users tie at 0, not shown)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_cut(online: OnlineResult) -> tuple[float, int, float]:
    """Where the latency histogram's x-axis ends: ``(cut_ms, requests above it, max ms)``.

    The axis stops a little past the 99.5th percentile so a few stragglers do not squash the
    plot; the requests beyond are counted in the last bin, and the plot and report say so.
    """
    data = [a.latency_ms for a in (online.control, online.treatment) if len(a.latency_ms)]
    hi = max((float(np.percentile(x, 99.5)) for x in data), default=1.0)
    cut = hi * 1.05 if hi > 0 else 1.0
    above = sum(int((x > cut).sum()) for x in data)
    top = max((float(np.max(x)) for x in data), default=0.0)
    return cut, above, top


def plot_latency(online: OnlineResult, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    arms = [online.control, online.treatment]
    cut, above, top = latency_cut(online)
    bins = np.linspace(0, cut, 50)
    for a, color in zip(arms, ("tab:gray", "tab:blue")):
        if len(a.latency_ms):
            ax.hist(np.clip(a.latency_ms, 0, bins[-1]), bins=bins, alpha=0.55, color=color,
                    label=f"{a.arm}: p50 {a.latency_p50_ms:.2f} ms, p99 {a.latency_p99_ms:.2f} ms")
            ax.axvline(a.latency_p99_ms, color=color, ls="--", lw=1)
    if above:  # the clipped tail is counted in the last bin: say so where the eye lands
        ax.annotate(f"last bin: {above} request(s) > {cut:.1f} ms\n(up to {top:.1f} ms)", (cut, 0), xytext=(-4, 40),
                    textcoords="offset points", ha="right", fontsize=8, arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_xlabel("client-side latency per request, ms" + (f" (axis cut at {cut:.1f} ms)" if above else ""))
    ax.set_ylabel("requests")
    ax.set_title(f"Replay latency ({online.source})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_interleaving(online: OnlineResult, path: Path) -> Path:
    plt = _plt()
    it = online.interleaving
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    names = ["control wins", "ties", "treatment wins"]
    vals = [it.wins_control, it.ties, it.wins_treatment]
    ax.barh(names, vals, color=["tab:gray", "lightgray", "tab:blue"])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v}", va="center")
    ax.set_xlabel(f"{it.unit}s")
    ax.set_title(f"Team-draft interleaving credit (sign test p = {it.pvalue:.3g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# metrics.json, report.md, report.html
# --------------------------------------------------------------------------------------------
def flat_metrics(decision: dict, offline: OfflineResult, online: OnlineResult | None) -> dict[str, float]:
    """A flat name -> number dict (what a KFP ``Metrics`` artifact logs)."""
    out: dict[str, float] = {"promote": float(decision["promote"])}
    for c in offline.comparisons:
        key = f"{c.segment}.{c.metric}"
        out[f"{key}.control"] = c.mean_control
        out[f"{key}.treatment"] = c.mean_treatment
        out[f"{key}.lift"] = c.lift
        out[f"{key}.lift_ci_low"] = c.lift_ci_low
        out[f"{key}.lift_ci_high"] = c.lift_ci_high
        out[f"{key}.p_ttest"] = c.p_ttest
        out[f"{key}.p_wilcoxon"] = c.p_wilcoxon
        out[f"{key}.cohens_dz"] = c.cohens_dz
        if c.p_holm is not None:
            out[f"{key}.p_holm"] = c.p_holm
    out["coverage.control"] = offline.coverage["control"]
    out["coverage.treatment"] = offline.coverage["treatment"]
    if online is not None:
        for a in (online.control, online.treatment):
            out[f"online.{a.arm}.hit_rate"] = a.hit_rate
            out[f"online.{a.arm}.requests"] = float(a.n_requests)
            out[f"online.{a.arm}.latency_p50_ms"] = a.latency_p50_ms
            out[f"online.{a.arm}.latency_p99_ms"] = a.latency_p99_ms
        out["online.lift"] = online.lift
        out["online.p_pooled"] = online.p_pooled
        out["online.p_clustered"] = online.p_clustered
        if online.interleaving is not None:
            out["interleaving.treatment_share"] = online.interleaving.treatment_share
            out["interleaving.pvalue"] = online.interleaving.pvalue
    return {k: float(v) if v is not None and not (isinstance(v, float) and math.isinf(v)) else float("nan") for k, v in out.items()}


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if pct:
        return f"{x:+.2%}"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def lift_cells(c) -> tuple[str, str]:
    """The lift and its CI as the report shows them: relative, or absolute when the control is 0.

    A relative lift over a control that scores 0 is +inf% with CI [+inf%, +inf%]: true and
    useless. Then the absolute difference of the means and its interval say what happened.
    """
    if c.mean_control == 0 or (isinstance(c.lift, float) and math.isinf(c.lift)):
        return (f"{c.diff:+.4f} (abs.; control 0)", f"[{_fmt(c.diff_ci_low)}, {_fmt(c.diff_ci_high)}] (abs.)")
    return _fmt(c.lift, True), f"[{_fmt(c.lift_ci_low, True)}, {_fmt(c.lift_ci_high, True)}]"


def rule_status(rule: dict) -> str:
    """``yes`` / ``**no**`` / ``skipped`` (a rule that never ran, e.g. latency without the online replay)."""
    if rule.get("evaluated") is False:
        return "skipped"
    return "yes" if rule["passed"] else "**no**"


def arm_name(arm: str | os.PathLike) -> str:
    """How the report names an arm: its model name and the last two parts of its path.

    In a pipeline both arms' folders are called ``repository``; the model name and the step's
    folder above tell them apart.
    """
    p = Path(arm)
    where = "/".join(p.resolve().parts[-2:])
    try:
        m = read_manifest(p)
    except (ArtifactError, OSError, ValueError):
        return where
    model = (m.get("models") or [None])[0] or m.get("model")
    return f"{model} ({where})" if model else where


def arm_names(control, treatment) -> dict[str, str]:
    names = {role: arm_name(a) if isinstance(a, (str, os.PathLike)) else type(a).__name__
             for role, a in (("control", control), ("treatment", treatment))}
    if names["control"] == names["treatment"]:
        names = {role: f"{n} [{role}]" for role, n in names.items()}
    return names


def identical_arms(control, treatment, offline: OfflineResult) -> str | None:
    """A warning when the comparison cannot show anything: the same model twice, or identical rankings."""
    if all(isinstance(a, (str, os.PathLike)) for a in (control, treatment)):
        if Path(control).resolve() == Path(treatment).resolve() or artifact_hash(control) == artifact_hash(treatment):
            return ("identical arms: control and treatment are the same model "
                    f"({control} and {treatment}); the A/B cannot promote it (p = 1, lift 0)")
    if offline.comparisons and all(c.user_diffs is not None and not np.any(c.user_diffs) for c in offline.comparisons):
        return "identical arms: both ranked every case the same way (every per-user difference is 0)"
    return None


def render_markdown(decision: dict, offline: OfflineResult, online: OnlineResult | None, cfg: ABConfig,
                    names: dict[str, str], plots: dict[str, str]) -> str:
    verdict = "PROMOTE" if decision["promote"] else "REJECT"
    lines = [
        f"# A/B report: {names['treatment']} vs {names['control']}",
        "",
        f"**Decision: {verdict}** (decided by `{decision['decided_by']}`: {decision['reason']})",
        "",
        *[f"**Warning: {w}**\n" for w in decision.get("warnings", [])],
        f"Primary metric: **{cfg.primary_metric}** ({cfg.primary_segment}), paired {cfg.primary_test}, two-sided, "
        f"alpha = {cfg.alpha}, promotion needs p < alpha and a positive lift. Unit of analysis: the user "
        "(per-user sums of per-case differences; the bootstrap resamples users). "
        "Secondary metrics carry Holm-adjusted p-values and do not decide.",
        "",
        "## Rules",
        "",
        "| rule | passed | detail |",
        "|---|---|---|",
    ]
    for r in decision["rules"]:
        lines.append(f"| {r['rule']} | {rule_status(r)} | {r['why']} |")
    lines += [
        "",
        "## Offline paired comparison",
        "",
        f"Held-out `{cfg.split}` cases ranked over the full catalog by both arms (top-{cfg.k_max}).",
        "",
        "| segment | metric | users | cases | control | treatment | lift | 95% CI of lift | p (t) | p (Wilcoxon) | p (Holm) | d_z |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in offline.comparisons:
        lift, ci = lift_cells(c)
        lines.append(
            f"| {c.segment} | {c.metric} | {c.n_users} | {c.n_cases} | {c.mean_control:.4f} | {c.mean_treatment:.4f} | "
            f"{lift} | {ci} | {_fmt(c.p_ttest)} | "
            f"{_fmt(c.p_wilcoxon)} | {_fmt(c.p_holm) if c.p_holm is not None else 'primary'} | {_fmt(c.cohens_dz)} |"
        )
    lines += ["", f"Item coverage@{cfg.coverage_k}: control {offline.coverage['control']:.3f}, treatment {offline.coverage['treatment']:.3f}.", ""]
    if offline.coverage_bands:  # where a coverage change comes from: rarely trained items or the head
        lines += [f"Items in at least one top-{cfg.coverage_k} list, by how often training saw them:", "",
                  "| train events | catalog items | control | treatment |", "|---|---|---|---|"]
        for c, t in zip(offline.coverage_bands["control"], offline.coverage_bands["treatment"]):
            lines.append(f"| {c['band']} | {c['catalog']} | {c['shown']} | {t['shown']} |")
        lines.append("")
    lines += [f"![lift]({plots['lift']})", "", f"![per-user differences]({plots['user_diffs']})", ""]
    lines += ["## Online replay", ""]
    if online is None:
        lines += ["The online part was **not run** (no Triton server; `--no-online`). Latency and online hit-rate "
                  "guardrails were not evaluated; interleaving was not run.", ""]
    else:
        lines += [
            f"Source: {online.source}. Users split by sha256(salt + user_id), salt `{online.salt}`, treatment share "
            f"{online.share:.0%}; each held-out case is one request; a hit when the next real item is in the top-{online.k}.",
            "",
            "| arm | users | requests | hits | hit rate | 95% Wilson CI | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in (online.control, online.treatment):
            lines.append(f"| {a.arm} | {a.n_users} | {a.n_requests} | {a.hits} | {a.hit_rate:.4f} | "
                         f"[{a.hit_rate_ci_low:.4f}, {a.hit_rate_ci_high:.4f}] | {a.latency_p50_ms:.2f} | {a.latency_p99_ms:.2f} |")
        lines += [
            "",
            f"Hit-rate lift {_fmt(online.lift, True)}; two-proportion z-test z = {_fmt(online.z_pooled)}, p = {_fmt(online.p_pooled)}; "
            f"user-clustered (delta method) z = {_fmt(online.z_clustered)}, p = {_fmt(online.p_clustered)}.",
            "",
            f"![latency]({plots['latency']})",
            "",
        ]
        cut, above, top = latency_cut(online)
        if above:
            lines += [f"Latency plot: the axis stops at {cut:.1f} ms; {above} slower request(s), up to {top:.1f} ms, "
                      "are counted in its last bin.", ""]
        it = online.interleaving
        if it is not None:
            lines += [
                "## Team-draft interleaving",
                "",
                f"{it.n_requests} requests of {it.n_users} users, both arms' top-{cfg.interleaving_k} interleaved (seeded coin flips), "
                f"credit to the team that placed the next real item; {it.requests_clicked} requests clicked "
                f"({it.credit_treatment} treatment, {it.credit_control} control). Per {it.unit}: treatment wins {it.wins_treatment}, "
                f"control wins {it.wins_control}, ties {it.ties}; treatment share {_fmt(it.treatment_share)}, sign test p = {_fmt(it.pvalue)}.",
                "",
                f"![interleaving]({plots['interleaving']})",
                "",
            ]
    return "\n".join(lines) + "\n"


def render_html(markdown_text: str, plot_files: dict[str, Path], decision: dict, extra_html: str = "") -> str:
    """A self-contained HTML page: the report's tables and text, plots embedded as base64 PNG."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table():
        if not table:
            return
        head, *rows = table
        body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>")
        for r in rows:
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
        body.append("</tbody></table>")
        table.clear()

    def inline(s: str) -> str:
        s = html.escape(s)
        import re

        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
        return s

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            table.append([inline(c) for c in cells])
            continue
        flush_table()
        if line.startswith("!["):
            name = line[line.index("(") + 1 : line.rindex(")")]
            key = next((k for k, p in plot_files.items() if p.name == name), None)
            if key is not None:
                data = base64.b64encode(plot_files[key].read_bytes()).decode("ascii")
                body.append(f'<img alt="{html.escape(key)}" src="data:image/png;base64,{data}">')
        elif line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    color = "#1a7f37" if decision["promote"] else "#cf222e"
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
           "th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;display:block;margin:1em 0}"
           f"h1{{border-bottom:4px solid {color}}}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>A/B report</title><style>{css}</style></head><body>\n"
            + "\n".join(body) + ("\n" + extra_html if extra_html else "") + "\n</body></html>\n")


def write_report(out: str | os.PathLike, offline: OfflineResult, online: OnlineResult | None, cfg: ABConfig,
                 names: dict[str, str], inputs: dict[str, str | os.PathLike], force: bool = False,
                 warnings: list[str] | None = None, examples: tuple[str, str] | None = None) -> Path:
    """Decide and write the ``ab_report`` artifact atomically; returns its path.

    ``examples``: (markdown, html) of a few explained recommendations, appended to the report.
    """
    decision = decide(offline, online, cfg)
    decision["control"] = names["control"]
    decision["treatment"] = names["treatment"]
    decision["warnings"] = list(warnings or [])
    for w in decision["warnings"]:
        log.warning("%s", w)
    with artifact_dir(out, "ab_report", inputs.values(), force) as tmp:
        plots = {"lift": plot_lifts(offline, tmp / "lift.png"), "user_diffs": plot_user_diffs(offline, tmp / "user_diffs.png")}
        if online is not None:
            plots["latency"] = plot_latency(online, tmp / "latency.png")
            if online.interleaving is not None:
                plots["interleaving"] = plot_interleaving(online, tmp / "interleaving.png")
        md = render_markdown(decision, offline, online, cfg, names, {k: p.name for k, p in plots.items()})
        atomic_write_text(tmp / "report.md", md + ("\n" + examples[0] if examples else ""))
        atomic_write_text(tmp / "report.html", render_html(md, plots, decision, examples[1] if examples else ""))
        atomic_write_json(tmp / "decision.json", decision)
        atomic_write_json(tmp / "metrics.json", flat_metrics(decision, offline, online))
        atomic_write_json(tmp / "offline.json", {"comparisons": [c.to_dict() for c in offline.comparisons], "coverage": offline.coverage,
                                                "coverage_by_train_count": offline.coverage_bands})
        if online is not None:
            atomic_write_json(tmp / "online.json", online.to_dict())
            if online.requests is not None:
                save_parquet(online.requests, tmp / "online_requests.parquet")
        save_parquet(offline.per_case, tmp / "per_case.parquet")
        write_manifest(tmp, step="ab", params=cfg, inputs=inputs, kind="ab_report", promote=decision["promote"], decided_by=decision["decided_by"])
    log.info("A/B decision: %s (%s)", "promote" if decision["promote"] else "reject", decision["decided_by"])
    return Path(out)

