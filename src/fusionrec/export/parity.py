"""Parity of the exported graph: onnxruntime against PyTorch on every test case, and the invalid-row guard.

The export fails loudly (``ExportError``, no artifact written) unless onnxruntime and PyTorch
agree on every test case of the dataset: the same top-K set, order differing only between
items whose scores are within ``tie_tolerance``, and max |score diff| <= ``score_tolerance``.

Example:
    >>> report = check_parity(guarded_module, Path("model.onnx"), histories, n_items, ExportConfig())  # doctest: +SKIP
    >>> report["passed"], report["max_abs_score_diff"]                                                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fusionrec.model_repository import INVALID_IDX, OUTPUT_NAMES, feeds, ort_session
from fusionrec.progress import progress


class ParitySettings(Protocol):
    """What parity needs of the export settings (``fusionrec.export.ExportConfig`` has it)."""

    parity_batch: int
    score_tolerance: float
    tie_tolerance: float


def compare_topk(ref_idx: np.ndarray, ref_score: np.ndarray, idx: np.ndarray, score: np.ndarray,
                 score_tolerance: float = 1e-4, tie_tolerance: float = 1e-5) -> dict[str, Any]:
    """Compare two top-K results row by row (reference = PyTorch).

    A row passes when both lists hold the same items (a swap at the K-th boundary is allowed only
    between items whose reference scores are within ``tie_tolerance`` of the K-th score), every
    position's item has a reference score within ``tie_tolerance`` of the reference score at that
    position (so only near-ties reorder), and every common item's score differs by at most
    ``score_tolerance``.
    """
    n, k = ref_idx.shape
    failures: list[dict[str, Any]] = []
    reordered = boundary = 0
    max_diff = 0.0
    for r in range(n):
        ri, rs, oi, os_ = ref_idx[r], ref_score[r], idx[r], score[r]
        ref_map = dict(zip(ri.tolist(), rs.tolist()))
        common = [j for j, it in enumerate(oi.tolist()) if it in ref_map]
        diffs = np.abs(np.array([os_[j] - ref_map[oi[j]] for j in common], dtype=np.float64)) if common else np.zeros(0)
        if not np.all(np.isfinite(os_)) or not np.all(np.isfinite(rs)):
            failures.append({"row": r, "why": "non-finite score"})
            continue
        row_max = float(diffs.max()) if len(diffs) else 0.0
        max_diff = max(max_diff, row_max)
        missing = set(oi.tolist()) - set(ref_map)
        if missing:
            kth = float(rs[-1])
            if all(abs(float(os_[j]) - kth) <= tie_tolerance + score_tolerance for j, it in enumerate(oi.tolist()) if it in missing):
                boundary += 1
            else:
                failures.append({"row": r, "why": f"different top-{k} set", "only_onnx": sorted(int(x) for x in missing)[:10]})
                continue
        if not np.array_equal(ri, oi):
            reordered += 1
            bad_rank = next((j for j, it in enumerate(oi.tolist())
                             if it in ref_map and abs(ref_map[it] - float(rs[j])) > tie_tolerance), None)
            if bad_rank is not None:
                j = bad_rank
                failures.append({"row": r, "why": f"rank {j} holds item {int(oi[j])} (ref score {ref_map[int(oi[j])]:.6g}) "
                                                  f"where the reference has {int(ri[j])} ({float(rs[j]):.6g})"})
                continue
        if row_max > score_tolerance:
            failures.append({"row": r, "why": f"score diff {row_max:.3g} > {score_tolerance}"})
    return {"n_cases": int(n), "k": int(k), "max_abs_score_diff": max_diff, "reordered_cases": reordered,
            "boundary_tie_cases": boundary, "n_failures": len(failures), "failures": failures[:20]}


def check_parity(module, onnx_path: Path, histories: np.ndarray, n_items: int, cfg: ParitySettings,
                 exclude: np.ndarray | None = None, events: np.ndarray | None = None) -> dict[str, Any]:
    """Run PyTorch and onnxruntime on every history (with its exclusion list, when given); return the parity report.

    ``exclude`` (int64 [n, E], -1 padded): each case's whole consumed set, so the EXCLUDE input is
    checked on real lists; the report records how many ids it carried. ``events``: each history's
    behaviour kind ids (a model that reads kinds), so the EVENTS input is checked on real kinds too.
    """
    sess = ort_session(onnx_path)
    max_len = histories.shape[1]
    ref_i, ref_s, ort_i, ort_s = [], [], [], []
    t_torch = t_ort = 0.0
    batches = range(0, len(histories), cfg.parity_batch)
    with torch.no_grad():
        for s in progress(batches, desc="parity", unit="batch"):
            feed = feeds(histories[s: s + cfg.parity_batch], max_len,
                         None if exclude is None else exclude[s: s + cfg.parity_batch],
                         None if events is None else events[s: s + cfg.parity_batch])
            t0 = time.perf_counter()
            i, sc = module(*(torch.from_numpy(v) for v in feed.values()))
            t_torch += time.perf_counter() - t0
            ref_i.append(i.numpy())
            ref_s.append(sc.numpy())
            t0 = time.perf_counter()
            oi, os_ = sess.run(OUTPUT_NAMES, feed)
            t_ort += time.perf_counter() - t0
            ort_i.append(oi)
            ort_s.append(os_)
    report = compare_topk(np.concatenate(ref_i), np.concatenate(ref_s), np.concatenate(ort_i), np.concatenate(ort_s),
                          cfg.score_tolerance, cfg.tie_tolerance)
    report.update(exclude_ids_checked=int((exclude >= 0).sum()) if exclude is not None else 0,
                  event_kinds_checked=int((events > 0).sum()) if events is not None else 0,
                  torch_seconds=round(t_torch, 4), onnxruntime_seconds=round(t_ort, 4),
                  provider=sess.get_providers()[0], score_tolerance=cfg.score_tolerance, tie_tolerance=cfg.tie_tolerance)

    # The guard: an out-of-range row gets the -1/NaN status, its neighbours are untouched.
    probe = np.zeros((5, max_len), dtype=np.int64)
    probe[:, -1] = 1
    probe[1, -1] = n_items + 1
    probe[2, -1] = -5
    probe_ex = np.full((5, 1), -1, dtype=np.int64)
    probe_ex[3, 0] = n_items + 7  # an out-of-range exclusion id is an invalid row too
    probe_ev = np.zeros((5, max_len), dtype=np.int64)
    probe_ev[4, -1] = -3  # and a negative behaviour kind id
    gi, gs = sess.run(OUTPUT_NAMES, feeds(probe, max_len, probe_ex, probe_ev))
    good_i, _ = sess.run(OUTPUT_NAMES, feeds(probe[:1], max_len))
    guard_ok = bool(np.all(gi[1:] == INVALID_IDX) and np.all(np.isnan(gs[1:])) and np.array_equal(gi[0], good_i[0]))
    report["invalid_row_guard_ok"] = guard_ok
    if not guard_ok:
        report["n_failures"] += 1
        report["failures"].append({"row": None, "why": "out-of-range rows did not come back as ITEM_IDX -1 / SCORE NaN"})
    report["passed"] = report["n_failures"] == 0
    return report
