"""Explanations: the score split over channels and the leave-one-out history drops, against direct re-scoring."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionrec.explain import (ExplainModule, attention_rollout, explain, explanations_from_arrays, format_explanation,
                               write_explain_model)

sys.path.insert(0, str(Path(__file__).parent))
from test_models import histories, tiny_model  # noqa: E402


def direct_score(model, history_row: np.ndarray, item: int) -> float:
    """The model's own score of ``item`` for one history (the Recommender's code path, not the explainer's)."""
    with torch.no_grad():
        table, parts = model.item_tables()
        h = torch.as_tensor(history_row, dtype=torch.long).view(1, -1)
        state = model.user_states(h, table)[:, -1]
        return float(model.score(state, parts)[0, item])


def remove(row: np.ndarray, pos: int) -> np.ndarray:
    rest = np.delete(row, pos)
    return np.concatenate([[0], rest])


@pytest.mark.parametrize("fusion", ["attention", "weighted", "user_gate", "concat"])
def test_scores_and_leave_one_out_drops_match_direct_rescoring(fusion):
    model = tiny_model(fusion)
    h = histories()[:4]
    idx, score = model.topk(h, 5)
    ex = explain(model, h, idx)
    for b in range(len(h)):
        for j in range(5):
            e = ex[b][j]
            assert e.item_idx == idx[b, j]
            assert e.score == pytest.approx(float(score[b, j]), abs=1e-4)  # same math, different op order
            real = np.flatnonzero(h[b] > 0)
            assert len(e.history) == len(real)
            drops = dict()
            for p in real:
                expect = direct_score(model, h[b], int(idx[b, j])) - direct_score(model, remove(h[b], p), int(idx[b, j]))
                drops.setdefault(int(h[b, p]), []).append(expect)
            for item, d in e.history:
                # float32 re-scoring of two histories; a repeated item has one drop per position
                assert any(abs(d - x) < 1e-4 for x in drops[item])
            assert [d for _, d in e.history] == sorted((d for _, d in e.history), reverse=True)


@pytest.mark.parametrize("fusion", ["attention", "weighted", "user_gate"])
def test_channel_scores_split_the_score_exactly(fusion):
    model = tiny_model(fusion)
    h = histories()[:4]
    idx, score = model.topk(h, 4)
    w_all = model.fusion_weights().detach().numpy()
    for b, row in enumerate(explain(model, h, idx)):
        for e in row:
            assert e.channels == ["text", "image", "audio", "id"]
            assert sum(e.channel_scores) == pytest.approx(e.score, abs=1e-4)
            np.testing.assert_allclose(e.fusion_weights, w_all[e.item_idx], atol=1e-6)
            for c, w in enumerate(e.fusion_weights):
                if w == 0:
                    assert e.channel_scores[c] == 0.0  # a missing channel carries nothing


def test_concat_has_weights_but_no_split():
    model = tiny_model("concat")
    idx, _ = model.topk(histories()[:2], 3)
    e = explain(model, histories()[:2], idx)[0][0]
    assert e.channel_scores is None and len(e.fusion_weights) == 4


def test_bad_items_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="item_idx"):
        explain(model, histories()[:1], np.array([[0]]))
    with pytest.raises(ValueError, match="batch"):
        explain(model, histories()[:2], np.array([[1]]))


def test_rollout_is_zero_on_padding_and_the_text_is_readable():
    model = tiny_model()
    h = histories()[:4]
    r = attention_rollout(model, h)
    assert r.shape == h.shape and (r[h == 0] == 0).all() and (r[h > 0] > 0).all()
    idx, _ = model.topk(h, 2)
    e = explain(model, h, idx)[3][0]
    ids = [""] + [f"it{i}" for i in range(1, 31)]
    text = format_explanation(e, ids, {f"it{e.history[0][0]}": "Top Driver"})
    assert f"it{e.item_idx}" in text and "Top Driver" in text and "modalities (share of the score)" in text
    assert "%" in text and "text" in text


def test_explain_module_gives_the_same_numbers_in_a_batch_as_alone():
    model = tiny_model("attention")
    m = ExplainModule(model)
    h = torch.as_tensor(histories()[:4])
    items = torch.as_tensor(model.topk(histories()[:4], 3)[0])
    with torch.no_grad():
        full = m(h, items)
        one = m(h[2:3], items[2:3])
    for a, b in zip(full, one):
        np.testing.assert_allclose(a[2:3].numpy(), b.numpy(), atol=1e-5)  # batch composition must not matter


def test_explain_graph_exports_with_parity_and_a_guard(tmp_path):
    from fusionrec.export import ExportConfig
    from fusionrec.model_repository import graph_io, ort_session

    model = tiny_model("user_gate")
    h = histories()[:4]
    report = write_explain_model(tmp_path / "m_explain", model, h, ExportConfig(name="m", instance_kind="KIND_CPU"), explain_k=3)
    assert report["parity"]["passed"] and report["parity"]["invalid_row_guard_ok"]
    kind, ins, outs = graph_io(tmp_path / "m_explain")
    assert kind == "explain" and [t.name for t in ins] == ["HISTORY", "ITEMS"] and outs[1].dims == (10, 3)
    sess = ort_session(tmp_path / "m_explain" / "1" / "model.onnx")
    idx, _ = model.topk(h, 3)
    score, drop, weight, contrib = sess.run(["SCORE", "DROP", "WEIGHT", "CONTRIB"], {"HISTORY": h, "ITEMS": idx})
    served = explanations_from_arrays(h, idx, score, drop, weight, contrib, report["channels"], True)
    local = explain(model, h, idx)
    for a, b in zip(served, local):
        for x, y in zip(a, b):
            assert x.item_idx == y.item_idx and x.score == pytest.approx(y.score, abs=1e-4)  # ORT vs PyTorch kernels
            assert [i for i, _ in x.history][:1] == [i for i, _ in y.history][:1] or \
                abs(x.history[0][1] - y.history[0][1]) < 1e-4


def test_trained_model_has_a_test_report_with_explained_recommendations(tiny_text_image_model, tiny_dataset):
    """The train step's report.md/html: the test metrics it recorded and three explained recommendations a person can read."""
    import json

    from fusionrec.data.dataset import DatasetArtifact

    model_dir = tiny_text_image_model[0]
    md = (model_dir / "report.md").read_text()
    page = (model_dir / "report.html").read_text()
    test = json.loads((model_dir / "metrics.json").read_text())["test"]
    assert f"| {test['warm']['ndcg@10']:.4f} |" in md  # the recorded figure, not a recomputed one
    titles = set(DatasetArtifact(tiny_dataset).items["title"].dropna())
    cases = [ln for ln in md.splitlines() if ln.startswith("Case ")]
    recs = [ln for ln in md.splitlines() if ln.startswith("- ")]
    assert len(cases) == 3 and len(recs) == 9
    assert all(any(t in ln for t in titles) for ln in recs)  # titles, not bare ids
    assert all("because of:" in ln and "%" in ln for ln in recs)  # the drivers and the modality bar
    assert any("text " in ln and "image " in ln for ln in recs)  # an item with both modalities shows both shares
    assert page.count('class="rec"') == 9 and "<img" in page and 'class="bar"' in page
