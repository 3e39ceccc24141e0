"""Train step: the fused sequential recommender and its baselines, by one code path.

``cfg.model`` picks what is trained:

- ``fused``            every aligned modality (+ the item-ID embedding when ``use_id_embedding``);
- ``single:<modality>`` one aligned modality (+ ID embedding when ``use_id_embedding``);
- ``id``               the ID embedding only (SASRec-like; cannot score cold items);
- ``popularity``       train interaction counts (no learning).

Next-item prediction over the train sequences with a full
softmax over the items seen in training (``loss=sampled``: in-batch + ``n_negatives`` uniform
negatives), channel dropout (``modality_dropout``, ``id_dropout``) so items can be scored from
content alone, an optional content-alignment term (``content_align``: each warm item's content-only vector
is pulled to its full, ID-carrying vector, so cold items are scored on the same scale as warm ones), early
stopping on validation NDCG@10, fixed seeds. ``windows="all"`` (default) cuts every user's train sequence
into windows of ``max_len`` targets so one epoch makes every train event after a user's first the target
of exactly one position; ``windows="last"`` keeps only each user's last ``max_len + 1`` items (the old,
data-wasting behaviour, kept for the ablation). Writes the ``model``
artifact: ``model.safetensors``, ``config.json``, ``metrics.json``, ``per_case.parquet`` and the test report
``report.md`` / ``report.html`` (metrics per segment, three explained recommendations with titles,
cover thumbnails and the modality bar).

Example:
    >>> run("artifacts/dataset", "artifacts/aligned", "artifacts/model", TrainConfig(epochs=20))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from fusionrec.artifacts import StepError, artifact_dir, atomic_write_json, check_output, save_parquet, write_manifest
from fusionrec.config import StepConfig
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.device import pick_device
from fusionrec.evaluate import evaluate
from fusionrec.models.align import load_aligned
from fusionrec.models.recommender import Architecture, ModelSpec, PopularityRanker, Recommender, save_model
from fusionrec.progress import get_logger, progress
from fusionrec.ranking import left_pad

log = get_logger(__name__)

NEG = -1.0e9


class TrainConfig(StepConfig, Architecture):
    """Settings of the train step (config section ``train``). Defaults train the demo catalog in about a minute on 2 cores.

    The model's hyperparameters (fusion, use_id_embedding, dim, layers, heads, max_len, dropout,
    adapter, whiten, unknown_history, use_events, id_count_gate) come from ``Architecture``, the fields
    ``ModelSpec`` records.
    """

    # Ranges are checked here, so a bad value is one line naming the field, not a torch error.
    model: str = "fused"
    modality_dropout: float = Field(0.1, ge=0, lt=1)
    id_dropout: float = Field(0.3, ge=0, le=1)
    epochs: int = Field(30, ge=1, description="an untrained model is never written: at least one epoch")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    loss: Literal["full", "sampled"] = "full"
    n_negatives: int = Field(256, ge=1)
    patience: int = Field(4, ge=1)
    valid_every: int = Field(1, ge=1)
    max_valid_cases: Optional[int] = Field(3000, ge=1)
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    eval_k: int = Field(100, ge=1)
    eval_ks: list[int] = [10, 20, 50]
    max_train_seconds: Optional[float] = Field(None, gt=0)
    windows: Literal["all", "last"] = "all"
    window_stride: Optional[int] = Field(None, ge=1, description="targets per window (default max_len: no overlap); "
                                         "smaller strides give a window's first targets more context at more compute")
    content_align: float = Field(0.0, ge=0.0, description="weight of the content-alignment term (0 = off)")
    calibrate_cold: bool = Field(False, description="after training, add to items scored from content alone (cold, added) "
                                 "the bias that scores them at the expected probability of a warm item, not its expected "
                                 "log-probability (``cold_calibration``); more cold items in the lists, a little warm quality lost")
    logit_adjustment: float = Field(0.0, ge=0.0, description="train on score + t * log(train count) and serve the score alone "
                                    "(Menon et al. 2021): the scores learn what popularity does not explain, so rarely trained "
                                    "items reach more lists; 0 = off")
    event_weights: dict[str, float] = Field(default_factory=dict, description="loss weight of a target by its behaviour "
                                            "kind, e.g. {purchase: 3.0, view: 0.5}; kinds not named weigh 1")
    target_events: Optional[list[str]] = Field(None, description="train on targets of these kinds only (e.g. [purchase]: "
                                               "predict purchases from all behaviour); None: every event is a target")

    @field_validator("event_weights")
    @classmethod
    def _event_weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not (w >= 0 and np.isfinite(w))}
        if bad:
            raise ValueError(f"event_weights must be finite and >= 0, got {bad}")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v in ("fused", "id", "popularity") or (v.startswith("single:") and len(v) > 7):
            return v
        raise ValueError(f"model must be fused, id, single:<modality> or popularity, got '{v}'")

    @model_validator(mode="after")
    def _shapes(self) -> "TrainConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if any(k < 1 or k > self.eval_k for k in self.eval_ks):
            raise ValueError(f"eval_ks {self.eval_ks} must lie in 1..eval_k ({self.eval_k})")
        return self


class TrainingError(StepError):
    """Training went wrong in a way more epochs cannot fix (a non-finite loss); no artifact is written."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_arrays(sequences: list[np.ndarray], max_len: int, windows: str = "all",
                    stride: int | None = None, kinds: list[np.ndarray] | None = None):
    """SASRec inputs/targets [W, max_len] (left-padded; target 0 = no loss at that position).

    ``windows="all"``: every user's sequence is cut from its end into windows whose owned targets are
    ``stride`` (default ``max_len``) consecutive events; a window reads up to ``max_len`` items of input
    ending just before its last target, and targets it does not own (context for an overlapping stride)
    are 0. So every train event but a user's first is a target exactly once per epoch.
    ``windows="last"``: one window per user, their last ``max_len + 1`` items.

    With ``kinds`` (kind ids parallel to ``sequences``) returns ``(X, Y, X_kinds, Y_kinds)``: the kinds of
    the input positions and of the targets, cut the same way.
    """
    cuts: list[tuple[int, int, int, int]] = []  # (user, first input, one past the last input, first owned target)
    for u, s in enumerate(sequences):
        if windows == "last":
            if len(s) >= 2:
                start = max(0, len(s) - 1 - max_len)
                cuts.append((u, start, len(s) - 1, start + 1))
            continue
        step = min(stride or max_len, max_len)
        end = len(s)  # one past the last target position still to cover
        while end > 1:
            first = max(1, end - step)  # first target position this window owns
            start = max(0, end - 1 - max_len)  # first input position
            cuts.append((u, start, end - 1, first))
            end = first

    def cut(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for u, start, stop, first in cuts:
            s = np.asarray(seqs[u], dtype=np.int64)
            y = s[start + 1:stop + 1].copy()
            y[: first - (start + 1)] = 0  # owned by an earlier window
            xs.append(s[start:stop])
            ys.append(y)
        return left_pad(xs, max_len), left_pad(ys, max_len)

    X, Y = cut(sequences)
    if kinds is None:
        return X, Y
    KX, KY = cut(kinds)
    return X, Y, KX, np.where(Y > 0, KY, 0)


def build_spec(cfg: TrainConfig, n_items: int, available: list[str], aligned_dim: int, event_kinds: list[str] | None = None) -> ModelSpec:
    base = {"n_items": n_items, **cfg.model_dump(include=set(Architecture.model_fields) - {"use_id_embedding"}),
            "event_kinds": list(event_kinds or []) if cfg.use_events and cfg.model != "popularity" else []}
    if cfg.model == "popularity":
        return ModelSpec(kind="popularity", **base)
    if cfg.model == "id":
        return ModelSpec(modalities=[], aligned_dim=0, use_id_embedding=True, **base)
    if cfg.model == "fused":
        mods = list(available)
    else:
        mods = [cfg.model.split(":", 1)[1]]
        if mods[0] not in available:
            raise ValueError(f"model '{cfg.model}': the aligned artifact has no modality '{mods[0]}' (it has {available})")
    if not mods:
        raise ValueError(f"model '{cfg.model}' needs an aligned artifact (--aligned) with at least one modality")
    return ModelSpec(modalities=mods, aligned_dim=aligned_dim, use_id_embedding=cfg.use_id_embedding, **base)


def _rows(parts: tuple, idx: torch.Tensor) -> tuple:
    return tuple(p[idx] for p in parts)


def content_alignment_loss(model: Recommender) -> torch.Tensor:
    """Mean squared distance between warm items' content-only vectors and their full (ID-carrying) vectors, the latter fixed.

    DropoutNet/CLCRec spirit: the content path learns to put an item where the ID path would, on the same
    scale, so a cold item (content only) is scored like a warm item with the same content. Items without
    an ID (cold) or without content give no term; 0 for a model with no ID channel or no modality.
    """
    if model.id_emb is None or not model.spec.modalities:
        return torch.zeros((), device=model.features.device)
    vecs, mask = model.channels()
    warm = model.id_mask & model.feature_mask.any(1)
    full = model.fuse(vecs, mask)[0][warm].detach()
    content = model.content_table(vecs, mask)[warm]
    return nn.functional.mse_loss(content, full)


@torch.no_grad()
def cold_calibration(model: Recommender, X: torch.Tensor, Y: torch.Tensor, n_states: int = 4096, seed: int = 0,
                     events: torch.Tensor | None = None) -> float:
    """The score bias that puts an item scored from content alone at the *expected probability* of a warm item.

    A content-only score is trained (through ID dropout) towards the mean log-probability of the warm items
    with that content; an unseen item's expected probability is the mean of their probabilities, which is
    larger (Jensen), so cold items are under-scored. With r(u, i) = full score - content-only score of warm
    item i for user state u, the bias is mean_u log mean_i exp r(u, i) over up to ``n_states`` training
    states (a seeded sample of the targets' positions) and every warm item with content. No free parameter,
    nothing read from validation or test. 0 for a model without both an ID channel and content.
    """
    warm = model.id_mask & model.feature_mask.any(1)
    warm[0] = False
    if model.id_emb is None or not model.spec.modalities or not bool(warm.any()):
        return 0.0
    was = model.training
    model.eval()
    vecs, mask = model.channels()
    input_table, parts = model.tables_of(vecs, mask)
    content_parts = model.tables_of(*model.content_channels(vecs, mask))[1]
    pos = torch.nonzero(Y > 0)
    pick = torch.from_numpy(np.random.default_rng(seed).permutation(len(pos))[:n_states]).to(pos.device)
    pos = pos[pick]
    total = 0.0
    for start in range(0, len(pos), 512):
        p = pos[start:start + 512]
        ev = events[p[:, 0]] if events is not None else None
        h = model.user_states(X[p[:, 0]], input_table, ev)[torch.arange(len(p), device=p.device), p[:, 1]]
        r = model.score(h, _rows(parts, warm)) - model.score(h, _rows(content_parts, warm))
        total += float((torch.logsumexp(r.float(), 1) - np.log(r.shape[1])).sum())
    model.train(was)
    return total / max(len(pos), 1)


def train_windows(ds, cfg: TrainConfig):
    """``training_arrays`` of ``ds``'s train sequences as ``cfg`` cuts them, with kinds: ``(X, Y, X_kinds, Y_kinds)``."""
    return training_arrays(ds.train_sequences(), cfg.max_len, cfg.windows, cfg.window_stride,
                           kinds=ds.train_kind_sequences(ds.event_kinds))


def with_cold_calibration(model: Recommender, ds, cfg: TrainConfig) -> Recommender:
    """``model`` with ``cold_calibration``'s bias in its spec, as ``fit`` sets it under ``calibrate_cold``; weights unchanged.

    For a model trained without the bias: ``cfg`` is the config it was trained with (its artifact manifest's
    ``params``), so the same training windows and seed give the bias ``fit`` would have set. Returns ``model``.

    Example:
        >>> m = with_cold_calibration(load_model("model"), DatasetArtifact("dataset"), TrainConfig(**manifest["params"]))  # doctest: +SKIP
        >>> save_model(m, "model_cold_bias")                                                                       # doctest: +SKIP
    """
    X, Y, KX, _ = train_windows(ds, cfg)
    device = model.features.device
    events = torch.from_numpy(KX).to(device) if model.event_emb is not None else None
    bias = cold_calibration(model, torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device), seed=cfg.seed, events=events)
    model.spec = model.spec.model_copy(update={"cold_bias": bias})
    return model


def target_weights(kinds: list[str], cfg: TrainConfig) -> np.ndarray | None:
    """Loss weight [len(kinds) + 1] of a target by its kind id (0 = no kind), from ``event_weights`` and
    ``target_events``; None when every target weighs 1. Kinds the dataset does not have are an error."""
    named = set(cfg.event_weights) | set(cfg.target_events or [])
    unknown = sorted(named - set(kinds))
    if unknown:
        raise ValueError(f"event_weights/target_events name kinds {unknown} that no train event has; the dataset's kinds are {kinds}")
    if not cfg.event_weights and cfg.target_events is None:
        return None
    w = np.array([1.0] + [float(cfg.event_weights.get(k, 1.0)) for k in kinds], dtype=np.float32)
    if cfg.target_events is not None:
        w[0] = 0.0
        w[1:] *= np.array([k in cfg.target_events for k in kinds], dtype=np.float32)
    return w


def _loss(model: Recommender, X: torch.Tensor, Y: torch.Tensor, cfg: TrainConfig, train_items: torch.Tensor,
          train_item_list: torch.Tensor, events: torch.Tensor | None = None, weights: torch.Tensor | None = None,
          logit_offset: torch.Tensor | None = None) -> torch.Tensor:
    main = _next_item_loss(model, X, Y, cfg, train_items, train_item_list, events, weights, logit_offset)
    if cfg.content_align > 0:
        main = main + cfg.content_align * content_alignment_loss(model)
    return main


def _weighted_mean(losses: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    if w is None:
        return losses.mean()
    return (losses * w).sum() / w.sum().clamp_min(1e-12)


def _next_item_loss(model: Recommender, X: torch.Tensor, Y: torch.Tensor, cfg: TrainConfig, train_items: torch.Tensor,
                    train_item_list: torch.Tensor, events: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None, logit_offset: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of every target; ``weights`` [B, L] (per-kind loss weights) make it a weighted mean;
    ``logit_offset`` [N+1] is added to every item's logit in training only (``TrainConfig.logit_adjustment``)."""
    input_table, parts = model.item_tables(cfg.modality_dropout, cfg.id_dropout)
    states = model.user_states(X, input_table, events)
    valid = Y > 0
    h = states[valid]
    y = Y[valid]
    w = weights[valid] if weights is not None else None
    if cfg.loss == "full":
        logits = model.score(h, parts).float()
        if logit_offset is not None:
            logits = logits + logit_offset
        logits = logits.masked_fill(~train_items.unsqueeze(0), NEG)
        return _weighted_mean(nn.functional.cross_entropy(logits, y, reduction="none"), w)
    neg = train_item_list[torch.randint(len(train_item_list), (cfg.n_negatives,), device=y.device)]
    cand = torch.cat([y, neg])
    logits = model.score(h, _rows(parts, cand)).float()
    if logit_offset is not None:
        logits = logits + logit_offset[cand]
    same = (cand.unsqueeze(0) == y.unsqueeze(1))
    same[torch.arange(len(y)), torch.arange(len(y))] = False  # keep each row's own positive
    logits = logits.masked_fill(same, NEG)
    return _weighted_mean(nn.functional.cross_entropy(logits, torch.arange(len(y), device=y.device), reduction="none"), w)


def _subsample(cases, histories, n: int | None, seed: int):
    if n is None or len(cases) <= n:
        return cases, histories
    keep = np.sort(np.random.default_rng(seed).choice(len(cases), n, replace=False))
    return cases.iloc[keep].reset_index(drop=True), histories[keep]


def fit(model: Recommender, ds, cfg: TrainConfig, device: str) -> dict:
    """Train ``model`` in place on ``ds`` (a DatasetArtifact); returns the training record (curves, timings)."""
    kinds = ds.event_kinds
    X_np, Y_np, KX_np, KY_np = train_windows(ds, cfg)
    if len(X_np) == 0:
        raise ValueError(f"{ds.path}: no user has 2 or more train events; nothing to train on")
    tw = target_weights(kinds, cfg)
    W_np = tw[KY_np] * (Y_np > 0) if tw is not None else None
    if W_np is not None and not (W_np > 0).any():
        raise ValueError(f"target_events {cfg.target_events}: no train target has one of these kinds; nothing to train on")
    X_all = torch.from_numpy(X_np).to(device)
    Y_all = torch.from_numpy(Y_np).to(device)
    # kinds in the model's vocabulary (the dataset's, when it reads them)
    E_all = torch.from_numpy(KX_np).to(device) if model.event_emb is not None else None
    W_all = torch.from_numpy(W_np.astype(np.float32)).to(device) if W_np is not None else None
    train_items = model.id_mask.to(device) if model.spec.use_id_embedding else None
    if train_items is None:
        train_items = torch.zeros(model.n_items + 1, dtype=torch.bool, device=device)
        train_items[torch.unique(torch.cat([X_all.flatten(), Y_all.flatten()]))] = True
        train_items[0] = False
    train_item_list = torch.nonzero(train_items).flatten()
    logit_offset = None
    if cfg.logit_adjustment > 0:  # tau * log(times the item is a training target, at least 1): the counts the loss itself sees
        counts = torch.bincount(Y_all[Y_all > 0].flatten(), minlength=model.n_items + 1).float()
        logit_offset = cfg.logit_adjustment * torch.log(counts.clamp_min(1.0))
    valid_cases = _subsample(*ds.eval_cases("valid", cfg.max_len), cfg.max_valid_cases, cfg.seed)
    valid_exclude = ds.consumed_before(valid_cases[0])
    has_valid = len(valid_cases[0]) > 0

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    dev_type = "cuda" if str(device).startswith("cuda") else "cpu"
    scaler = torch.amp.GradScaler(dev_type, enabled=cfg.amp == "fp16" and dev_type == "cuda")
    gen = np.random.default_rng(cfg.seed)
    record: dict = {"loss": [], "valid_ndcg@10": [], "valid_recall@10": [], "epoch_seconds": []}
    best, best_state, bad, sequences, train_seconds = -1.0, None, 0, 0, 0.0
    t_start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.from_numpy(gen.permutation(len(X_all))).to(device)
        bar = progress(range(0, len(perm), cfg.batch_size), desc=f"train {cfg.model} epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        t0 = time.perf_counter()
        total, steps = 0.0, 0
        for start in bar:
            b = perm[start:start + cfg.batch_size]
            with torch.autocast(dev_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = _loss(model, X_all[b], Y_all[b], cfg, train_items, train_item_list,
                             None if E_all is None else E_all[b], None if W_all is None else W_all[b], logit_offset)
            if not torch.isfinite(loss.detach()):  # diverged: every later step would be nan too
                raise TrainingError(f"training diverged: loss is {float(loss.detach())} at epoch {epoch + 1}, step {steps + 1} "
                                    f"(lr={cfg.lr:g}); lower lr (--lr / --set lr=...) or use amp=none. No model written.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach())
            steps += 1
            sequences += len(b)
            # refresh=False: the bar shows the postfix at its next interval; a forced refresh logs one line per step
            # when stderr is not a terminal (kfp.local, CI), which flooded the logs
            bar.set_postfix(loss=f"{total / steps:.4f}", seq_s=f"{sequences / max(train_seconds + time.perf_counter() - t0, 1e-9):.0f}",
                            refresh=False)
        dt = time.perf_counter() - t0
        train_seconds += dt
        record["loss"].append(total / max(steps, 1))
        record["epoch_seconds"].append(dt)
        msg = f"epoch {epoch + 1}: loss {record['loss'][-1]:.4f}, {len(X_all) / dt:.0f} seq/s"
        if has_valid and ((epoch + 1) % cfg.valid_every == 0 or epoch + 1 == cfg.epochs):
            model.eval()
            res = evaluate(model, ds, "valid", ks=(10,), k_max=10, max_len=cfg.max_len, cases=valid_cases, exclude=valid_exclude)
            ndcg = res.summary["overall"]["ndcg@10"]
            record["valid_ndcg@10"].append(ndcg)
            record["valid_recall@10"].append(res.summary["overall"]["recall@10"])
            msg += f", valid NDCG@10 {ndcg:.4f}"
            if ndcg > best:
                best, bad, best_state = ndcg, 0, copy.deepcopy(model.state_dict())
                record["best_epoch"] = epoch + 1
                record["wall_seconds_to_best"] = time.perf_counter() - t_start  # training + validation up to the kept epoch
            else:
                bad += 1
        log.info(msg)
        if has_valid and bad >= cfg.patience:
            log.info("early stop: no valid NDCG@10 gain for %d evaluations (best %.4f at epoch %d)", bad, best, record.get("best_epoch", 0))
            break
        if cfg.max_train_seconds is not None and time.perf_counter() - t_start > cfg.max_train_seconds:
            log.info("stopping: max_train_seconds %.0f reached", cfg.max_train_seconds)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if cfg.calibrate_cold:
        model.spec = model.spec.model_copy(update={"cold_bias": cold_calibration(model, X_all, Y_all, seed=cfg.seed, events=E_all)})
        log.info("cold calibration: items scored from content alone get %+.4f", model.spec.cold_bias)
    record.update(epochs_run=len(record["loss"]), train_seconds=train_seconds, fit_wall_seconds=time.perf_counter() - t_start,
                  fit_cpu_seconds=time.process_time() - cpu_start, sequences_seen=sequences,
                  sequences_per_second=sequences / max(train_seconds, 1e-9), n_train_sequences=int(len(X_all)),
                  n_train_targets=int((Y_all > 0).sum()), windows=cfg.windows,
                  n_weighted_targets=int((W_all > 0).sum()) if W_all is not None else None, event_kinds=model.spec.event_kinds,
                  best_valid_ndcg10=best if best >= 0 else None, cold_bias=model.spec.cold_bias)
    return record


def _quality_report(model, ds, cfg: TrainConfig, summary: dict) -> tuple[str, str]:
    """The model's test report (``report.md``/``report.html``): metrics per segment and three explained recommendations."""
    from fusionrec.explain import model_examples, quality_report

    if not isinstance(model, Recommender):
        examples, why = None, "a popularity ranking has no history to explain"
    elif model.spec.event_kinds:
        examples, why = None, "the model reads behaviour kinds, which explanations do not cover yet"
    else:
        examples, why = model_examples(model, ds), "no warm test case with 3 or more history items"
    ks = [k for k in cfg.eval_ks if k <= 20] or cfg.eval_ks[:1]
    return quality_report(cfg.model if cfg.model != "fused" else f"fused:{cfg.fusion}", summary, examples, ds, ks, why)


def run(dataset: str | os.PathLike, aligned: str | os.PathLike | None, out: str | os.PathLike, cfg: TrainConfig | None = None,
        force: bool = False) -> Path:
    """Train ``cfg.model`` on the dataset artifact (with the aligned artifact for content models) and write the model artifact."""
    cfg = cfg or TrainConfig()
    out = Path(out)
    check_output(out, "model", [dataset, aligned], force)
    ds = DatasetArtifact(dataset)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        counts = ds.train_counts
        if aligned is not None and cfg.model not in ("id", "popularity"):
            mods, feats, fmask = load_aligned(aligned)
            if feats.shape[0] != ds.n_items + 1:
                raise ValueError(f"aligned artifact {aligned} has {feats.shape[0] - 1} items, dataset {dataset} has {ds.n_items}")
        else:
            mods, feats, fmask = [], np.zeros((ds.n_items + 1, 0, 0), np.float32), np.zeros((ds.n_items + 1, 0), bool)
        if cfg.use_events and not ds.event_kinds and cfg.model != "popularity":
            raise ValueError(f"use_events: the train events of {dataset} have no 'event' kinds; ingest a log with an event column")
        spec = build_spec(cfg, ds.n_items, mods, feats.shape[2], ds.event_kinds)
        t0 = time.perf_counter()
        if spec.kind == "popularity":
            model = PopularityRanker(spec, torch.from_numpy(counts.astype(np.float32)))
            record = {"train_seconds": time.perf_counter() - t0, "sequences_per_second": None}
        else:
            keep = [mods.index(m) for m in spec.modalities]
            model = Recommender(spec, torch.from_numpy(feats[:, keep]), torch.from_numpy(fmask[:, keep]), torch.from_numpy(counts > 0),
                                torch.from_numpy(counts))
            model.to(device)
            log.info("training %s (%s) on %s: %d params", cfg.model, model.describe(), device, sum(p.numel() for p in model.parameters()))
            record = fit(model, ds, cfg, device)
            log.info("%s: %.0f sequences/s, %.1fs training", cfg.model, record["sequences_per_second"], record["train_seconds"])
        test = evaluate(model, ds, "test", ks=cfg.eval_ks, k_max=cfg.eval_k, max_len=cfg.max_len)
        model = model.cpu()
        report = _quality_report(model, ds, cfg, test.summary)
        with artifact_dir(out, "model", [dataset, aligned], force) as tmp:
            save_model(model, tmp, {"train": cfg.model_dump(mode="json"), "model": cfg.model, "n_items": ds.n_items,
                                    "modalities": spec.modalities, "fusion": spec.fusion})
            atomic_write_json(tmp / "metrics.json", {"model": cfg.model, "fusion": spec.fusion, "modalities": spec.modalities,
                                                     "training": record, "test": test.summary})
            save_parquet(test.per_case, tmp / "per_case.parquet")
            (tmp / "report.md").write_text(report[0], encoding="utf-8")
            (tmp / "report.html").write_text(report[1], encoding="utf-8")
            inputs = {"dataset": Path(dataset)}
            if aligned is not None:
                inputs["aligned"] = Path(aligned)
            write_manifest(tmp, step="train", kind="model", params=cfg, inputs=inputs, model=cfg.model, n_items=ds.n_items)
    finally:
        torch.use_deterministic_algorithms(det)
    return out
