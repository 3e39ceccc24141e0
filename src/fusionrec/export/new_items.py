"""Cold-start items without retraining: encode new items, project them with the saved alignment heads,
append them to the model's item table and export again (``fusionrec export --add-items``).

Example:
    >>> run_with_new_items(Path("artifacts/model"), Path("artifacts/dataset"), Path("artifacts/aligned"),
    ...                    Path("new_items.csv"), Path("artifacts/repo"), ExportConfig())   # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path
import numpy as np
import pandas as pd

from fusionrec.artifacts import load_npy, read_manifest
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.data.ingest import MEDIA_COLUMNS, RESERVED_ITEM_COLUMNS, read_items
from fusionrec.encoders.encode import EncodeConfig
from fusionrec.encoders.encode import run as encode
from fusionrec.export import ExportConfig, export_module
from fusionrec.models import load_model
from fusionrec.models.align import project
from fusionrec.progress import get_logger

log = get_logger("fusionrec.export")


def _read_new_items(source: Path) -> tuple[pd.DataFrame, Path]:
    """New items (cleaned as ingest cleans items) plus the folder their relative media paths start from."""
    source = Path(source)
    if source.is_dir() and (source / "manifest.json").exists():
        items = DatasetArtifact(source).items
        return items.drop(columns=[c for c in RESERVED_ITEM_COLUMNS if c in items.columns]), source
    if source.is_dir():
        return read_items(source), source
    if not source.exists():
        raise FileNotFoundError(f"new items file not found: {source}")
    if source.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{source}: new items must be a .csv or .parquet file, a raw dataset folder or a dataset artifact")
    return read_items(source), source.parent


def _extended_catalog(ds: DatasetArtifact, new: pd.DataFrame, base: Path) -> tuple[DatasetArtifact, list[str], int]:
    """The dataset seen with the new items appended (item_idx n+1..), their media paths made absolute."""
    new = new.copy()
    clash = sorted(set(new["item_id"]) & set(ds.items["item_id"].astype(str)))
    if clash:
        raise ValueError(f"new item id(s) already in the catalog: {clash[:10]} (re-exporting an existing item needs retraining)")
    old = ds.items
    n = len(old)
    for col in MEDIA_COLUMNS:
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
    return ds.with_items(both), new["item_id"].tolist(), n


def encode_new_items(model, dataset: Path, aligned: Path, new_items: Path, work: Path) -> tuple[list[str], dict, dict, dict]:
    """Encode new items with the encoders the model's aligned artifact was built from, and project them.

    Old and new items are encoded together (the content-hash cache makes old ones free; fittable
    encoders such as tabular standardization see the whole catalog), then the new rows are
    projected with the saved alignment heads (``fusionrec.models.align.project``).
    Returns ``(new_ids, features, masks, provenance)``.
    """
    ds = DatasetArtifact(dataset)
    new_df, base = _read_new_items(Path(new_items))
    catalog, new_ids, n = _extended_catalog(ds, new_df, base)
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
        out = encode(catalog, work / f"emb_{mod}", EncodeConfig(**params))
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

