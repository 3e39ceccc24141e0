"""The sequential multimodal recommender, its ONNX-ready serving module, and load/save.

An item is a set of *channels*: its aligned modality vectors (frozen buffers, each passed
through a learned Linear to the model size) and optionally a learned item-ID embedding. A
fusion module turns the channels into the item vector; a causal Transformer over the history
of item vectors gives the user vector; scores are dot products with the whole catalog.
Items with no training interactions (cold start) have no ID channel, so they are scored
from content alone (modality/ID dropout in training teaches the model to do that).

Example:
    >>> model = load_model("artifacts/model")                         # doctest: +SKIP
    >>> idx, score = model.topk(np.array([[0, 0, 3, 17]]), k=10)      # doctest: +SKIP
    >>> torch.onnx.export(model.serving_module(100), (torch.zeros(1, 50, dtype=torch.long),), "m.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from fusionrec.artifacts import atomic_write_json, read_json
from fusionrec.device import pick_device
from fusionrec.models.fusion import FUSIONS, UserGate, make_fusion
from fusionrec.models.transformer import SequenceEncoder
from fusionrec.ranking import pad_events, pad_histories

EXCLUDED = -1.0e9  # score given to padding and history items (finite: exporters and ORT stay NaN-free)
UNSCORABLE = -1.0e8  # score of items with no channel at all (e.g. cold items in an ID-only model)


class Architecture(BaseModel):
    """The model's hyperparameters, declared once: ``TrainConfig`` sets them, ``ModelSpec`` records them."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    fusion: str = "attention"
    use_id_embedding: bool = True
    dim: int = Field(64, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    max_len: int = Field(50, ge=1)
    """History length L: the model reads the most recent L items of a history."""
    dropout: float = Field(0.2, ge=0, lt=1)
    adapter: Literal["linear", "mlp"] = "linear"
    """Modality vector -> model size: one Linear, or Linear-GELU-Linear."""
    whiten: bool = False
    """PCA-whiten each frozen modality (over the items that have it) before its adapter (UniSRec-style)."""
    unknown_history: Literal["drop", "zero"] = "drop"
    """History items with no channel (cold items in an ID-only model): left out of the history it reads, or read as zero vectors."""
    use_events: bool = False
    """Read behaviour kinds (the ``event`` column: view, purchase, ...): a learned embedding per kind is added
    to each history position (kinds unknown at serving time read as a zero vector)."""
    id_count_gate: bool = False
    """Let the item-side fusion weigh the ID channel by how often training saw the item: a learned bias per
    log2 bucket of the item's train count is added to the ID channel's fusion logit (attention and weighted
    fusion). Well-trained items can then lean on their ID vector and rarely seen ones on their content."""

    @field_validator("fusion")
    @classmethod
    def _fusion(cls, v: str) -> str:
        if v not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got '{v}'")
        return v

    @model_validator(mode="after")
    def _count_gate_needs_a_logit(self) -> "Architecture":
        if self.id_count_gate and self.fusion == "concat":
            raise ValueError("id_count_gate biases a fusion logit: use fusion attention, weighted or user_gate, not concat")
        return self


class ModelSpec(Architecture):
    """Everything needed to rebuild a model's modules (saved as ``config.json["spec"]``)."""

    kind: Literal["sequential", "popularity"] = "sequential"
    n_items: int
    modalities: list[str] = []
    aligned_dim: int = 0
    event_kinds: list[str] = []
    """The behaviour kinds the model reads (kind id = 1-based index; 0 = padding/unknown); [] = it reads none."""
    cold_bias: float = 0.0
    """Added to the score of every item scored from content alone (no ID vector: cold and added items) of a model
    with the ID channel; set after training by ``train.calibrate_cold`` (``fusionrec.train.cold_calibration``), 0 = none."""

    @property
    def channels(self) -> int:
        return len(self.modalities) + int(self.use_id_embedding)


def _prepare_exclude(exclude: np.ndarray | None, batch: int, n_items: int) -> torch.Tensor:
    """Exclusion lists int64 [B, E] (-1 padded) as a tensor; an empty [B, 1] of -1 when none is given."""
    if exclude is None:
        return torch.full((batch, 1), -1, dtype=torch.long)
    e = np.asarray(exclude, dtype=np.int64)
    if e.ndim != 2 or e.shape[0] != batch:
        raise ValueError(f"exclude must be int64 [batch={batch}, E] padded with -1, got shape {e.shape}")
    if e.size and (e.min() < -1 or e.max() > n_items):
        raise ValueError(f"exclude holds item_idx outside -1..{n_items}")
    return torch.from_numpy(np.ascontiguousarray(e if e.shape[1] else np.full((batch, 1), -1, np.int64)))


def exclude_items(scores: torch.Tensor, history: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """Scores with the history's items and the exclusion list's items (-1 = padding) set to ``EXCLUDED``.

    -1 padding is mapped to index 0, the padding item, which is excluded anyway; written with
    ``scatter`` and ``clamp`` only, so both ONNX exporters handle it.
    """
    scores = scores.scatter(1, history, torch.full(history.shape, EXCLUDED, dtype=scores.dtype, device=scores.device))
    if exclude is not None:
        ex = exclude.clamp(min=0)
        scores = scores.scatter(1, ex, torch.full(ex.shape, EXCLUDED, dtype=scores.dtype, device=scores.device))
    return scores


def drop_unknown(history: torch.Tensor, known: torch.Tensor, events: torch.Tensor | None = None):
    """``history`` [B, L] (left-padded) with the items ``known`` [N+1] marks False left out, the rest shifted right.

    The fair input of a model that has no vector for some items (an ID-only model and the cold items): a
    history of [a, cold, b] is read as [a, b], not as [a, <zero vector>, b]. Written with cumsum, where and
    scatter only (no sort), so both ONNX exporters and Triton run it. With ``events`` (kind ids parallel to
    ``history``) returns ``(history, events)``, both moved the same way.
    """
    keep = known[history]  # padding (0) is never known
    L = history.shape[1]
    n_keep = keep.long().sum(1, keepdim=True)
    pos = torch.cumsum(keep.long(), 1) - 1 + (L - n_keep)  # right-aligned slot of every kept item
    # a dropped item writes its 0 into column 0, which is padding whenever anything was dropped
    index = torch.where(keep, pos, torch.zeros_like(pos))

    def move(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x).scatter(1, index, torch.where(keep, x, torch.zeros_like(x)))

    return move(history) if events is None else (move(history), move(events))


def whitening(x: np.ndarray | torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], matrix [D, D]) of the PCA whitening of rows ``x`` [n, D]: ``(x - mean) @ matrix`` has identity covariance."""
    x = torch.as_tensor(x, dtype=torch.float64)
    mean = x.mean(0)
    cov = torch.cov((x - mean).t()) if len(x) > 1 else torch.eye(x.shape[1], dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(cov)
    return mean.float(), (vecs / torch.sqrt(vals.clamp_min(0) + eps)).float()


COUNT_BUCKETS = 12  # buckets of an item's train count, floor(log2(count + 1)): 0 | 1-2 | 3-6 | 7-14 | ... | 2047+


def count_buckets(train_counts: torch.Tensor) -> torch.Tensor:
    """Bucket of each item's train count for ``id_count_gate``: ``floor(log2(count + 1))``, capped at ``COUNT_BUCKETS - 1``.

    >>> count_buckets(torch.tensor([0, 1, 2, 3, 4, 50, 10**6])).tolist()
    [0, 1, 1, 2, 2, 5, 11]
    """
    return torch.floor(torch.log2(train_counts.double().clamp_min(0) + 1)).long().clamp(0, COUNT_BUCKETS - 1)


def _prepare_histories(histories: np.ndarray, max_len: int) -> torch.Tensor:
    return torch.from_numpy(pad_histories(histories, max_len))


class Recommender(nn.Module):
    """Fused item vectors + causal Transformer user model; a ``fusionrec.ranking.TopKRanker``."""

    def __init__(self, spec: ModelSpec, features: torch.Tensor | None = None, feature_mask: torch.Tensor | None = None,
                 id_mask: torch.Tensor | None = None, train_counts: torch.Tensor | None = None):
        """``train_counts`` [n_items + 1]: each item's train events, read by ``spec.id_count_gate`` only (a saved model
        carries their buckets; a new item counts 0)."""
        super().__init__()
        self.spec = spec
        n, M, D = spec.n_items + 1, len(spec.modalities), spec.aligned_dim
        if features is None:
            features = torch.zeros(n, M, D)
            feature_mask = torch.zeros(n, M, dtype=torch.bool)
        if id_mask is None:
            id_mask = torch.zeros(n, dtype=torch.bool)
        if tuple(features.shape) != (n, M, D):
            raise ValueError(f"features shape {tuple(features.shape)} != (n_items+1, modalities, aligned_dim) = {(n, M, D)}")
        self.register_buffer("features", features.float().contiguous())
        self.register_buffer("feature_mask", feature_mask.bool().contiguous())
        self.register_buffer("id_mask", id_mask.bool().contiguous())
        d = spec.dim
        if spec.whiten:  # fitted on the items that have the modality; saved with the model like any buffer
            mean, mat = torch.zeros(M, D), torch.zeros(M, D, D)
            for m in range(M):
                rows = self.features[self.feature_mask[:, m], m]
                if len(rows) > D:
                    mean[m], mat[m] = whitening(rows)
                else:
                    mat[m] = torch.eye(D)
            self.register_buffer("white_mean", mean)
            self.register_buffer("white_matrix", mat)
        if spec.adapter == "mlp":
            self.proj = nn.ModuleList([nn.Sequential(nn.Linear(D, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in spec.modalities])
        else:
            self.proj = nn.ModuleList([nn.Linear(D, d) for _ in spec.modalities])
        self.id_emb = nn.Embedding(n, d) if spec.use_id_embedding else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.1)
        if spec.id_count_gate and self.id_emb is not None:
            counts = torch.zeros(n) if train_counts is None else torch.as_tensor(train_counts)
            if tuple(counts.shape) != (n,):
                raise ValueError(f"train_counts shape {tuple(counts.shape)} != (n_items+1,) = {(n,)}")
            self.register_buffer("count_bucket", count_buckets(counts).contiguous())
            self.id_count_bias = nn.Parameter(torch.zeros(COUNT_BUCKETS))
        if spec.channels == 0:
            raise ValueError("a model needs at least one modality or the item-ID embedding")
        self.fusion = make_fusion(spec.fusion, spec.channels, d)
        self.user_gate = UserGate(spec.channels, d) if spec.fusion == "user_gate" else None
        self.encoder = SequenceEncoder(d, spec.layers, spec.heads, spec.max_len, spec.dropout)
        self.event_emb = nn.Embedding(len(spec.event_kinds) + 1, d, padding_idx=0) if spec.event_kinds else None
        if self.event_emb is not None:
            nn.init.normal_(self.event_emb.weight, std=0.1)
            with torch.no_grad():
                self.event_emb.weight[0].zero_()  # padding / unknown kind: adds nothing

    k = None  # the TopKRanker protocol: ranks the whole catalog (no exported K)

    # -- item side ------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.spec.n_items

    @property
    def max_len(self) -> int:
        """History length L (``spec.max_len``), as the TopKRanker protocol names it."""
        return self.spec.max_len

    @property
    def event_kinds(self) -> list[str]:
        """The behaviour kinds it reads (``fusionrec.ranking.event_vocabulary``); [] for none."""
        return list(self.spec.event_kinds)

    def channels(self, drop_modality: float = 0.0, drop_id: float = 0.0, generator: torch.Generator | None = None):
        """All items' channel vectors [N+1, C, d] and presence mask [N+1, C] (optionally with channel dropout)."""
        vecs, masks = [], []
        for m, proj in enumerate(self.proj):
            x = self.features[:, m]
            if self.spec.whiten:
                x = (x - self.white_mean[m]) @ self.white_matrix[m]
            vecs.append(proj(x))
            masks.append(self.feature_mask[:, m])
        if self.id_emb is not None:
            vecs.append(self.id_emb.weight)
            masks.append(self.id_mask)
        vecs_t = torch.stack(vecs, 1)
        mask = torch.stack(masks, 1)
        if drop_modality > 0 or drop_id > 0:
            p = torch.full(mask.shape, float(drop_modality), device=mask.device)
            if self.id_emb is not None:
                p[:, -1] = float(drop_id)
            keep = torch.rand(mask.shape, generator=generator, device=mask.device) >= p
            dropped = mask & keep
            # never drop every channel of an item that had one
            mask = torch.where(dropped.any(1, keepdim=True), dropped, mask)
        return vecs_t * mask.unsqueeze(-1).to(vecs_t.dtype), mask

    def item_tables(self, drop_modality: float = 0.0, drop_id: float = 0.0, generator: torch.Generator | None = None):
        """(input table [N+1, d] fed to the sequence model, scoring parts) for the whole catalog."""
        return self.tables_of(*self.channels(drop_modality, drop_id, generator))

    def fuse(self, vecs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The item-side fusion of ``vecs`` [N+1, C, d] / ``mask`` [N+1, C] -> (fused [N+1, d], weights [N+1, C]);
        with ``id_count_gate`` the ID channel's logit gets its train-count bucket's learned bias."""
        if not hasattr(self, "id_count_bias"):
            return self.fusion(vecs, mask)
        bias = torch.zeros(mask.shape, dtype=vecs.dtype, device=vecs.device)
        bias[:, -1] = self.id_count_bias[self.count_bucket]
        return self.fusion(vecs, mask, bias)

    def tables_of(self, vecs: torch.Tensor, mask: torch.Tensor):
        """``item_tables`` for given channels ``vecs`` [N+1, C, d] and ``mask`` [N+1, C] (e.g. without the ID channel)."""
        fused, _ = self.fuse(vecs, mask)
        if self.user_gate is None:
            return fused, (fused,)
        return fused, (vecs, mask.to(vecs.dtype))

    def content_channels(self, vecs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The channels with the ID channel masked out: every item as a cold item (content alone) is seen."""
        if self.id_emb is None:
            return vecs, mask
        content_mask = mask.clone()
        content_mask[:, -1] = False
        return vecs * content_mask.unsqueeze(-1).to(vecs.dtype), content_mask

    def content_table(self, vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Item vectors [N+1, d] fused from the modality channels alone (ID channel masked): how a cold item is seen."""
        return self.fuse(*self.content_channels(vecs, mask))[0]

    def fusion_weights(self) -> torch.Tensor:
        """Per-item channel weights [N+1, C] of the item-side fusion (0 for missing channels)."""
        vecs, mask = self.channels()
        return self.fuse(vecs, mask)[1]

    def scorable(self) -> torch.Tensor:
        """[N+1] bool: items with at least one channel (padding row 0 excluded)."""
        ok = self.id_mask.clone() if self.id_emb is not None else torch.zeros_like(self.id_mask)
        if len(self.spec.modalities):
            ok = ok | self.feature_mask.any(1)
        ok[0] = False
        return ok

    # -- user side ------------------------------------------------------------------------
    def user_states(self, history: torch.Tensor, input_table: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """States [B, L, d] for a left-padded history [B, L] (and its kind ids [B, L], for a model that reads kinds)."""
        x = nn.functional.embedding(history, input_table)
        if self.event_emb is not None and events is not None:
            x = x + self.event_emb(events)
        return self.encoder(x, history > 0)

    def score(self, h: torch.Tensor, parts: tuple) -> torch.Tensor:
        """Scores [P, N+1] of user states ``h`` [P, d] against the catalog."""
        if self.user_gate is None:
            return torch.matmul(h, parts[0].t())
        vecs, maskf = parts
        return self.user_gate.scores(h, vecs, maskf)

    # -- ranking API ----------------------------------------------------------------------
    def serving_module(self, k: int) -> nn.Module:
        """A pure-tensor module ``history int64 [B, L] -> (item_idx int64 [B, k], score float32 [B, k])``.

        The item table is precomputed and baked in as buffers; ready for ``torch.onnx.export``.
        """
        return ServingModule(self, k)

    @torch.no_grad()
    def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None,
             events: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per history (history items, ``exclude`` items and padding excluded); the TopKRanker protocol.

        ``events``: kind ids parallel to ``histories`` (1-based into ``event_kinds``; 0 = unknown), read by a
        model trained with ``use_events``; ignored by others.
        """
        k = min(int(k), self.n_items)
        module = self.serving_module(k)
        h = _prepare_histories(histories, self.spec.max_len).to(module.input_table.device)
        ex = _prepare_exclude(exclude, len(h), self.n_items).to(h.device) if exclude is not None else None
        ev = None
        if events is not None and self.event_emb is not None:
            ev = torch.from_numpy(pad_events(histories, events, self.spec.max_len)).to(h.device)
            if ev.min() < 0 or ev.max() > len(self.spec.event_kinds):
                raise ValueError(f"events hold kind ids outside 0..{len(self.spec.event_kinds)}")
        idx, score = module(h, ex, ev)
        return idx.cpu().numpy().astype(np.int64), score.cpu().numpy().astype(np.float32)

    def with_new_items(self, features: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None) -> "Recommender":
        """A copy with m new (cold) items appended as item_idx n_items+1..n_items+m, no retraining.

        ``features[modality]`` is the *aligned* [m, D] array (see ``fusionrec.models.align.project``),
        ``masks[modality]`` [m] bool (default: all present). Modalities not given are missing.
        """
        unknown = set(features) - set(self.spec.modalities)
        if unknown:
            raise ValueError(f"model has no modality {sorted(unknown)}; it was trained with {self.spec.modalities}")
        sizes = {len(v) for v in features.values()}
        if len(sizes) > 1:
            raise ValueError(f"new-item feature arrays disagree on the number of items: {sorted(sizes)}")
        m = sizes.pop() if sizes else 0
        D = self.spec.aligned_dim
        feats = torch.zeros(m, len(self.spec.modalities), D)
        fmask = torch.zeros(m, len(self.spec.modalities), dtype=torch.bool)
        for j, mod in enumerate(self.spec.modalities):
            if mod not in features:
                continue
            arr = np.asarray(features[mod], dtype=np.float32)
            if arr.shape != (m, D):
                raise ValueError(f"new-item features for '{mod}' must be [{m}, {D}] (aligned), got {arr.shape}")
            mk = np.ones(m, bool) if masks is None or mod not in masks else np.asarray(masks[mod], bool)
            feats[:, j] = torch.from_numpy(arr) * torch.from_numpy(mk).float().unsqueeze(1)
            fmask[:, j] = torch.from_numpy(mk)
        spec = self.spec.model_copy(update={"n_items": self.n_items + m})
        new = Recommender(spec, torch.cat([self.features.cpu(), feats]), torch.cat([self.feature_mask.cpu(), fmask]),
                          torch.cat([self.id_mask.cpu(), torch.zeros(m, dtype=torch.bool)]))
        per_item = ("features", "feature_mask", "id_mask", "id_emb.weight", "count_bucket")
        state = {k: v for k, v in self.state_dict().items() if k not in per_item}
        new.load_state_dict(state, strict=False)
        if hasattr(self, "count_bucket"):  # the new items were never trained on: bucket 0
            new.count_bucket[: self.n_items + 1] = self.count_bucket.cpu()
        if self.id_emb is not None:
            with torch.no_grad():
                new.id_emb.weight.zero_()
                new.id_emb.weight[: self.n_items + 1] = self.id_emb.weight.detach().cpu()
        return new.eval()

    def describe(self) -> str:
        s = self.spec
        return f"Recommender(items={s.n_items}, modalities={s.modalities}, id={s.use_id_embedding}, fusion={s.fusion}, dim={s.dim})"


class ServingModule(nn.Module):
    """Exportable inference graph of a ``Recommender`` with the item table baked in."""

    def __init__(self, model: Recommender, k: int):
        super().__init__()
        model_was_training = model.training
        model.eval()
        with torch.no_grad():
            input_table, parts = model.item_tables()
            known = model.scorable()
            penalty = torch.where(known, 0.0, UNSCORABLE)
            if model.id_emb is not None and model.spec.cold_bias:
                penalty = penalty + model.spec.cold_bias * (known & ~model.id_mask).to(penalty.dtype)
            penalty[0] = EXCLUDED
        model.train(model_was_training)
        self.k = int(k)
        # static: the graph drops unknown history items only when the model has any (an ID-only model with cold items)
        self.drop_unknown = model.spec.unknown_history == "drop" and bool((~known[1:]).any())
        if self.drop_unknown:
            self.register_buffer("known", known.detach().clone())
        self.register_buffer("input_table", input_table.detach().clone())
        self.register_buffer("penalty", penalty.detach().clone())
        self.encoder = copy.deepcopy(model.encoder).eval()
        self.n_kinds = len(model.spec.event_kinds)
        if model.event_emb is not None:
            self.register_buffer("event_table", model.event_emb.weight.detach().clone())
        self.user_gate = copy.deepcopy(model.user_gate).eval() if model.user_gate is not None else None
        if self.user_gate is None:
            self.register_buffer("item_table", parts[0].detach().clone())
        else:
            self.register_buffer("channel_table", parts[0].detach().clone())
            self.register_buffer("channel_mask", parts[1].detach().clone())
        self.requires_grad_(False)

    def forward(self, history: torch.Tensor, exclude: torch.Tensor | None = None,
                events: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        use_events = self.n_kinds > 0 and events is not None
        if use_events:  # a kind id outside the vocabulary reads as unknown (0), the row still answers
            events = torch.where((events > 0) & (events <= self.n_kinds), events, torch.zeros_like(events))
        if self.drop_unknown and use_events:
            read, events = drop_unknown(history, self.known, events)
        else:
            read = drop_unknown(history, self.known) if self.drop_unknown else history
        x = nn.functional.embedding(read, self.input_table)
        if use_events:
            x = x + nn.functional.embedding(events, self.event_table)
        h = self.encoder(x, read > 0)[:, -1]
        if self.user_gate is None:
            scores = torch.matmul(h, self.item_table.t())
        else:
            scores = self.user_gate.scores(h, self.channel_table, self.channel_mask)
        scores = scores + self.penalty.unsqueeze(0)
        scores = exclude_items(scores, history, exclude)
        score, idx = torch.topk(scores, self.k, dim=1)
        return idx, score


# -- popularity ---------------------------------------------------------------------------
class PopularityServing(nn.Module):
    def __init__(self, scores: torch.Tensor, k: int):
        super().__init__()
        self.k = int(k)
        self.register_buffer("scores", scores.detach().clone().float())

    def forward(self, history: torch.Tensor, exclude: torch.Tensor | None = None,
                events: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores.unsqueeze(0).expand(history.shape[0], -1)
        scores = exclude_items(scores, history, exclude)
        score, idx = torch.topk(scores, self.k, dim=1)
        return idx, score


class PopularityRanker(nn.Module):
    """Most-popular items (train interaction counts), history excluded; same API as ``Recommender``."""

    def __init__(self, spec: ModelSpec, counts: torch.Tensor | None = None):
        super().__init__()
        self.spec = spec
        if counts is None:
            counts = torch.zeros(spec.n_items + 1)
        self.register_buffer("counts", counts.float())

    k = None  # the TopKRanker protocol: ranks the whole catalog (no exported K)

    @property
    def n_items(self) -> int:
        return self.spec.n_items

    @property
    def max_len(self) -> int:
        """History length L (``spec.max_len``), as the TopKRanker protocol names it."""
        return self.spec.max_len

    def _scores(self) -> torch.Tensor:
        """Distinct scores in (0, 1] ordered by (count desc, item_idx asc): no ties, so every backend agrees."""
        n = self.counts.shape[0]
        order = np.lexsort((np.arange(n), -self.counts.cpu().numpy()))  # most popular first, ties by item_idx
        s = torch.empty(n)
        s[torch.from_numpy(order)] = torch.arange(n, 0, -1, dtype=torch.float32) / n
        s[0] = EXCLUDED
        return s

    def serving_module(self, k: int) -> nn.Module:
        return PopularityServing(self._scores(), k)

    @torch.no_grad()
    def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), self.n_items)
        h = _prepare_histories(histories, self.spec.max_len)
        ex = _prepare_exclude(exclude, len(h), self.n_items) if exclude is not None else None
        idx, score = self.serving_module(k)(h, ex)
        return idx.numpy().astype(np.int64), score.numpy().astype(np.float32)

    def with_new_items(self, features: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None) -> "PopularityRanker":
        sizes = {len(v) for v in features.values()}
        if len(sizes) > 1:
            raise ValueError(f"new-item feature arrays disagree on the number of items: {sorted(sizes)}")
        m = sizes.pop() if sizes else 0
        spec = self.spec.model_copy(update={"n_items": self.n_items + m})
        return PopularityRanker(spec, torch.cat([self.counts, torch.zeros(m)])).eval()

    def describe(self) -> str:
        return f"PopularityRanker(items={self.n_items})"


# -- persistence --------------------------------------------------------------------------
AnyModel = Recommender | PopularityRanker


def save_model(model: AnyModel, folder: str | os.PathLike, extra_config: dict | None = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` (spec + extra) into ``folder`` (no pickle)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    atomic_write_json(folder / "config.json", {"spec": model.spec.model_dump(mode="json"), **(extra_config or {})})


def load_model(path: str | os.PathLike, device: str = "cpu") -> AnyModel:
    """Load a model artifact (or a folder with ``model.safetensors`` + ``config.json``), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name} not found: is {path} a model artifact written by `fusionrec train`?")
    spec = ModelSpec.model_validate(read_json(path / "config.json")["spec"])
    state = load_file(str(path / "model.safetensors"))
    if spec.kind == "popularity":
        model: AnyModel = PopularityRanker(spec, state["counts"])
    else:
        model = Recommender(spec, state["features"], state["feature_mask"], state["id_mask"])
        model.load_state_dict(state, strict=True)

    return model.to(pick_device(device)).eval()
