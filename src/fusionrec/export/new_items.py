"""Cold-start items without retraining: encode new items, project them with the saved alignment heads,
append them to the model's item table and export again (``fusionrec export --add-items``).

Example:
    >>> run_with_new_items(Path("artifacts/model"), Path("artifacts/dataset"), Path("artifacts/aligned"),
    ...                    Path("new_items.csv"), Path("artifacts/repo"), ExportConfig())   # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusionrec.artifacts import atomic_write_json, load_npy, read_manifest, save_parquet, write_manifest
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.encoders.encode import EncodeConfig
from fusionrec.encoders.encode import run as encode
from fusionrec.export import ExportConfig, export_module
from fusionrec.models import load_model
from fusionrec.models.align import project
from fusionrec.progress import get_logger

log = get_logger("fusionrec.export")


def _read_new_items(source: Path) -> tuple[Any, Path]:
    """New items as a DataFrame plus the folder their media paths are relative to."""
    source = Path(source)
    if source.is_dir() and (source / "manifest.json").exists():
        return DatasetArtifact(source).items.copy(), source
    if source.is_dir():
        for name in ("items.parquet", "items.csv"):
            if (source / name).exists():
                return _read_new_items(source / name)
        raise FileNotFoundError(f"{source}: no items.csv / items.parquet (or dataset artifact) with the new items")
    if not source.exists():
        raise FileNotFoundError(f"new items file not found: {source}")
    if source.suffix == ".parquet":
        return pd.read_parquet(source), source.parent
    if source.suffix == ".csv":
        return pd.read_csv(source, dtype={"item_id": str}), source.parent
    raise ValueError(f"{source}: new items must be a .csv or .parquet file, a raw dataset folder or a dataset artifact")


def _combined_dataset(ds, new, base: Path, out: Path) -> tuple[list[str], int]:
    """Write a dataset artifact of the old items followed by the new ones (item_idx n+1..); media paths absolute."""
    if "item_id" not in new.columns:
        raise ValueError(f"new items have no 'item_id' column (columns: {list(new.columns)})")
    new = new.drop(columns=[c for c in ("item_idx", "cold") if c in new.columns]).copy()
    new["item_id"] = new["item_id"].astype(str)
    dup = new["item_id"][new["item_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"new items repeat item_id(s) {dup[:10]}")
    clash = sorted(set(new["item_id"]) & set(ds.items["item_id"].astype(str)))
    if clash:
        raise ValueError(f"new item id(s) already in the catalog: {clash[:10]} (re-exporting an existing item needs retraining)")
    old = ds.items.copy()
    n = len(old)
    for col in ("image", "audio"):
        if col in old.columns:
            old[col] = [str(ds.path / p) if isinstance(p, str) and p else None for p in old[col]]
        if col in new.columns:
            paths, status = [], []
            for p in new[col]:
                if not isinstance(p, str) or not p:
                    paths.append(None)
                    status.append("absent")
                else:
                    full = (base / p) if not Path(p).is_absolute() else Path(p)
                    paths.append(str(full))
                    status.append("ok" if full.is_file() else "missing")
            new[col], new[f"{col}_status"] = paths, status
    new["item_idx"] = np.arange(n + 1, n + 1 + len(new), dtype=np.int64)
    new["cold"] = True
    both = pd.concat([old, new[[c for c in new.columns if c in old.columns or c in ("item_idx", "item_id")]]],
                     ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    save_parquet(both, out / "items.parquet")
    save_parquet(ds.users, out / "users.parquet")
    atomic_write_json(out / "meta.json", ds.meta)
    atomic_write_json(out / "stats.json", {"n_items": len(both), "note": "items only: for encoding new items"})
    write_manifest(out, step="export", kind="dataset", inputs={"dataset": ds.path}, purpose="encode new items")
    return new["item_id"].tolist(), n


def encode_new_items(model, dataset: Path, aligned: Path, new_items: Path, work: Path) -> tuple[list[str], dict, dict, dict]:
    """Encode new items with the encoders the model's aligned artifact was built from, and project them.

    Old and new items are encoded together (the content-hash cache makes old ones free; fittable
    encoders such as tabular standardization see the whole catalog), then the new rows are
    projected with the saved alignment heads (``fusionrec.models.align.project``).
    Returns ``(new_ids, features, masks, provenance)``.
    """
    ds = DatasetArtifact(dataset)
    new_df, base = _read_new_items(Path(new_items))
    comb = work / "combined_dataset"
    new_ids, n = _combined_dataset(ds, new_df, base, comb)
    m = len(new_ids)
    amanifest = read_manifest(aligned, kind="aligned")
    sources = {}
    for role, inp in amanifest.get("inputs", {}).items():
        if role.startswith("embeddings"):
            p = Path(inp["path"])
            if (p / "manifest.json").exists():
                em = read_manifest(p)
                sources[em.get("modality") or em["params"].get("modality")] = (p, em)
    features, masks, prov = {}, {}, {}
    for mod in model.spec.modalities:
        if mod not in sources:
            raise FileNotFoundError(f"the embeddings artifact of modality '{mod}' named in {aligned}/manifest.json is gone: "
                                    "new items must be encoded with the same encoder settings")
        path, em = sources[mod]
        params = {k: v for k, v in em["params"].items() if k in EncodeConfig.model_fields}
        params.update(shard=0, num_shards=1)
        out = encode(comb, work / f"emb_{mod}", EncodeConfig(**params))
        emb, mask = load_npy(out / "embeddings.npy"), load_npy(out / "mask.npy").astype(bool)
        raw, mk = emb[n + 1: n + 1 + m], mask[n + 1: n + 1 + m]
        features[mod] = project(aligned, mod, raw) * mk[:, None]
        masks[mod] = mk
        prov[mod] = {"encoder": em.get("encoder"), "present": int(mk.sum()), "of": m}
        log.info("new items, %s: %d of %d encoded", mod, int(mk.sum()), m)
    return new_ids, features, masks, prov


def run_with_new_items(model: Path, dataset: Path, aligned: Path, new_items: Path, out: Path, cfg: ExportConfig) -> Path:
    """Export ``model`` with new (cold-start) items appended to its item table, without retraining.

    New items get item_idx ``n_items+1..``; ``item_ids.json`` lists them; parity runs as usual.

    Example:
        >>> run_with_new_items(Path("artifacts/model"), Path("artifacts/dataset"), Path("artifacts/aligned"),
        ...                    Path("new_items.csv"), Path("artifacts/repo"), ExportConfig())   # doctest: +SKIP
    """
    m = load_model(model, device="cpu")
    if not getattr(m.spec, "modalities", None):
        raise ValueError(f"model {model} uses no content modality (ID-only or popularity): it cannot score new items "
                         "without retraining")
    ids = [str(x) for x in DatasetArtifact(dataset).item_ids.tolist()]
    if len(ids) != m.n_items + 1:
        raise ValueError(f"model {model} has {m.n_items} items but dataset {dataset} has {len(ids) - 1}")
    with tempfile.TemporaryDirectory(prefix=".add-items-", dir=Path(out).parent if Path(out).parent.exists() else None) as work:
        new_ids, feats, masks, prov = encode_new_items(m, dataset, aligned, new_items, Path(work))
    m2 = m.with_new_items(feats, masks)
    max_len = int(cfg.max_len or m.spec.max_len)
    k = min(cfg.k, m2.n_items)
    return export_module(m2.serving_module(k), m2.n_items, max_len, ids + new_ids, dataset, out, cfg,
                         inputs={"model": model, "aligned": aligned, "new_items": Path(new_items)}, k=k,
                         extra_manifest={"added_items": {"n": len(new_ids), "first_item_idx": len(ids), "modalities": prov}})

