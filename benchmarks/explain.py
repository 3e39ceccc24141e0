"""Explanations on the demo catalog: are they faithful, and do the modality shares recover the generator's truth?

1. **Faithfulness.** For every test case (history of >= 2 items) and its top-1 recommendation: remove
   the history item a method ranks first and, separately, a random *other* history item (seeded), and
   re-score the recommended item. A method is faithful on a case when removing its top item lowers the
   score more. Methods: leave-one-out score drop (what fusionrec serves), attention rollout, and the
   most recent item. Rates are over all cases.
2. **Modality recovery.** For the top-10 recommendations of every case, each channel's share of the
   score (|contribution| / sum |contributions|). For each latent attribute (genre, style, mood) the
   rise of each channel's mean share when the recommended item has a value the user likes (the
   generator's truth) vs when it does not. Recovered when the channel rising most is the modality the
   generator shows that attribute in (text: genre, image: style, audio: mood).

    .venv/bin/python benchmarks/explain.py          # reuses the data/model of benchmarks/query.py (--work)

Writes benchmarks/results/explain.json, explain.md and explain.html (three explained recommendations with
titles, cover thumbnails and the modality bar).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.explain import ExplainModule, attention_rollout, channel_names
    from fusionrec.models import load_model
    from query import git_commit
    from _steps import fused_demo_model

    t_start = time.perf_counter()
    work = args.work or Path("artifacts") / "bench_quality_demo" / f"{args.items}x{args.users}x{args.events}-s{args.seed}"
    timings: dict = {}
    raw, ds_path, aligned, model_dir = fused_demo_model(work, args.items, args.users, args.events, args.seed, timings)

    model = load_model(model_dir)
    module = ExplainModule(model)
    names = channel_names(model)
    ds = DatasetArtifact(ds_path)
    cases, hist = ds.eval_cases("test", model.spec.max_len)
    keep = (hist > 0).sum(1) >= 2
    cases, hist = cases[keep].reset_index(drop=True), hist[keep]
    idx, _ = model.topk(hist, 10)
    rng = np.random.default_rng(args.seed)

    truth_items = pd.read_parquet(raw / "truth" / "items.parquet").set_index("item_id")
    truth_users = pd.read_parquet(raw / "truth" / "users.parquet").set_index("user_id")
    item_ids = [str(x) for x in ds.item_ids.tolist()]
    user_of = dict(zip(ds.users["user_idx"].astype(int), ds.users["user_id"].astype(str)))
    attrs = ("genre", "style", "mood")
    shows = {"genre": "text", "style": "image", "mood": "audio"}

    faithful = {"leave-one-out": [], "attention rollout": [], "most recent": []}
    drops_of_top = {m: [] for m in faithful}
    shares, matches = [], {a: [] for a in attrs}
    t0 = time.perf_counter()
    for s in range(0, len(hist), args.batch):
        h = hist[s: s + args.batch]
        it = idx[s: s + args.batch]
        with torch.no_grad():
            score, drop, weight, contrib = (t.numpy() for t in module(torch.from_numpy(h), torch.from_numpy(it)))
        roll = attention_rollout(model, h)
        for b in range(len(h)):
            real = np.flatnonzero(h[b] > 0)
            d = drop[b, :, 0]
            tops = {"leave-one-out": real[np.argmax(d[real])], "attention rollout": real[np.argmax(roll[b, real])],
                    "most recent": real[-1]}
            for m, p in tops.items():
                others = real[real != p]
                r = rng.choice(others)
                faithful[m].append(bool(d[p] > d[r]))
                drops_of_top[m].append(float(d[p]))
            user = truth_users.loc[user_of[int(cases.loc[s + b, "user_idx"])]]
            for j in range(it.shape[1]):
                c = np.abs(contrib[b, j])
                shares.append(c / max(c.sum(), 1e-12))
                t = truth_items.loc[item_ids[int(it[b, j])]]
                for a in attrs:
                    matches[a].append(t[a] in str(user[f"likes_{a}"]).split("|"))
    seconds = time.perf_counter() - t0
    shares_a = np.array(shares)
    rates = {m: float(np.mean(v)) for m, v in faithful.items()}
    recovery: dict = {}
    for a in attrs:
        mk = np.array(matches[a])
        rise = {names[c]: float(shares_a[mk, c].mean() - shares_a[~mk, c].mean()) for c in range(len(names))}
        modal = {k: v for k, v in rise.items() if k != "id"}
        top = max(modal, key=modal.get)
        recovery[a] = {"share_rise_when_liked": rise, "channel_rising_most": top, "expected": shows[a],
                       "recovered": top == shows[a], "n_liked": int(mk.sum()), "n_not_liked": int((~mk).sum())}
    mean_share = {names[c]: float(shares_a[:, c].mean()) for c in range(len(names))}

    lines = [f"Faithfulness on {len(hist)} test cases (top-1 recommendation; removing the top-attributed history item "
             "lowers the score more than removing a random other one):", ""]
    lines += [f"- {m}: {rates[m]:.1%} (mean drop of its top item {np.mean(drops_of_top[m]):.3f})" for m in faithful]
    lines += ["", "Modality recovery (rise of each channel's share of the score when the item has a value the user likes):", "",
              "| attribute | " + " | ".join(names) + " | rises most | generator shows it in |", "|---" * (len(names) + 3) + "|"]
    for a in attrs:
        r = recovery[a]
        lines.append(f"| {a} | " + " | ".join(f"{r['share_rise_when_liked'][n]:+.3f}" for n in names)
                     + f" | {r['channel_rising_most']} | {r['expected']} |")
    lines += ["", "Mean share of the score per channel: " + ", ".join(f"{k} {v:.1%}" for k, v in mean_share.items())]
    # three explained recommendations as a person reads them (also written as explain.html with thumbnails)
    from fusionrec.explain import examples_html, examples_markdown, explain

    warm = np.flatnonzero(cases["segment"].to_numpy() == "warm")[:3]
    ex = explain(model, hist[warm], idx[warm][:, :3], module, top_history=3)
    examples = [{"history": [int(x) for x in hist[w] if x > 0], "items": ex[j]} for j, w in enumerate(warm)]
    titles = dict(zip(ds.items["item_id"].astype(str), ds.items["title"].fillna("").astype(str)))
    heading = "Explained recommendations (fused:attention, three warm test cases; titles are not unique in the demo catalog)"
    lines += ["", examples_markdown(examples, item_ids, titles, heading)]
    text = "\n".join(lines)
    print(text)
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "explain.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>Explanations</title></head>"
                                                   f"<body>{examples_html(examples, ds, item_ids, heading)}</body></html>\n")
    out = {
        "what": "faithfulness of history attributions and modality recovery of channel shares, demo catalog test cases",
        "command": "benchmarks/explain.py " + " ".join(sys.argv[1:]), "git_commit": git_commit(),
        "catalog": {"items": args.items, "users": args.users, "events": args.events, "seed": args.seed},
        "model": {"dir": str(model_dir), "fusion": model.spec.fusion, "channels": names},
        "n_cases": int(len(hist)), "faithfulness_rate": rates,
        "mean_drop_of_top_item": {m: float(np.mean(v)) for m, v in drops_of_top.items()},
        "random_seed": args.seed, "modality_recovery": recovery, "mean_share": mean_share,
        "seconds": {"prep": timings, "explain_all_cases": round(seconds, 1), "total": round(time.perf_counter() - t_start, 1)},
        "versions": {p: version(p) for p in ("torch", "numpy")},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "explain.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (ROOT / "results" / "explain.md").write_text(f"# Explanations (demo catalog)\n\n{text}\n")
    print(f"written to {ROOT / 'results' / 'explain.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
