"""Explanations of recommendations: which modality channels carry an item's score, and which history items drove it.

For every recommended item of a history:

- **modality contributions**: the item's fusion weights (the gate over the channels it has:
  its aligned modalities and, for items seen in training, its ID embedding) and, where the fusion
  allows an exact decomposition, the share of the score each channel carries. With the
  ``attention`` and ``weighted`` fusions the item vector is ``sum_c w_c v_c``, so the score
  ``<u, sum_c w_c v_c>`` splits exactly into ``w_c <u, v_c>``; ``user_gate`` scores are already a
  weighted sum over channels, so they split the same way. ``concat`` passes the channels through
  an MLP: no exact split, so only the weights are given (``channel_scores`` is None).
- **history items**: the *leave-one-out score drop*: the item's score from the full history
  minus its score when that one history item is removed (the rest re-padded), computed exactly by
  re-scoring. It is faithful by construction (it *is* the effect of removing the item), whereas
  attention weights (see :func:`attention_rollout`, kept as the contrast the benchmark measures)
  say where the Transformer looked, not what changed the score. It costs one forward pass per
  history item, batched.

The served explain model (``<name>_explain``) runs :class:`ExplainModule`: the history and the
recommended items in, drops and channel contributions out, so Triton computes the same numbers.

Example:
    >>> model = load_model("artifacts/model")                                   # doctest: +SKIP
    >>> idx, _ = model.topk(h, 5); ex = explain(model, h, idx)                  # doctest: +SKIP
    >>> print(format_explanation(ex[0][0], item_ids, titles))                   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fusionrec.models.recommender import Recommender, _prepare_histories

ID_CHANNEL = "id"


@dataclass
class Explanation:
    """Why ``item_idx`` was recommended for one history."""

    item_idx: int
    score: float
    channels: list[str]
    fusion_weights: list[float]
    """The item's fusion weights per channel (0 = the item lacks that channel)."""
    channel_scores: list[float] | None
    """Score carried by each channel (sums to ``score``); None where the fusion has no exact split."""
    history: list[tuple[int, float]] = field(default_factory=list)
    """(history item_idx, score drop when it is removed), largest drop first."""

    def to_dict(self) -> dict:
        return asdict(self)


def channel_names(model: Recommender) -> list[str]:
    return list(model.spec.modalities) + ([ID_CHANNEL] if model.spec.use_id_embedding else [])


class ExplainModule(nn.Module):
    """``(history int64 [B, L], items int64 [B, k]) -> (score [B, k], drop [B, L, k], weight [B, k, C], contrib [B, k, C])``.

    ``drop[b, j, i]`` = score of item i from the full history minus its score without history
    position j (0 at padding positions); ``contrib`` is the per-channel split of the score (zeros
    for ``concat``, which has none). Pure tensors, so it exports to ONNX like the ranker.
    """

    def __init__(self, model: Recommender):
        super().__init__()
        was = model.training
        model.eval()
        with torch.no_grad():
            vecs, mask = model.channels()
            fused, weights = model.fuse(vecs, mask)
        model.train(was)
        import copy

        self.L = int(model.spec.max_len)
        self.fusion = model.spec.fusion
        self.register_buffer("input_table", fused.detach().clone())
        self.register_buffer("channel_vecs", vecs.detach().clone())  # [N+1, C, d]
        self.register_buffer("channel_mask", mask.float().detach().clone())
        self.register_buffer("weights", weights.detach().clone())  # [N+1, C]
        self.encoder = copy.deepcopy(model.encoder).eval()
        self.user_gate = copy.deepcopy(model.user_gate).eval() if model.user_gate is not None else None
        self.register_buffer("item_table", fused.detach().clone())
        self.requires_grad_(False)

    def _state(self, history: torch.Tensor) -> torch.Tensor:
        x = nn.functional.embedding(history, self.input_table)
        return self.encoder(x, history > 0)[:, -1]

    def _scores(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores [P, k] of states ``h`` [P, d] for ``items`` [P, k]."""
        if self.user_gate is None:
            return torch.einsum("pd,pkd->pk", h, nn.functional.embedding(items, self.item_table))
        return self._contrib(h, items).sum(-1)

    def _contrib(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per-channel score split [P, k, C]."""
        vecs = self.channel_vecs[items]  # [P, k, C, d]
        maskf = self.channel_mask[items]  # [P, k, C]
        if self.user_gate is None:
            w = self.weights[items]
            return w * torch.einsum("pd,pkcd->pkc", h, vecs)
        alpha, u = self.user_gate(h)  # [P, C], [P, C, d]
        num = alpha.unsqueeze(1) * maskf * torch.einsum("pcd,pkcd->pkc", u, vecs)
        den = (alpha.unsqueeze(1) * maskf).sum(-1, keepdim=True).clamp_min(1e-6)
        return num / den

    def forward(self, history: torch.Tensor, items: torch.Tensor):
        B, L = history.shape
        k = items.shape[1]
        h = self._state(history)
        score = self._scores(h, items)
        # Leave-one-out: variant j removes position j and shifts the older items right by one
        # (left padding kept), so the remaining history sits where a shorter history would.
        pos = torch.arange(L, device=history.device)
        src = pos.view(1, L) - (pos.view(1, L) <= pos.view(L, 1)).long()  # [L(variant), L]: gather index
        src = torch.where(pos.view(1, L) > pos.view(L, 1), pos.view(1, L), src)
        variants = torch.where(src.unsqueeze(0) >= 0,
                               torch.gather(history.unsqueeze(1).expand(B, L, L), 2, src.clamp_min(0).unsqueeze(0).expand(B, L, L)),
                               torch.zeros_like(history).unsqueeze(1).expand(B, L, L))  # [B, L, L]
        hv = self._state(variants.reshape(B * L, L))
        sv = self._scores(hv, items.unsqueeze(1).expand(B, L, k).reshape(B * L, k)).reshape(B, L, k)
        drop = (score.unsqueeze(1) - sv) * (history > 0).unsqueeze(-1).to(score.dtype)
        weight = self.weights[items]
        contrib = self._contrib(h, items) if self.fusion != "concat" else torch.zeros_like(weight)
        return score, drop, weight, contrib


def explain(model: Recommender, histories: np.ndarray, items: np.ndarray, module: ExplainModule | None = None,
            top_history: int | None = None) -> list[list[Explanation]]:
    """Explanations for ``items[b]`` (int64 [B, k], e.g. the top-k of ``model.topk``) given ``histories[b]``."""
    if not isinstance(model, Recommender):
        raise ValueError("explanations need a sequential Recommender (popularity has nothing to explain)")
    module = module or ExplainModule(model)
    h = _prepare_histories(histories, model.spec.max_len)
    it = torch.as_tensor(np.asarray(items, dtype=np.int64))
    if it.ndim != 2 or it.shape[0] != h.shape[0]:
        raise ValueError(f"items must be int64 [batch, k] with the histories' batch {h.shape[0]}, got {tuple(it.shape)}")
    if int(it.min()) < 1 or int(it.max()) > model.n_items:
        raise ValueError(f"items must be item_idx in [1, {model.n_items}]")
    with torch.no_grad():
        score, drop, weight, contrib = (t.numpy() for t in module(h, it))
    return explanations_from_arrays(h.numpy(), it.numpy(), score, drop, weight, contrib, channel_names(model),
                                    model.spec.fusion != "concat", top_history)


def attention_rollout(model: Recommender, histories: np.ndarray) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) from the last position to each history position, [B, L].

    Per layer the head-averaged attention is mixed with the residual (0.5 A + 0.5 I) and the layers
    are multiplied. Kept as the contrast to leave-one-out in the faithfulness benchmark.
    """
    import math

    h = _prepare_histories(histories, model.spec.max_len)
    enc = model.encoder
    with torch.no_grad():
        input_table, _ = model.item_tables()
        x = nn.functional.embedding(h, input_table)
        valid = h > 0
        from fusionrec.models.transformer import attention_bias

        L = x.shape[1]
        vf = valid.unsqueeze(-1).to(x.dtype)
        z = enc.in_norm(x + enc.pos[enc.max_len - L:].unsqueeze(0)) * vf
        bias = attention_bias(valid)
        roll = torch.eye(L).unsqueeze(0).expand(len(h), L, L)
        for block in enc.blocks:
            a = block.attn
            B = z.shape[0]
            qkv = a.qkv(block.ln1(z)).view(B, L, 3, a.heads, a.head_dim).permute(2, 0, 3, 1, 4)
            att = torch.softmax(torch.matmul(qkv[0], qkv[1].transpose(-2, -1)) / math.sqrt(a.head_dim) + bias, dim=-1).mean(1)
            att = 0.5 * att + 0.5 * torch.eye(L).unsqueeze(0)
            roll = torch.matmul(att, roll)
            z = block(z, bias) * vf
    r = roll[:, -1].numpy() * valid.numpy()
    return r


class GuardedExplain(nn.Module):
    """``ExplainModule`` whose rows with a history id outside [0, n] or an item outside [1, n] come back NaN."""

    def __init__(self, inner: ExplainModule, n_items: int):
        super().__init__()
        self.inner = inner
        self.n_items = int(n_items)

    def forward(self, history: torch.Tensor, items: torch.Tensor):
        bad = ((history < 0) | (history > self.n_items)).any(1) | ((items < 1) | (items > self.n_items)).any(1)
        h = torch.where(bad.unsqueeze(1), torch.zeros_like(history), history)
        it = torch.where(bad.unsqueeze(1), torch.ones_like(items), items)
        outs = self.inner(h, it)
        nan = torch.full((), float("nan"))
        return tuple(torch.where(bad.view(-1, *([1] * (o.dim() - 1))), nan, o) for o in outs)


def write_explain_model(mdir, model: Recommender, histories: np.ndarray, cfg, explain_k: int = 10,
                        tolerance: float = 1e-4) -> dict:
    """Write ``mdir`` = ``<repo>/<name>_explain`` (ONNX graph of :class:`ExplainModule`, config, report).

    Parity: onnxruntime vs PyTorch on ``histories`` (the dataset's test cases) with their top-``explain_k``
    items, every output within ``tolerance``, and the invalid-row guard; ``RuntimeError`` otherwise.
    """
    import time
    import warnings
    from pathlib import Path

    import onnx

    from fusionrec.artifacts import atomic_write_json, atomic_write_text
    from fusionrec.model_repository import (CONTRIB, DROP, HISTORY, ITEMS, SCORE, WEIGHT, GraphTensor, companion_config_pbtxt,
                                            ort_session)

    mdir = Path(mdir)
    (mdir / "1").mkdir(parents=True)
    onnx_path = mdir / "1" / "model.onnx"
    L, E, C = int(model.spec.max_len), int(min(explain_k, model.n_items)), len(channel_names(model))
    graph = GuardedExplain(ExplainModule(model), model.n_items).eval()
    h = _prepare_histories(histories, L).numpy()
    items, _ = model.topk(h, E)
    names = [SCORE, DROP, WEIGHT, CONTRIB]
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.from_numpy(h[:2]), torch.from_numpy(items[:2])), str(onnx_path),
                          input_names=[HISTORY, ITEMS], output_names=names, opset_version=min(cfg.opset, 20),
                          dynamic_axes={n: {0: "batch"} for n in [HISTORY, ITEMS, *names]}, dynamo=False, external_data=False)
    onnx.checker.check_model(str(onnx_path), full_check=True)
    info = {"exporter": "legacy", "opset": min(cfg.opset, 20), "seconds": round(time.perf_counter() - t0, 2)}
    sess = ort_session(onnx_path)
    max_diff = 0.0
    with torch.no_grad():
        for s0 in range(0, len(h), 128):
            ref = [t.numpy() for t in graph(torch.from_numpy(h[s0:s0 + 128]), torch.from_numpy(items[s0:s0 + 128]))]
            got = sess.run(names, {HISTORY: h[s0:s0 + 128], ITEMS: items[s0:s0 + 128]})
            max_diff = max(max_diff, *(float(np.max(np.abs(r - g))) for r, g in zip(ref, got)))
    probe_h = np.concatenate([h[:1], h[:1]])
    probe_h[1, -1] = model.n_items + 3
    g = sess.run(names, {HISTORY: probe_h, ITEMS: np.concatenate([items[:1], items[:1]])})
    guard_ok = bool(all(np.isnan(o[1]).all() and np.isfinite(o[0]).all() for o in g))
    parity = {"n_cases": int(len(h)), "max_abs_diff": max_diff, "tolerance": tolerance, "invalid_row_guard_ok": guard_ok,
              "provider": sess.get_providers()[0], "passed": bool(max_diff <= tolerance and guard_ok)}
    if not parity["passed"]:
        raise RuntimeError(f"explain model: ONNX/PyTorch parity failed (max |diff| {max_diff:.3g} > {tolerance} "
                           f"or guard ok {guard_ok})")
    inputs = [GraphTensor(HISTORY, "int64", (L,)), GraphTensor(ITEMS, "int64", (E,))]
    outputs = [GraphTensor(SCORE, "float32", (E,)), GraphTensor(DROP, "float32", (L, E)),
               GraphTensor(WEIGHT, "float32", (E, C)), GraphTensor(CONTRIB, "float32", (E, C))]
    atomic_write_text(mdir / "config.pbtxt", companion_config_pbtxt(mdir.name, inputs, outputs, cfg))
    report = {"kind": "explain", "export": info, "parity": parity, "n_items": model.n_items, "max_len": L, "explain_k": E,
              "channels": channel_names(model), "fusion": model.spec.fusion, "split_exact": model.spec.fusion != "concat",
              "tensors": {"inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs]}}
    atomic_write_json(mdir / "export_report.json", report)
    return report


def explanations_from_arrays(histories: np.ndarray, items: np.ndarray, score: np.ndarray, drop: np.ndarray,
                             weight: np.ndarray, contrib: np.ndarray, channels: list[str], split_exact: bool,
                             top_history: int | None = None) -> list[list[Explanation]]:
    """``Explanation`` objects from the explain graph's outputs (PyTorch or served)."""
    out = []
    for b in range(len(histories)):
        real = np.flatnonzero(histories[b] > 0)
        row = []
        for j in range(items.shape[1]):
            pairs = sorted(((int(histories[b, p]), float(drop[b, p, j])) for p in real), key=lambda x: -x[1])
            row.append(Explanation(int(items[b, j]), float(score[b, j]), list(channels), [float(x) for x in weight[b, j]],
                                   [float(x) for x in contrib[b, j]] if split_exact else None,
                                   pairs[:top_history] if top_history else pairs))
        out.append(row)
    return out


def format_explanation(ex: Explanation, item_ids: Sequence[str], titles: dict[str, str] | None = None, n_history: int = 3,
                       width: int = 20) -> str:
    """A person-readable block: the item, a modality bar, and the history items that drove it."""
    titles = titles or {}
    iid = item_ids[ex.item_idx]
    lines = [f"{iid} {titles.get(iid, '')}  (score {ex.score:.3f})".rstrip()]
    parts = ex.channel_scores if ex.channel_scores is not None else ex.fusion_weights
    label = "share of the score" if ex.channel_scores is not None else "fusion weight"
    tot = sum(abs(p) for p in parts) or 1.0
    bar = []
    for name, w, p in zip(ex.channels, ex.fusion_weights, parts):
        if w <= 0:
            continue
        share = abs(p) / tot
        bar.append(f"{name} {'#' * round(share * width)} {share:.0%}".replace("  ", " "))
    lines.append(f"  modalities ({label}): " + " | ".join(bar))
    if ex.history:
        lines.append("  because you had:")
        for hidx, d in ex.history[:n_history]:
            hid = item_ids[hidx]
            lines.append(f"    {hid} {titles.get(hid, '')}  (score -{d:.3f} without it)" if d >= 0
                         else f"    {hid} {titles.get(hid, '')}  (score +{-d:.3f} without it)")
    return "\n".join(lines)


__all__ = ["Explanation", "ExplainModule", "GuardedExplain", "write_explain_model", "explanations_from_arrays", "explain", "attention_rollout", "format_explanation", "channel_names"]


# -- explained examples for reports (A/B report, benchmarks) ------------------------------------
CHANNEL_COLORS = {"text": "#4c72b0", "image": "#dd8452", "audio": "#55a868", "tabular": "#8172b3", "id": "#937860"}


def _example_cases(ds, max_len: int, n_cases: int) -> tuple[np.ndarray, np.ndarray]:
    """(case rows, histories) of the first ``n_cases`` warm test cases with at least 3 history items."""
    cases, hist = ds.eval_cases("test", max_len)
    warm = np.flatnonzero((cases["segment"].to_numpy() == "warm") & ((hist > 0).sum(1) >= 3))[:n_cases]
    return warm, hist[warm]


def explained_examples(repo, dataset, n_cases: int = 3, k: int = 3, top_history: int = 3) -> list[dict] | None:
    """A few test cases explained by a repository's served graphs (ranker + ``<name>_explain``, via onnxruntime).

    Returns ``[{"history": [item_idx...], "items": [Explanation...]}]``, or None when the repository
    has no explain model or was exported from another catalog than ``dataset``.
    """
    from fusionrec.artifacts import read_json
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.model_repository import (CONTRIB, DROP, EXPLAIN_SUFFIX, HISTORY, ITEMS, SCORE, WEIGHT, ModelRepository,
                                            OnnxRanker, companion_dir, ort_session)

    ranker_repo = ModelRepository(repo)
    edir = companion_dir(repo, ranker_repo.name, EXPLAIN_SUFFIX)
    ds = dataset if isinstance(dataset, DatasetArtifact) else DatasetArtifact(dataset)
    if edir is None or ranker_repo.item_ids != [str(x) for x in ds.item_ids.tolist()]:
        return None
    report = read_json(edir / "export_report.json")
    E, L = int(report["explain_k"]), int(report["max_len"])
    k = min(k, E)
    rows, h = _example_cases(ds, L, n_cases)
    if not len(rows):
        return None
    idx, _ = OnnxRanker(ranker_repo).topk(h, E)
    out = ort_session(edir / "1" / "model.onnx").run([SCORE, DROP, WEIGHT, CONTRIB], {HISTORY: h, ITEMS: idx})
    ex = explanations_from_arrays(h, idx, *out, report["channels"], bool(report["split_exact"]), top_history)
    return [{"history": [int(x) for x in row if x > 0], "items": e[:k]} for row, e in zip(h, ex)]


def model_examples(model: Recommender, ds, n_cases: int = 3, k: int = 3, top_history: int = 3) -> list[dict] | None:
    """:func:`explained_examples` for a trained model in PyTorch (``ds`` a ``DatasetArtifact``); None when there is
    nothing to explain (a model that reads behaviour kinds, which explanations do not cover yet, or no warm case)."""
    if not isinstance(model, Recommender) or model.spec.event_kinds:
        return None
    rows, h = _example_cases(ds, model.spec.max_len, n_cases)
    if not len(rows):
        return None
    idx, _ = model.topk(h, k)
    ex = explain(model, h, idx, top_history=top_history)
    return [{"history": [int(x) for x in row if x > 0], "items": e} for row, e in zip(h, ex)]


def quality_report(name: str, summary: dict, examples: list[dict] | None, ds, ks: Sequence[int] = (10, 20),
                   why_none: str = "nothing to explain") -> tuple[str, str]:
    """(markdown, html) of a model's test report: the metrics per segment and a few explained recommendations
    (``why_none`` says why there are none when ``examples`` is empty)."""
    import html as _html

    from fusionrec.evaluate import SEGMENTS, summary_table

    ids = [str(x) for x in ds.item_ids.tolist()]
    titles = dict(zip(ds.items["item_id"].astype(str), ds.items["title"].fillna("").astype(str))) if "title" in ds.items else {}
    md = [f"# Test report: {name}", "", "Full ranking, the user's whole history excluded (docs/evaluation.md).", "",
          summary_table({name: summary}, ks=ks), ""]
    cols = [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks] + ["mrr", "n"]
    rows = "".join("<tr><td>" + seg + "</td>" + "".join(
        f"<td>{int(summary[seg].get(c, 0))}</td>" if c == "n" else f"<td>{summary[seg].get(c, float('nan')):.4f}</td>" for c in cols)
        + "</tr>" for seg in SEGMENTS if seg in summary)
    page = [f"<html><head><meta charset='utf-8'><title>{_html.escape(name)}</title></head><body>",
            f"<h1>Test report: {_html.escape(name)}</h1><table border='1' cellpadding='4'><tr><th>segment</th>"
            + "".join(f"<th>{c}</th>" for c in cols) + f"</tr>{rows}</table>"]
    if examples:
        md.append(examples_markdown(examples, ids, titles, heading="Explained recommendations"))
        page.append(examples_html(examples, ds, ids, heading="Explained recommendations"))
    else:
        md.append(f"(no explained recommendations: {why_none})")
        page.append(f"<p>(no explained recommendations: {_html.escape(why_none)})</p>")
    page.append("</body></html>")
    return "\n".join(md) + "\n", "\n".join(page) + "\n"


def _shares(e: Explanation) -> list[tuple[str, float]]:
    parts = e.channel_scores if e.channel_scores is not None else e.fusion_weights
    tot = sum(abs(p) for p, w in zip(parts, e.fusion_weights) if w > 0) or 1.0
    return [(c, abs(p) / tot) for c, p, w in zip(e.channels, parts, e.fusion_weights) if w > 0]


def examples_markdown(examples: list[dict], item_ids: Sequence[str], titles: dict[str, str],
                      heading: str = "Explained recommendations (treatment)") -> str:
    lines = [f"## {heading}", ""]
    for n, ex in enumerate(examples, 1):
        recent = ", ".join(f"{titles.get(item_ids[i], item_ids[i])}" for i in ex["history"][-3:])
        lines.append(f"Case {n}: recently {recent}")
        for e in ex["items"]:
            iid = item_ids[e.item_idx]
            bar = " | ".join(f"{c} {s:.0%}" for c, s in _shares(e))
            why = "; ".join(f"{titles.get(item_ids[i], item_ids[i])} (-{d:.2f})" for i, d in e.history[:3] if d > 0)
            lines.append(f"- {titles.get(iid, iid)} ({iid}): {bar}; because of: {why or 'no single history item'}")
        lines.append("")
    return "\n".join(lines)


def examples_html(examples: list[dict], dataset, item_ids: Sequence[str],
                  heading: str = "Explained recommendations (treatment)") -> str:
    """HTML cards: the recent history and each recommendation with title, thumbnail, modality bar and drivers."""
    import base64
    import html

    from fusionrec.data.dataset import DatasetArtifact

    ds = dataset if isinstance(dataset, DatasetArtifact) else DatasetArtifact(dataset)
    items = ds.items.set_index("item_idx")
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}

    def thumb(i: int) -> str:
        row = items.loc[i] if i in items.index else None
        if row is None or "image" not in items.columns or not isinstance(row["image"], str) or row.get("image_status", "ok") != "ok":
            return '<span class="noimg">no image</span>'
        p = ds.path / row["image"]
        if not p.is_file() or p.suffix.lower() not in mime or p.stat().st_size > 512_000:
            return '<span class="noimg">no image</span>'
        return f'<img class="thumb" src="data:{mime[p.suffix.lower()]};base64,{base64.b64encode(p.read_bytes()).decode()}">'

    def title(i: int) -> str:
        t = items.loc[i, "title"] if i in items.index and "title" in items.columns else None
        return html.escape(str(t) if isinstance(t, str) and t else item_ids[i])

    css = ("<style>.ex{border:1px solid #ddd;border-radius:6px;padding:8px;margin:10px 0}.thumb{width:48px;height:48px;"
           "vertical-align:middle;margin-right:6px;display:inline}.noimg{display:inline-block;width:48px;font-size:10px;color:#888}"
           ".bar{display:flex;height:14px;width:320px;border-radius:3px;overflow:hidden;margin:3px 0}.bar div{height:100%}"
           ".hist span{margin-right:12px}.rec{margin:6px 0 6px 12px}.why{font-size:12px;color:#555}</style>")
    out = [css, f"<h2>{html.escape(heading)}</h2>",
           "<p>Bar: each modality's share of the item's score (exact split of the fused score); \"because of\": the history "
           "items whose removal lowers the score most (leave-one-out, re-scored).</p>"]
    for n, ex in enumerate(examples, 1):
        out.append(f'<div class="ex"><div class="hist"><b>Case {n}, recently:</b> '
                   + "".join(f"<span>{thumb(i)}{title(i)}</span>" for i in ex["history"][-3:]) + "</div>")
        for e in ex["items"]:
            segs = "".join(f'<div title="{c} {s:.0%}" style="width:{100 * s:.1f}%;background:{CHANNEL_COLORS.get(c, "#999")}"></div>'
                           for c, s in _shares(e))
            legend = ", ".join(f"{c} {s:.0%}" for c, s in _shares(e))
            why = "; ".join(f"{title(i)} (&minus;{d:.2f})" for i, d in e.history[:3] if d > 0)
            out.append(f'<div class="rec">{thumb(e.item_idx)}<b>{title(e.item_idx)}</b> (score {e.score:.2f})'
                       f'<div class="bar">{segs}</div><div class="why">{legend}; because of: {why or "no single history item"}</div></div>')
        out.append("</div>")
    return "\n".join(out)
