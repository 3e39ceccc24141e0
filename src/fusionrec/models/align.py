"""Align step: per-modality projection heads into one space, trained with symmetric InfoNCE.

Each modality's raw embeddings (from the encode step) are standardised and passed through a
small MLP head to a shared space of size ``dim`` (L2-normalised). The heads are trained
CLIP-style: for every pair of modalities, items that have both are positives of each other
and the other items of the batch are negatives (symmetric cross-entropy, learnable
temperature); missing modalities are masked out of the pairs. A reconstruction term (a linear
decoder back to the standardised input, weight ``recon_weight``, 30 by default) keeps what is specific
to a modality: pure InfoNCE keeps only what modalities share, and fusion needs the rest too. With the
default weight the reconstruction dominates, so the space is less "aligned" (cross-modal retrieval gains
less) and more informative (cold items are ranked far better): the recommender is what it serves.

Outputs (the ``aligned`` artifact): ``<modality>.npy`` float32 [n_items+1, dim] (row 0 and
missing rows zero), ``<modality>_mask.npy``, ``projections.safetensors``, ``metrics.json``
(cross-modal retrieval Recall@1/@10 per ordered pair, with the untrained heads ("before") and
the trained ones ("after"), measured on a seeded share of items held out of the fit
(``holdout_share``; ``retrieval_fit`` has the same on the fitted items), ``manifest.json``.
Every item is projected in the artifact; the held-out ones only never took part in fitting the
heads (nor in their standardisation statistics).

Example:
    >>> run("artifacts/dataset", [Path("artifacts/emb/text"), Path("artifacts/emb/image")],
    ...     Path("artifacts/aligned"), AlignConfig(dim=64))                       # doctest: +SKIP
    >>> project(Path("artifacts/aligned"), "text", new_raw_text_vectors)           # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fusionrec.artifacts import ArtifactError, artifact_dir, atomic_write_json, check_output, load_npy, read_json, read_manifest, save_npy, write_manifest
from fusionrec.config import StepConfig
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.device import pick_device
from fusionrec.progress import get_logger, progress

log = get_logger(__name__)


class AlignConfig(StepConfig):
    """Settings of the align step (config section ``align``)."""

    # Ranges are checked here, so a bad value is one line naming the field, not a torch error.
    dim: int = Field(64, ge=1)
    hidden: int = Field(256, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2, description="InfoNCE needs at least 2 items per batch (one positive, one negative)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(0.07, gt=0)
    learn_temperature: bool = True
    recon_weight: float = Field(30.0, ge=0, description="weight of the reconstruction term; 30 (not 1) keeps enough of what only "
                                "one modality carries for cold items: x2.4 cold-valid NDCG@10, warm on par (docs/models.md, Ablations)")
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    device: str = "auto"
    eval_items: int = Field(2000, ge=1)
    holdout_share: float = Field(0.1, ge=0.0, lt=1.0, description="share of items left out of the fit; retrieval is reported on them")


class Head(nn.Module):
    """Standardise -> MLP -> L2-normalise (the projection of one modality)."""

    def __init__(self, in_dim: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.skip = nn.Linear(in_dim, dim, bias=False)
        self.decoder = nn.Linear(dim, in_dim)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.standardise(x)
        return nn.functional.normalize(self.net(z) + self.skip(z), dim=-1)


def _load_embeddings(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    manifest = read_manifest(path, kind="embeddings")
    modality = manifest.get("modality") or path.name
    emb = load_npy(path / "embeddings.npy").astype(np.float32)
    mask_p = path / "mask.npy"
    mask = load_npy(mask_p).astype(bool) if mask_p.exists() else np.ones(len(emb), bool)
    if emb.ndim != 2 or mask.shape != (len(emb),):
        raise ArtifactError(f"{path}: embeddings.npy must be [n_items+1, d] with mask.npy [n_items+1], got {emb.shape} and {mask.shape}")
    mask = mask.copy()
    mask[0] = False
    if not np.isfinite(emb[mask]).all():
        bad = np.where(mask & ~np.isfinite(emb).all(1))[0]
        raise ArtifactError(f"{path}: non-finite embeddings for item_idx {bad[:10].tolist()}")
    return str(modality), emb, mask


def retrieval_recall(za: np.ndarray, zb: np.ndarray, ks=(1, 10)) -> dict[str, float]:
    """Recall@k of retrieving item i's b-vector from its a-vector among all n candidates (cosine)."""
    za = za / np.maximum(np.linalg.norm(za, axis=1, keepdims=True), 1e-12)
    zb = zb / np.maximum(np.linalg.norm(zb, axis=1, keepdims=True), 1e-12)
    sim = za @ zb.T
    rank = (sim > np.diag(sim)[:, None]).sum(1)  # 0-based rank of the true match
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}


def _pair_metrics(heads: dict[str, Head], data: dict[str, tuple[torch.Tensor, torch.Tensor]], n_eval: int, seed: int,
                  among: np.ndarray | None = None) -> dict:
    """Recall@1/@10 per ordered modality pair over the items in ``among`` (bool [n_items+1]; default all) having both."""
    out = {}
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        z = {m: heads[m](x).cpu().numpy() for m, (x, _) in data.items()}
    for a, b in itertools.permutations(sorted(data), 2):
        both = (data[a][1] & data[b][1]).cpu().numpy()
        if among is not None:
            both = both & among
        idx = np.where(both)[0]
        if len(idx) < 2:
            continue
        if len(idx) > n_eval:
            idx = np.sort(rng.choice(idx, n_eval, replace=False))
        out[f"{a}->{b}"] = {**retrieval_recall(z[a][idx], z[b][idx]), "n": int(len(idx))}
    return out


def run(dataset: str | os.PathLike, embeddings: list[Path], out: str | os.PathLike, cfg: AlignConfig | None = None,
        force: bool = False) -> Path:
    """Train the projection heads and write the ``aligned`` artifact to ``out``; returns ``out``."""
    cfg = cfg or AlignConfig()
    out = Path(out)
    check_output(out, "aligned", [dataset, *embeddings], force)
    ds = DatasetArtifact(dataset)
    if not embeddings:
        raise ValueError("align needs at least one embeddings artifact (--embeddings)")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    heads: dict[str, Head] = {}
    n = ds.n_items + 1
    held_out = np.zeros(n, bool)
    n_held = int(round(cfg.holdout_share * ds.n_items))
    if n_held:
        held_out[np.random.default_rng([cfg.seed, 2]).choice(np.arange(1, n), n_held, replace=False)] = True
    fit_rows = torch.from_numpy(~held_out)
    for p in embeddings:
        modality, emb, mask = _load_embeddings(Path(p))
        if modality in data:
            raise ValueError(f"two embeddings artifacts for modality '{modality}' ({p})")
        if len(emb) != ds.n_items + 1:
            raise ArtifactError(f"{p}: {len(emb)} rows but the dataset has n_items+1 = {ds.n_items + 1}; encode this dataset again")
        x = torch.from_numpy(emb)
        mk = torch.from_numpy(mask)
        head = Head(emb.shape[1], cfg.dim, cfg.hidden, cfg.dropout)
        fit = mk & fit_rows  # held-out items do not shape the standardisation either
        if fit.any():
            head.mean.copy_(x[fit].mean(0))
            head.std.copy_(x[fit].std(0, unbiased=False).clamp_min(1e-6) if fit.sum() > 1 else torch.ones(emb.shape[1]))
        data[modality] = (x.to(device), mk.to(device))
        heads[modality] = head.to(device)
    modalities = sorted(data)
    eval_rows = held_out if n_held else None
    before = _pair_metrics({m: h.eval() for m, h in heads.items()}, data, cfg.eval_items, cfg.seed, eval_rows)

    params = [p for h in heads.values() for p in h.parameters()]
    log_scale = nn.Parameter(torch.tensor(float(np.log(1.0 / cfg.temperature)), device=device), requires_grad=cfg.learn_temperature)
    opt = torch.optim.AdamW(params + ([log_scale] if cfg.learn_temperature else []), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pairs = list(itertools.combinations(modalities, 2))
    any_present = torch.stack([data[m][1] for m in modalities]).any(0).cpu().numpy()
    items = np.where(any_present & ~held_out)[0]
    gen = np.random.default_rng(cfg.seed)
    curve: list[float] = []
    t0 = time.perf_counter()
    bar = progress(range(cfg.epochs), desc="align", unit="epoch")
    for _ in bar:
        for h in heads.values():
            h.train()
        perm = gen.permutation(items)
        total, steps = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            b = torch.from_numpy(perm[start:start + cfg.batch_size]).to(device)
            z, zs = {}, {}
            loss = torch.zeros((), device=device)
            for m in modalities:
                x, mk = data[m]
                zs[m] = heads[m].standardise(x[b])
                z[m] = heads[m](x[b])
                if cfg.recon_weight > 0:
                    mb = mk[b]
                    if mb.any():
                        rec = heads[m].decoder(z[m][mb])
                        loss = loss + cfg.recon_weight * nn.functional.mse_loss(rec, zs[m][mb])
            scale = log_scale.exp().clamp(max=100.0)
            for a, c in pairs:
                both = data[a][1][b] & data[c][1][b]
                if int(both.sum()) < 2:
                    continue
                logits = scale * z[a][both] @ z[c][both].t()
                target = torch.arange(logits.shape[0], device=device)
                loss = loss + 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.t(), target))
            if loss.requires_grad:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            total += float(loss.detach())
            steps += 1
        curve.append(total / max(steps, 1))
        bar.set_postfix(loss=f"{curve[-1]:.3f}", refresh=False)  # refresh=True would log a line per call without a terminal
    seconds = time.perf_counter() - t0
    for h in heads.values():
        h.eval()
    after = _pair_metrics(heads, data, cfg.eval_items, cfg.seed, eval_rows)
    after_fit = _pair_metrics(heads, data, cfg.eval_items, cfg.seed, ~held_out) if n_held else after
    if not pairs:
        log.warning("only one modality (%s): nothing to align; the head is trained on reconstruction only", modalities[0])

    from safetensors.torch import save_file

    with artifact_dir(out, "aligned", [dataset, *embeddings], force) as tmp:
        state = {}
        with torch.no_grad():
            for m in modalities:
                x, mk = data[m]
                z = heads[m](x) * mk.unsqueeze(1).float()
                save_npy(tmp / f"{m}.npy", z.cpu().numpy().astype(np.float32))
                save_npy(tmp / f"{m}_mask.npy", mk.cpu().numpy())
                for k, v in heads[m].state_dict().items():
                    state[f"{m}.{k}"] = v.detach().cpu().contiguous()
        save_file(state, str(tmp / "projections.safetensors"))
        in_dims = {m: int(data[m][0].shape[1]) for m in modalities}
        atomic_write_json(tmp / "heads.json", {"modalities": modalities, "in_dims": in_dims, "dim": cfg.dim, "hidden": cfg.hidden})
        metrics = {
            # "before"/"after" on the held-out items (never in the fit), "retrieval_fit" on the fitted ones
            "retrieval": {"before": before, "after": after, "items": "held_out" if n_held else "all (holdout_share 0)",
                          "n_held_out": n_held, "held_out_items": np.flatnonzero(held_out).tolist()},
            "retrieval_fit": after_fit,
            "loss_curve": curve,
            "temperature": float(1.0 / log_scale.exp().item()),
            "train_seconds": seconds,
            "coverage": {m: int(data[m][1].sum()) for m in modalities},
            "n_items": ds.n_items,
        }
        atomic_write_json(tmp / "metrics.json", metrics)
        write_manifest(tmp, step="align", kind="aligned", params=cfg,
                       inputs={"dataset": Path(dataset), **{f"embeddings_{i}": Path(p) for i, p in enumerate(embeddings)}},
                       modalities=modalities, dim=cfg.dim)
    log.info("aligned %s into %d-d in %.1fs", ", ".join(modalities), cfg.dim, seconds)
    return out


def load_heads(aligned_dir: str | os.PathLike) -> dict[str, Head]:
    """The trained projection heads of an aligned artifact (eval mode, CPU)."""
    from safetensors.torch import load_file

    aligned_dir = Path(aligned_dir)
    meta = read_json(aligned_dir / "heads.json")
    state = load_file(str(aligned_dir / "projections.safetensors"))
    heads = {}
    for m in meta["modalities"]:
        h = Head(meta["in_dims"][m], meta["dim"], meta["hidden"])
        h.load_state_dict({k[len(m) + 1:]: v for k, v in state.items() if k.startswith(m + ".")})
        heads[m] = h.eval()
    return heads


def project(aligned_dir: str | os.PathLike, modality: str, raw: np.ndarray) -> np.ndarray:
    """Project NEW items' raw ``modality`` embeddings [m, d_raw] into the aligned space [m, D] with the saved head.

    Example:
        >>> z = project("artifacts/aligned", "text", np.random.randn(3, 384).astype("float32"))  # doctest: +SKIP
    """
    heads = load_heads(aligned_dir)
    if modality not in heads:
        raise ValueError(f"{aligned_dir} has no head for modality '{modality}' (it has {sorted(heads)})")
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != heads[modality].mean.shape[0]:
        raise ValueError(f"raw '{modality}' embeddings must be [m, {heads[modality].mean.shape[0]}], got {raw.shape}")
    with torch.no_grad():
        return heads[modality](torch.from_numpy(raw)).numpy().astype(np.float32)


def load_aligned(aligned_dir: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(modalities, features [n_items+1, M, D], mask [n_items+1, M]) of an aligned artifact."""
    aligned_dir = Path(aligned_dir)
    manifest = read_manifest(aligned_dir, kind="aligned")
    mods = list(manifest["modalities"])
    feats = np.stack([load_npy(aligned_dir / f"{m}.npy") for m in mods], 1).astype(np.float32)
    mask = np.stack([load_npy(aligned_dir / f"{m}_mask.npy") for m in mods], 1).astype(bool)
    return mods, feats, mask


__all__ = ["AlignConfig", "run", "project", "load_heads", "load_aligned", "retrieval_recall"]
