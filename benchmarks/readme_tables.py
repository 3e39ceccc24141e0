"""Render the README's quality tables from the benchmark JSON (so every figure there has a stored record).

    .venv/bin/python benchmarks/readme_tables.py           # rewrite the marked blocks of README.md
    .venv/bin/python benchmarks/readme_tables.py --check   # exit 1 if README.md differs from the JSON

A block is the text between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; NAME is a result file
stem under benchmarks/results/ (quality, movielens, aa, events, query, explain, movielens_pipeline_ab,
movielens_secondary, movielens_secondary_ab).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def fmt_mean_ci(s: dict | None) -> str:
    """``mean [low, high]`` of a ``{"mean", "ci"}`` summary, 4 decimals; ``-`` when there is none."""
    if not s or s.get("mean") is None:
        return "-"
    out = f"{s['mean']:.4f}"
    if s.get("ci"):
        out += f" [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"
    return out


def verdict_lines(comparisons: list[dict], title: str, relative: bool = False) -> list[str]:
    """One line per paired comparison: the difference (and relative to B), its intervals over cases and seeds, the verdict."""
    out = ["", f"{title} (NDCG@10, same cases; beats = every 95% interval above 0):", ""]
    for c in comparisons:
        cs = f", seeds [{c['ci_seeds'][0]:+.4f}, {c['ci_seeds'][1]:+.4f}]" if c.get("ci_seeds") else ""
        rel = f" ({c['diff'] / c['mean_b']:+.1%})" if relative and c.get("mean_b") else ""
        out.append(f"- {c['a']} vs {c['b']} ({c['segment']}): {c['diff']:+.4f}{rel}, cases [{c['ci_cases'][0]:+.4f}, "
                   f"{c['ci_cases'][1]:+.4f}]{cs}: **{c['verdict']}**")
    return out


def quality_block(r: dict) -> str:
    sel = {s["chosen"] for s in r["selection"].values()}
    tc = r["stats"]["test_cases"]
    head = []
    if not r.get("complete", True):
        head.append("**Incomplete run** (rows written so far; the run was still going when this was committed).")
    if r["config"].get("scope_note"):
        head.append(f"Scope: {r['config']['scope_note']}. Command: `{r['provenance']['command']}`.")
    head.append(f"{tc['warm']:,} warm / {tc['cold']:,} cold test cases ({tc.get('cold_unseen', 0)} of them unseen in training, "
                f"not held out); seeds {r['seeds']}; mean [95% interval over seeds]; commit {r['provenance']['git_commit'][:10]}; "
                f"{r['total']['wall_s']:.0f} s wall / {r['total']['cpu_s']:.0f} s CPU; "
                + ("nothing reused." if not r["cache"]["reused_artifacts"] else f"reused: {len(r['cache']['reused_artifacts'])} prep artifacts (recorded)."))
    lines = ["| model | seeds | NDCG@10 warm | NDCG@10 cold | Recall@20 warm | Recall@20 cold |", "|---|---|---|---|---|---|"]
    for k, row in r["rows"].items():
        s = row["summary"]
        name = f"**{k}** (chosen on validation)" if k in sel else k
        lines.append(f"| {name} | {len(row['seeds']) if row['seeds'] else '-'} | {fmt_mean_ci(s['warm']['ndcg@10'])} | {fmt_mean_ci(s['cold']['ndcg@10'])} | "
                     f"{fmt_mean_ci(s['warm']['recall@20'])} | {fmt_mean_ci(s['cold']['recall@20'])} |")
    return "\n".join(head + [""] + lines + verdict_lines(r["comparisons"], "Paired verdicts"))


def cost_block(r: dict) -> str:
    """Training cost per trained row: epochs run, the kept (best-validation) epoch, wall seconds, and the time to the kept
    epoch estimated as wall x kept / run epochs (epochs cost about the same; the JSON has each seed's valid curve), and the
    training throughput (sequences/s over the training steps) where the run recorded it."""
    lines = ["| model | seeds | epochs run (kept) | wall s per model | est. wall s to the kept epoch | training sequences/s |",
             "|---|---|---|---|---|---|"]
    for k, row in r["rows"].items():
        runs = row.get("training") or []
        runs = [t for t in runs if t.get("wall_s") and t.get("epochs_run")]
        if not runs:
            continue
        to_best = [t["wall_s"] * t["best_epoch"] / t["epochs_run"] for t in runs if t.get("best_epoch")]
        rates = [t["sequences_per_second"] for t in runs if t.get("sequences_per_second")]  # training steps only, validation excluded
        lines.append(f"| {k} | {len(runs)} | " + ", ".join(f"{t['epochs_run']} ({t.get('best_epoch')})" for t in runs)
                     + f" | {sum(t['wall_s'] for t in runs) / len(runs):.0f} | "
                     + (f"{sum(to_best) / len(to_best):.0f}" if to_best else "-") + " | "
                     + (f"{sum(rates) / len(rates):.0f}" if rates else "-") + " |")
    load = r["provenance"]["machine"].get("load_average_at_start")
    note = (f"Epoch budget {r['config']['train'].get('epochs')}, patience {r['config']['train'].get('patience')}; "
            f"{r['provenance']['machine'].get('cpus')} CPUs, torch threads {r['config'].get('threads')}, "
            f"load average at start {load[0]:.1f}" if load else "") + " (wall seconds depend on the machine's load)."
    return note + "\n\n" + "\n".join(lines)


def effect_block(r: dict) -> str:
    lines = ["| model | protocol | NDCG@10 warm | NDCG@10 cold | warm / cold cases |", "|---|---|---|---|---|"]
    for model, variants in r["protocol_effect"].items():
        if "old" in variants and "new" in variants:
            variants = {"old protocol (all three defects)": variants["old"], "new protocol": variants["new"]}
        for v, s in variants.items():
            if isinstance(s, dict) and "warm" in s:
                lines.append(f"| {model} | {v} | {s['warm']['ndcg@10']:.4f} | {s['cold']['ndcg@10']:.4f} | {s['warm']['n']} / {s['cold']['n']} |")
    return "\n".join(lines)


def alignment_block(r: dict) -> str:
    lines = []
    for seed, a in r["alignment"].items():
        ho = a["held_out"]
        n = ho.get("n_held_out", 0)
        pairs = ", ".join(f"{p} {ho['before'].get(p, {}).get('recall@10', float('nan')):.3f} -> {v['recall@10']:.3f}"
                          for p, v in sorted(ho["after"].items()))
        lines.append(f"- seed {seed}, {n} held-out items (chance {10 / max(n, 1):.3f}): {pairs}")
    return "\n".join(lines)


def aa_block(r: dict) -> str:
    f = r["false_promote"]
    s = r["significant_either_direction"]
    sig = [p for p in r["pairs"] if p["pvalue"] < f["alpha"]]
    worse = sum(p["lift"] < 0 for p in sig)
    return (f"{f['count']} of {f['n']} A/A pairs promoted ({f['rate']:.0%}, Wilson 95% [{f['wilson95'][0]:.0%}, {f['wilson95'][1]:.0%}]) "
            f"against a nominal {f['nominal_alpha_over_2']:.1%} (alpha/2 = {f['alpha']}/2); p < alpha in either direction in "
            f"{s['count']} of {f['n']} ({s['rate']:.0%} against a nominal {f['alpha']:.0%}), {worse} of them with the treatment "
            f"worse. Decision segment: {r['config']['ab']['primary_segment']}; {r['config']['users']} users; "
            f"{r['total']['wall_s']:.0f} s wall / {r['total']['cpu_s']:.0f} s CPU; commit {r['provenance']['git_commit'][:10]}.")


def fmt3(s: dict | None, interval: bool = True, sign: bool = False) -> str:
    """``mean [low, high]`` with 3 decimals (rates and precisions); the interval left out when ``interval`` is false,
    signed (``+0.080``) when ``sign`` (differences)."""
    if not s or s.get("mean") is None:
        return "-"
    f = "+.3f" if sign else ".3f"
    out = f"{s['mean']:{f}}"
    if interval and s.get("ci"):
        out += f" [{s['ci'][0]:{f}}, {s['ci'][1]:{f}}]"
    return out


def _run_line(r: dict) -> str:
    c = r["cache"]
    fresh = not c["reused_artifacts"] and not c["encoder_cache"]["existed_before"]
    reused = ("nothing reused, encoder cache fresh" if fresh
              else f"reused (--reuse): {len(c['reused_artifacts'])} artifacts" + (", encoder cache pre-existing" if c["encoder_cache"]["existed_before"] else ""))
    p = r["provenance"]
    scratch = " from scratch" if fresh else ""
    return (f"{r['config']['scale']}; seeds {r['seeds']} (alignment + fused attention model per seed); mean [95% t-interval over seeds]; "
            f"commit {p['git_commit'][:10]}{' (dirty)' if p['git_dirty'] else ''}; {r['total']['wall_s']:.0f} s wall / "
            f"{r['total']['cpu_s']:.0f} s CPU{scratch}; {reused}. Command: `{p['command']}`.")


QUERY_COLUMNS = {"random": "random", "plain text": "plain text search (MiniLM, no alignment)",
                 "neighbours max": "neighbours, max", "neighbours mean": "neighbours, mean",
                 "head max": "text head, max", "head text": "text head, text only"}


def query_block(r: dict) -> str:
    """benchmarks/query.py: precision@k per attribute and method (mean [interval] over seeds)."""
    fixed = set(r.get("seed_independent_methods", ()))
    methods = [m for m in QUERY_COLUMNS if m in r["methods"]]
    served = r.get("served", "neighbours max")  # runs before the key existed served the neighbours route
    lines = [_run_line(r) + f" Precision@{r['config']['k']}; "
             + ", ".join(f'"{m}"' for m in sorted(fixed)) + " involve no training (the same at every seed, no interval).", "",
             "| attribute (the modality that shows it) | "
             + " | ".join(f"**served: {QUERY_COLUMNS[m]}**" if m == served else QUERY_COLUMNS[m] for m in methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for a, res in r["per_attribute"].items():
        lines.append(f"| {a} ({r['shows'][a]}) | " + " | ".join(fmt3(res[m], m not in fixed) for m in methods) + " |")
    ml = r.get("movielens")
    if ml:
        cells = {"random": ml["mean"].get("random"), "plain text": ml["mean"].get("plain text"),
                 "neighbours max": ml["mean"].get("neighbours max"), "head max": ml["mean"].get("head max")}
        lines.append(f"| MovieLens genres ({len(ml['genres'])}, \"comedy\", \"comedy movies\"; {len(ml['seeds'])} alignment seeds) | "
                     + " | ".join(fmt3(cells.get(m), m not in fixed) for m in methods) + " |")
    lines += ["", f"Served ({QUERY_COLUMNS[served]}) minus plain text search, per attribute (t-interval over the per-seed differences): "
              + "; ".join(f"{a} {d['mean']:+.3f}" + (f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d.get("ci") else "")
                          for a, d in r["served_minus_plain_text"].items()) + "."]
    if not ml:
        lines += ["", "MovieLens genre queries are not in this run (`--movielens` adds them)."]
    else:
        lines += ["", f"MovieLens latest-small ({ml['n_items']:,} movies, {len(ml['genres'])} genres): converted, ingested and encoded "
                  "(text + IMDb tabular) once by this run, aligned per seed; no MovieLens model is trained (the query graph reads "
                  "only the aligned item table)."]
    return "\n".join(lines)


EXPLAIN_METHODS = ("leave-one-out", "attention rollout", "most recent")


def explain_block(r: dict) -> str:
    """benchmarks/explain.py: faithfulness rates and modality-share rises (mean [interval] over seeds)."""
    f, d = r["faithfulness_rate"], r["mean_drop_of_top_item"]
    lines = [_run_line(r), "",
             f"Faithfulness on {r['n_cases']:,} test cases (top-1 recommendation): share of cases where removing the history item "
             "an attribution ranks first lowers the recommended item's score more than removing a random other history item.", "",
             "| attribution | faithful | mean score drop of its top item |", "|---|---|---|"]
    for m in EXPLAIN_METHODS:
        name = f"**{m}** (served)" if m == "leave-one-out" else m
        lines.append(f"| {name} | {fmt3(f[m])} | {fmt3(d[m])} |")
    names = r["channels"]
    lines += ["", "Modality recovery: rise of each channel's mean share of the score when the recommended item has a value the "
              "user likes (generator's truth) vs when it does not:", "",
              "| attribute | " + " | ".join(names) + " | rises most (seeds) | generator shows it in |", "|---" * (len(names) + 3) + "|"]
    for a, rec in r["modality_recovery"].items():
        most = ", ".join(f"{c} {n}/{len(r['seeds'])}" for c, n in rec["channel_rising_most_count"].items())
        lines.append(f"| {a} | " + " | ".join(fmt3(rec["share_rise_when_liked"][n], sign=True) for n in names) + f" | {most} | {rec['expected']} |")
    lines += ["", "Mean share of the score per channel: " + ", ".join(f"{k} {fmt3(v)}" for k, v in r["mean_share"].items()) + "."]
    return "\n".join(lines)


def events_block(r: dict) -> str:
    """Behaviour kinds (benchmarks/events.py): each model with and without kinds, the oracle ceilings, the paired lift."""
    tc = r["stats"]["test_cases"]
    share = ", ".join(f"{k} {v:.0%}" for k, v in r["stats"]["event_share"].items())
    head = (f"{r['stats']['n_items']:,} items, {r['stats']['n_users']:,} users, events {share}; {tc['warm']:,} warm / {tc['cold']:,} cold "
            f"test cases; seeds {r['seeds']}; mean [95% interval over seeds]; epoch budget {r['config']['train']['epochs']} with early "
            f"stopping on validation; commit {r['provenance']['git_commit'][:10]}; {r['total']['wall_s']:.0f} s wall; "
            + ("nothing reused." if not r["cache"]["reused_artifacts"] else f"reused: {', '.join(r['cache']['reused_artifacts'])}."))
    lines = ["| model | NDCG@10 overall | NDCG@10 warm | NDCG@10 cold | Recall@20 overall |", "|---|---|---|---|---|"]
    for k, row in r["rows"].items():
        s = row["summary"]
        lines.append(f"| {k} | {fmt_mean_ci(s['overall']['ndcg@10'])} | {fmt_mean_ci(s['warm']['ndcg@10'])} | "
                     f"{fmt_mean_ci(s['cold']['ndcg@10'])} | {fmt_mean_ci(s['overall']['recall@20'])} |")
    return "\n".join([head, ""] + lines + verdict_lines(r["comparisons"], "Paired lift of reading the kinds", relative=True))


def secondary_block(r: dict) -> str:
    """The secondary test (quality_movielens --extra-test-events): fused vs ID-only on the enlarged warm test."""
    tc, k = r["stats"]["test_cases"], r["config"]["ingest"]["extra_test_events"]
    pairs = [c for c in r["comparisons"] if c["b"] == "id"]
    head = ["**Incomplete run** (rows written so far)."] if not r.get("complete", True) else []
    head.append(f"`ingest.extra_test_events: {k}`: {tc['warm']:,} warm test cases of {pairs[0]['n_users'] if pairs else '?'} users "
                f"(leave-one-out: one per user); seeds {r['seeds']}; commit {r['provenance']['git_commit'][:10]}; "
                f"{r['total']['wall_s']:.0f} s wall; command (its scope note aside): `{r['provenance']['command'].split(' --scope-note')[0]}`.")
    lines = ["| model | seeds | NDCG@10 warm (all warm test cases) | Recall@20 warm |", "|---|---|---|---|"]
    for name, row in r["rows"].items():
        if row["seeds"] and name in ("id", *(c["a"] for c in pairs)):
            s = row["summary"]["warm"]
            lines.append(f"| {name} | {len(row['seeds'])} | {fmt_mean_ci(s['ndcg@10'])} | {fmt_mean_ci(s['recall@20'])} |")
    return "\n".join(head + [""] + lines + verdict_lines(pairs, "Fused vs ID-only", relative=True))


def pipeline_ab_block(r: dict) -> str:
    """The MovieLens pipeline A/B (benchmarks/ab_movielens.py): every arm's decision and coverage."""
    p = r["provenance"]
    lines = ["| arm | promoted | decided by | primary: NDCG@10 control -> treatment (lift, p) | coverage@10 control -> treatment |",
             "|---|---|---|---|---|"]
    for arm, a in r["arms"].items():
        pr = a["primary"]
        lift = f"{pr['lift']:+.0%}" if pr["mean_control"] else f"{pr['diff']:+.4f}"
        name = f"{arm} ({a['lever']})" if a.get("lever") else arm
        lines.append(f"| {name} | {'yes' if a['promote'] else '**no**'} | {a['decided_by']} | {pr['segment']}: {pr['mean_control']:.4f} -> "
                     f"{pr['mean_treatment']:.4f} ({lift}, p = {pr['pvalue']:.2g}, {pr['n_users']} users) | "
                     f"{a['coverage']['control']:.3f} -> {a['coverage']['treatment']:.3f} ({a['coverage']['treatment'] / a['coverage']['control'] - 1:+.1%}) |")
    lines += ["", f"Seed {p['seeds'][0]}, offline A/B; commit {p['git_commit'][:10]}{' (dirty)' if p['git_dirty'] else ''}; "
              f"{sum(v['wall_s'] for v in p['steps'].values()) / 60:.0f} min wall; command: `{p['command']}`."]
    return "\n".join(lines)


RENDER = {"quality": quality_block, "quality_effect": effect_block, "quality_alignment": alignment_block,
          "movielens": quality_block, "movielens_effect": effect_block, "movielens_cost": cost_block, "quality_cost": cost_block, "movielens_alignment": alignment_block, "aa": aa_block,
          "events": events_block, "query": query_block, "explain": explain_block, "movielens_pipeline_ab": pipeline_ab_block,
          "movielens_secondary": secondary_block, "movielens_secondary_ab": pipeline_ab_block}
FILES = {"aa": "aa", "movielens_pipeline_ab": "movielens_pipeline_ab", "movielens_secondary": "movielens_secondary",
         "movielens_secondary_ab": "movielens_secondary_ab"}  # block -> result file, where not the name's first word


def render(readme: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        path = RESULTS / f"{FILES.get(name, name.split('_')[0])}.json"
        if not path.exists():
            return m.group(0)
        body = RENDER[name](json.loads(path.read_text()))
        return f"<!-- table:{name} -->\n{body}\n<!-- /table:{name} -->"

    return re.sub(r"<!-- table:(\w+) -->.*?<!-- /table:\1 -->", sub, readme, flags=re.S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme = (ROOT / "README.md").read_text()
    new = render(readme)
    if args.check:
        if new != readme:
            print("README.md tables differ from benchmarks/results/*.json: run benchmarks/readme_tables.py")
            return 1
        return 0
    (ROOT / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
