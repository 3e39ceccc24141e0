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

    .venv/bin/python benchmarks/explain.py                 # 3 seeds, from scratch -> benchmarks/results/explain.{json,md,html}
    .venv/bin/python benchmarks/explain.py --items 600 --users 400 --seeds 0 --name explain_smoke   # a quick look

From scratch by default (benchmarks/_steps.py ``seeded_fused_models``, the same preparation as
benchmarks/query.py): the work folder is emptied, the catalog generated, ingested and encoded once (fresh
encoder cache inside it), then per seed an alignment and a fused attention model. ``--reuse`` keeps
artifacts already in --work and the JSON lists them. Each figure is the mean over seeds with its 95%
t-interval; the per-seed figures, commit, command, versions, machine, load, configs and wall/CPU seconds
per step are in the JSON. explain.html shows three explained recommendations of the first seed's model
(titles, cover thumbnails and the modality bar).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

ATTRS = ("genre", "style", "mood")
SHOWS = {"genre": "text", "style": "image", "mood": "audio"}
METHODS = ("leave-one-out", "attention rollout", "most recent")


def measure(model_dir: Path, ds, truth_items, truth_users, seed: int, batch: int) -> dict:
    """Faithfulness and modality recovery of one fused model over every test case with >= 2 history items."""
    import torch

    from fusionrec.explain import ExplainModule, attention_rollout, channel_names
    from fusionrec.models import load_model

    model = load_model(model_dir)
    module = ExplainModule(model)
    names = channel_names(model)
    cases, hist = ds.eval_cases("test", model.spec.max_len)
    keep = (hist > 0).sum(1) >= 2
    cases, hist = cases[keep].reset_index(drop=True), hist[keep]
    idx, _ = model.topk(hist, 10)
    rng = np.random.default_rng(seed)
    item_ids = [str(x) for x in ds.item_ids.tolist()]
    user_of = dict(zip(ds.users["user_idx"].astype(int), ds.users["user_id"].astype(str)))

    faithful = {m: [] for m in METHODS}
    drops_of_top = {m: [] for m in METHODS}
    shares, matches = [], {a: [] for a in ATTRS}
    for s in range(0, len(hist), batch):
        h = hist[s: s + batch]
        it = idx[s: s + batch]
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
                for a in ATTRS:
                    matches[a].append(t[a] in str(user[f"likes_{a}"]).split("|"))
    shares_a = np.array(shares)
    recovery: dict = {}
    for a in ATTRS:
        mk = np.array(matches[a])
        rise = {names[c]: float(shares_a[mk, c].mean() - shares_a[~mk, c].mean()) for c in range(len(names))}
        modal = {k: v for k, v in rise.items() if k != "id"}
        top = max(modal, key=modal.get)
        recovery[a] = {"share_rise_when_liked": rise, "channel_rising_most": top, "expected": SHOWS[a],
                       "recovered": top == SHOWS[a], "n_liked": int(mk.sum()), "n_not_liked": int((~mk).sum())}
    return {"model": str(model_dir), "fusion": model.spec.fusion, "channels": names, "n_cases": int(len(hist)),
            "faithfulness_rate": {m: float(np.mean(v)) for m, v in faithful.items()},
            "mean_drop_of_top_item": {m: float(np.mean(v)) for m, v in drops_of_top.items()},
            "modality_recovery": recovery, "mean_share": {names[c]: float(shares_a[:, c].mean()) for c in range(len(names))},
            "_examples": (model, module, cases, hist, idx)}


def main() -> int:
    from _steps import seeded_demo_bench

    args, seeds, prov, clock, prep = seeded_demo_bench(
        __doc__.split("\n\n")[0], "artifacts/bench_explain_demo", "explain",
        lambda ap: ap.add_argument("--batch", type=int, default=32))

    import pandas as pd
    import torch

    from fusionrec.compare import seed_interval
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.explain import examples_html, examples_markdown, explain
    from readme_tables import explain_block

    ds = DatasetArtifact(prep["dataset"])
    truth_items = pd.read_parquet(prep["raw"] / "truth" / "items.parquet").set_index("item_id")
    truth_users = pd.read_parquet(prep["raw"] / "truth" / "users.parquet").set_index("user_id")
    per_seed: dict = {}
    for seed in seeds:
        with clock.step(f"explain all cases seed {seed}"):
            per_seed[seed] = measure(prep["by_seed"][seed]["model"], ds, truth_items, truth_users, seed, args.batch)
    first = per_seed[seeds[0]]
    names = first["channels"]
    over = [per_seed[s] for s in seeds]
    recovery = {}
    for a in ATTRS:
        counts: dict[str, int] = {}
        for o in over:
            top = o["modality_recovery"][a]["channel_rising_most"]
            counts[top] = counts.get(top, 0) + 1
        recovery[a] = {"share_rise_when_liked": {n: seed_interval([o["modality_recovery"][a]["share_rise_when_liked"][n] for o in over])
                                                 for n in names},
                       "channel_rising_most_count": dict(sorted(counts.items(), key=lambda kv: -kv[1])), "expected": SHOWS[a],
                       "recovered_seeds": sum(o["modality_recovery"][a]["recovered"] for o in over)}

    # three explained recommendations as a person reads them, from the first seed's model (also explain.html with thumbnails)
    model, module, cases, hist, idx = first["_examples"]
    warm = np.flatnonzero(cases["segment"].to_numpy() == "warm")[:3]
    ex = explain(model, hist[warm], idx[warm][:, :3], module, top_history=3)
    examples = [{"history": [int(x) for x in hist[w] if x > 0], "items": ex[j]} for j, w in enumerate(warm)]
    item_ids = [str(x) for x in ds.item_ids.tolist()]
    titles = dict(zip(ds.items["item_id"].astype(str), ds.items["title"].fillna("").astype(str)))
    heading = (f"Explained recommendations (fused:attention, seed {seeds[0]}, three warm test cases; "
               "titles are not unique in the demo catalog)")
    for o in over:
        o.pop("_examples")

    out = {
        "name": args.name, "complete": True,
        "what": "faithfulness of history attributions and modality recovery of channel shares, demo catalog test cases",
        "provenance": prov, "seeds": seeds,
        "config": {**prep["config"], "batch": args.batch, "threads": args.threads or torch.get_num_threads(),
                   "scale": f"{args.items} items x {args.users} users x {args.events} events",
                   "random_other_item": "numpy default_rng(seed), one draw per case and method"},
        "n_cases": first["n_cases"], "channels": names,
        "faithfulness_rate": {m: seed_interval([o["faithfulness_rate"][m] for o in over]) for m in METHODS},
        "mean_drop_of_top_item": {m: seed_interval([o["mean_drop_of_top_item"][m] for o in over]) for m in METHODS},
        "modality_recovery": recovery,
        "mean_share": {n: seed_interval([o["mean_share"][n] for o in over]) for n in names},
        "per_seed": {str(s): v for s, v in per_seed.items()}, "examples_from_seed": seeds[0],
        "timings": clock.steps, "cache": prep["cache"],
        "total": {"wall_s": round(sum(v["wall_s"] for v in clock.steps.values()), 1),
                  "cpu_s": round(sum(v["cpu_s"] for v in clock.steps.values()), 1)},
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    lines = [explain_block(out), "", "Per seed:", ""]
    for s, o in out["per_seed"].items():
        lines.append(f"- seed {s}: faithful " + ", ".join(f"{m} {v:.1%}" for m, v in o["faithfulness_rate"].items())
                     + "; rising most " + ", ".join(f"{a} {r['channel_rising_most']}" for a, r in o["modality_recovery"].items()))
    lines += ["", examples_markdown(examples, item_ids, titles, heading), "",
              "Steps (wall / CPU seconds): " + ", ".join(f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" for k, v in clock.steps.items())]
    text = "\n".join(lines)
    print(text)
    res = ROOT / "results"
    res.mkdir(exist_ok=True)
    (res / f"{args.name}.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>Explanations</title></head>"
                                           f"<body>{examples_html(examples, ds, item_ids, heading)}</body></html>\n")
    (res / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (res / f"{args.name}.md").write_text(f"# Explanations (demo catalog)\n\n{text}\n")
    print(f"written to {res / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
