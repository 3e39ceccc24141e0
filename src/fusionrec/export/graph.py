"""The serving graph: the guard around a ``history -> (item_idx, score)`` module, and its ONNX export.

The exported graph maps ``HISTORY`` int64 [batch, max_len] (item_idx, left-padded with 0) to
``ITEM_IDX`` int64 [batch, K] and ``SCORE`` float32 [batch, K]: user Transformer, the item
table baked in, scoring, history exclusion and top-K all inside the graph (the tensor names and
types are the model repository's contract, ``fusionrec.model_repository.INPUTS``/``OUTPUTS``).
The guard makes a row holding an id outside ``[0, n_items]`` come back with ``ITEM_IDX == -1``
and ``SCORE == NaN`` (a per-row status, because Triton can only fail a whole dynamic batch, see
docs/serving.md) while the other rows are unaffected.

Example:
    >>> info = export_onnx(guarded(model.serving_module(100), model.n_items), 50, Path("model.onnx"))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import time
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from fusionrec.artifacts import StepError
from fusionrec.model_repository import INPUTS, INVALID_IDX, OUTPUTS
from fusionrec.progress import get_logger

log = get_logger("fusionrec.export")

INPUT_NAMES = [s.name for s in INPUTS]
OUTPUT_NAMES = [s.name for s in OUTPUTS]


class ExportError(StepError):
    """The export failed a check (ONNX checker, parity): no model repository was written."""


class GuardedServing(nn.Module):
    """A serving module whose rows with ids outside [0, n_items] return ITEM_IDX -1 / SCORE NaN."""

    def __init__(self, inner: nn.Module, n: int):
        super().__init__()
        self.inner = inner
        self.n_items = int(n)
        # a module that reads behaviour kinds takes ``events`` (the Recommender's does); any other
        # ``history, exclude`` module is served as well: the guard still checks EVENTS, so the input stays in the graph
        self.pass_events = "events" in inspect.signature(inner.forward).parameters

    def forward(self, history: torch.Tensor, exclude: torch.Tensor, events: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bad = ((history < 0) | (history > self.n_items)).any(dim=1, keepdim=True)
        bad = bad | ((exclude < -1) | (exclude > self.n_items)).any(dim=1, keepdim=True)
        bad = bad | (events < 0).any(dim=1, keepdim=True)  # a kind id past the vocabulary reads as unknown, not invalid
        safe = torch.where(bad, torch.zeros_like(history), history)
        safe_ex = torch.where(bad, torch.full_like(exclude, -1), exclude)
        safe_ev = torch.where(bad, torch.zeros_like(events), events)
        idx, score = self.inner(safe, safe_ex, safe_ev) if self.pass_events else self.inner(safe, safe_ex)
        idx = torch.where(bad, torch.full_like(idx, INVALID_IDX), idx)
        score = torch.where(bad, torch.full_like(score, float("nan")), score)
        return idx, score


def guarded(module, n_items: int):
    """Wrap a serving module so rows with ids outside [0, n_items] return ITEM_IDX -1 / SCORE NaN.

    Example:
        >>> g = guarded(model.serving_module(10), model.n_items)            # doctest: +SKIP
    """
    return GuardedServing(module, n_items).eval()


def example_inputs(max_len: int) -> tuple[torch.Tensor, ...]:
    """The example batch the exporter traces, one tensor per graph input (``INPUTS`` order).

    EXCLUDE is 3 wide (not 1: the dynamo exporter would specialise a size-1 axis) and -1 padded; EVENTS
    holds kind ids 0 and 1 at the history's items.
    """
    example = torch.zeros(4, max_len, dtype=torch.long)
    example[:, -1] = 1
    example[1:, -2] = 2
    exclude = torch.full((4, 3), -1, dtype=torch.long)
    exclude[1, 0] = 1
    events = torch.zeros(4, max_len, dtype=torch.long)
    events[2:, -1] = 1
    return (example, exclude, events)


def _dynamic_axes(spec) -> dict[int, str]:
    return {0: "batch", 1: f"{spec.name.lower()}_len"} if spec.length == "free" else {0: "batch"}


def export_onnx(module, max_len: int, path: Path, opset: int = 18, dynamo: bool = True,
                allow_legacy_fallback: bool = True) -> dict[str, Any]:
    """``torch.onnx.export`` a ``history -> (item_idx, score)`` module with a dynamic batch axis.

    Returns a dict describing how it was exported (exporter used, fallback reason, seconds).
    """
    module = module.eval().cpu()
    example = example_inputs(max_len)
    info: dict[str, Any] = {"opset": opset, "exporter": "dynamo" if dynamo else "legacy", "fallback_reason": None}
    t0 = time.perf_counter()

    def _legacy() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(path), input_names=INPUT_NAMES,
                              output_names=OUTPUT_NAMES, opset_version=min(opset, 20),
                              dynamic_axes={**{s.name: _dynamic_axes(s) for s in INPUTS}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
                              dynamo=False, external_data=False)

    with torch.no_grad():
        if dynamo:
            try:
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                free = {s.name: torch.export.Dim(f"{s.name.lower()}_len", min=1, max=1 << 16) for s in INPUTS if s.length == "free"}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prog = torch.onnx.export(module, example, input_names=INPUT_NAMES,
                                             output_names=OUTPUT_NAMES, opset_version=opset,
                                             dynamo=True,
                                             dynamic_shapes=tuple({0: batch, 1: free[s.name]} if s.name in free else {0: batch}
                                                                  for s in INPUTS),
                                             optimize=True, verbose=False)
                prog.save(str(path), external_data=False)
            except Exception as exc:  # noqa: BLE001 - recorded, then either re-raised or fallen back from
                if not allow_legacy_fallback:
                    raise ExportError(f"torch.onnx.export(dynamo=True) failed: {type(exc).__name__}: {exc}") from exc
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                log.warning("dynamo exporter failed (%s); falling back to the legacy exporter", reason)
                info.update(exporter="legacy", fallback_reason=reason)
                _legacy()
        else:
            _legacy()
    info["seconds"] = round(time.perf_counter() - t0, 3)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnx.checker rejected {path}: {exc}") from exc
    m = onnx.load(str(path), load_external_data=False)
    ins = {i.name: i for i in m.graph.input}
    outs = {o.name: o for o in m.graph.output}
    if set(ins) != set(INPUT_NAMES) or set(outs) != set(OUTPUT_NAMES):
        raise ExportError(f"exported graph has inputs {sorted(ins)} and outputs {sorted(outs)}; "
                          f"expected {', '.join(INPUT_NAMES)} -> {', '.join(OUTPUT_NAMES)}")
    info["ir_version"] = int(m.ir_version)
    info["opset_imports"] = {o.domain or "ai.onnx": int(o.version) for o in m.opset_import}
    return info
