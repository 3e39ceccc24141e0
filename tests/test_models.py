"""Model building blocks: fusion weights, the exportable Transformer, serving module, save/load, new items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionrec.models import EXCLUDED, ModelSpec, PopularityRanker, Recommender, load_model, save_model
from fusionrec.models.fusion import FUSIONS, make_fusion
from fusionrec.models.transformer import SequenceEncoder

N, M, D = 30, 3, 8


def tiny_model(fusion="attention", use_id=True, seed=0) -> Recommender:
    torch.manual_seed(seed)
    spec = ModelSpec(n_items=N, modalities=["text", "image", "audio"], aligned_dim=D, dim=16, layers=2, heads=2,
                     max_len=10, dropout=0.1, fusion=fusion, use_id_embedding=use_id)
    feats = torch.randn(N + 1, M, D)
    mask = torch.rand(N + 1, M) > 0.3
    mask[1:, 0] = True  # every item has text
    mask[0] = False
    feats = feats * mask.unsqueeze(-1)
    id_mask = torch.ones(N + 1, dtype=torch.bool)
    id_mask[0] = False
    id_mask[-5:] = False  # 5 cold items
    return Recommender(spec, feats, mask, id_mask).eval()


def histories() -> np.ndarray:
    h = np.zeros((5, 10), np.int64)
    h[0, -1:] = [3]
    h[1, -3:] = [4, 5, 4]  # repeated item
    h[2] = np.arange(1, 11)
    h[3, -6:] = [7, 8, 9, 10, 11, 28]
    return h  # row 4: empty history


@pytest.mark.parametrize("name", ["attention", "weighted"])
def test_gate_weights_sum_to_one_over_present_and_zero_for_missing(name):
    torch.manual_seed(0)
    f = make_fusion(name, channels=4, dim=8)
    vecs = torch.randn(50, 4, 8)
    mask = torch.rand(50, 4) > 0.4
    mask[:, 1] = True  # at least one present
    mask[0] = torch.tensor([True, True, False, False])
    fused, w = f(vecs, mask)
    assert torch.allclose(w.sum(1), torch.ones(50), atol=1e-6)
    assert torch.all(w[~mask] == 0)
    assert torch.all(w[mask] > 0)
    # a missing channel's content has no influence at all
    vecs2 = vecs.clone()
    vecs2[~mask] = 1e3
    assert torch.allclose(f(vecs2 * mask.unsqueeze(-1), mask)[0], fused, atol=1e-5)


def test_model_attention_weights_exactly_zero_for_missing_modality():
    model = tiny_model("attention")
    w = model.fusion_weights()
    _, mask = model.channels()
    assert torch.all(w[1:][~mask[1:]] == 0)
    assert torch.allclose(w[1:].sum(1), torch.ones(N), atol=1e-6)
    assert torch.all(w[-5:, -1] == 0)  # cold items: no ID channel


def test_transformer_finite_for_left_padding_and_empty_history_and_causal():
    torch.manual_seed(0)
    enc = SequenceEncoder(dim=16, layers=2, heads=4, max_len=12, dropout=0.0).eval()
    x = torch.randn(3, 12, 16)
    valid = torch.zeros(3, 12, dtype=torch.bool)
    valid[0, -1:] = True
    valid[1] = True
    out = enc(x, valid)
    assert torch.isfinite(out).all()
    # causal: changing a later position does not change an earlier one
    x2 = x.clone()
    x2[1, 8] += torch.randn(16)
    out2 = enc(x2, valid)
    assert torch.allclose(out[1, :8], out2[1, :8], atol=1e-5) and not torch.allclose(out[1, 8], out2[1, 8])
    # padding content is ignored
    x3 = x.clone()
    x3[0, :-1] = 100.0
    assert torch.allclose(enc(x3, valid)[0, -1], out[0, -1], atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_serving_module_equals_topk_excludes_history_and_is_finite(fusion):
    model = tiny_model(fusion)
    h = histories()
    idx, score = model.topk(h, k=8)
    assert idx.dtype == np.int64 and score.dtype == np.float32 and idx.shape == (5, 8)
    assert np.isfinite(score).all() and (score > EXCLUDED / 2).all()
    for row, hist in zip(idx, h):
        assert 0 not in row and not set(row.tolist()) & set(hist[hist > 0].tolist())
        assert len(set(row.tolist())) == 8
    assert np.all(np.diff(score, axis=1) <= 0)
    # an independent reference: the TRAINING path (item_tables -> user_states -> score), masked and sorted by hand
    with torch.no_grad():
        table, parts = model.item_tables()
        states = model.user_states(torch.from_numpy(h), table)[:, -1]
        ref = model.score(states, parts).numpy().astype(np.float64)
    ref[:, ~model.scorable().numpy()] = -np.inf
    for r, hist in enumerate(h):
        ref[r, hist[hist > 0]] = -np.inf
    # float32 sums in a different order: scores agree to 1e-5, so compare the ranked ids where scores are 1e-4 apart
    n_fixed = 0
    for r in range(len(h)):
        order = np.argsort(-ref[r], kind="stable")[:8]
        assert np.allclose(score[r], ref[r, order], atol=1e-4)
        gap = np.abs(np.diff(ref[r, order])) > 1e-4  # gap[i]: positions i and i+1 are clearly apart
        fixed = np.concatenate([[True], gap]) & np.concatenate([gap, [True]])  # apart from both neighbours
        assert np.array_equal(idx[r][fixed], order[fixed])
        n_fixed += int(fixed.sum())
    assert n_fixed >= 10  # the check compared real positions, not only ties
    sidx, sscore = model.serving_module(8)(torch.from_numpy(h))
    assert sidx.dtype == torch.int64 and sscore.dtype == torch.float32
    assert np.array_equal(sidx.numpy(), idx) and np.allclose(sscore.numpy(), score)
    # a shorter history array (left-padded inside topk) gives the same result as the full-width one,
    # to float noise: a batch of 1 is another matmul shape than a batch of 5, so only items whose
    # scores are within 1e-5 may swap (compare_topk's rule)
    from fusionrec.export.parity import compare_topk

    idx_short, score_short = model.topk(h[:, -6:][3:4], k=8)
    res = compare_topk(idx[3:4], score[3:4], idx_short, score_short, score_tolerance=1e-5, tie_tolerance=1e-5)
    assert res["n_failures"] == 0, res["failures"]


@pytest.mark.parametrize("fusion", ["attention", "user_gate"])
def test_checkpoint_roundtrip_gives_identical_scores(tmp_path, fusion):
    model = tiny_model(fusion)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    h = histories()
    a, sa = model.topk(h, 10)
    b, sb = loaded.topk(h, 10)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    assert loaded.spec == model.spec
    assert "pickle" not in (tmp_path / "m" / "model.safetensors").read_bytes()[:200].decode("latin1")


def test_with_new_items_appends_cold_items_scored_from_content():
    model = tiny_model("attention")
    h = histories()
    # new items: copies of items 3 and 7's content (no ID embedding)
    feats = {m: model.features[[3, 7], j].numpy() for j, m in enumerate(model.spec.modalities)}
    masks = {m: model.feature_mask[[3, 7], j].numpy() for j, m in enumerate(model.spec.modalities)}
    bigger = model.with_new_items(feats, masks)
    assert bigger.n_items == N + 2
    idx, score = bigger.topk(h, k=N + 2 - 10)
    assert np.isfinite(score).all()
    full, _ = bigger.topk(h[4:5], k=N + 2)
    assert {N + 1, N + 2} <= set(full[0].tolist())
    # old items keep their scores (same user model, same item table rows)
    old_scores = model.serving_module(N)(torch.from_numpy(h))
    new_scores = bigger.serving_module(N + 2)(torch.from_numpy(h))
    o = dict(zip(old_scores[0][0].tolist(), old_scores[1][0].tolist()))
    n = dict(zip(new_scores[0][0].tolist(), new_scores[1][0].tolist()))
    assert all(abs(n[i] - s) < 1e-5 for i, s in o.items() if s > EXCLUDED / 2)
    with pytest.raises(ValueError, match="no modality"):
        model.with_new_items({"smell": np.zeros((2, D), np.float32)})


def test_id_only_model_cannot_score_cold_items():
    torch.manual_seed(0)
    spec = ModelSpec(n_items=N, modalities=[], aligned_dim=0, dim=16, layers=1, heads=2, max_len=10, use_id_embedding=True)
    id_mask = torch.ones(N + 1, dtype=torch.bool)
    id_mask[0] = False
    id_mask[-5:] = False
    model = Recommender(spec, torch.zeros(N + 1, 0, 0), torch.zeros(N + 1, 0, dtype=torch.bool), id_mask).eval()
    idx, _ = model.topk(histories(), k=15)  # row 2 excludes 10 items: exactly 15 scorable ones remain
    assert not set(idx.ravel().tolist()) & set(range(N - 4, N + 1))


def test_popularity_ranker_same_api(tmp_path):
    counts = torch.zeros(N + 1)
    counts[1:] = torch.arange(N, 0, -1).float()
    counts[5] = counts[6]  # a tie: broken by item_idx, the same in every backend
    pop = PopularityRanker(ModelSpec(kind="popularity", n_items=N, max_len=10), counts)
    h = histories()
    idx, score = pop.topk(h, 5)
    assert idx[4].tolist() == [1, 2, 3, 4, 5] and idx[0].tolist() == [1, 2, 4, 5, 6]
    sidx, _ = pop.serving_module(5)(torch.from_numpy(h))
    assert np.array_equal(sidx.numpy(), idx)
    save_model(pop, tmp_path / "p")
    assert np.array_equal(load_model(tmp_path / "p").topk(h, 5)[0], idx)
    assert pop.with_new_items({"text": np.zeros((3, 4))}).n_items == N + 3


def count_gate_model(fusion: str = "attention") -> Recommender:
    """tiny_model's items with ``id_count_gate``: train counts 0 (padding, cold) to 1000 (the head)."""
    base = tiny_model(fusion)
    counts = torch.zeros(N + 1, dtype=torch.long)
    counts[1:-5] = torch.tensor([1, 2, 3, 5, 9, 20, 40, 80, 150, 300, 600, 1000] * 2 + [7])
    spec = base.spec.model_copy(update={"id_count_gate": True})
    model = Recommender(spec, base.features, base.feature_mask, base.id_mask, counts)
    model.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        model.id_count_bias.copy_(torch.linspace(-2, 2, model.id_count_bias.numel()))  # as if trained: trust IDs of the head
    return model.eval()


@pytest.mark.parametrize("fusion", ["attention", "weighted"])
def test_id_count_gate_shifts_weight_to_the_id_channel_by_train_count(fusion):
    plain, gated = tiny_model(fusion), count_gate_model(fusion)
    assert gated.count_bucket.tolist()[:4] == [0, 1, 1, 2] and int(gated.count_bucket[12]) == 9  # counts 0, 1, 2, 3; 1000
    w_plain, w_gated = plain.fusion_weights(), gated.fusion_weights()
    assert torch.allclose(w_gated.sum(1)[1:], torch.ones(N))  # still a distribution over each item's channels
    assert torch.equal(w_gated == 0, w_plain == 0)  # missing channels stay at exactly 0
    warm = gated.id_mask
    # the ID channel's share moves with the bias of the item's bucket: up for the head, down for the rarely seen
    head = warm & (gated.count_bucket >= 7)
    tail = warm & (gated.count_bucket <= 2) & (gated.feature_mask.any(1))
    assert head.sum() >= 4 and tail.sum() >= 4
    assert (w_gated[head, -1] > w_plain[head, -1]).all() and (w_gated[tail, -1] < w_plain[tail, -1]).all()
    # cold items have no ID channel, so the gate cannot touch their content-only vectors
    cold = ~warm
    cold[0] = False
    assert torch.allclose(gated.item_tables()[0][cold], plain.item_tables()[0][cold], atol=1e-6)


def test_id_count_gate_survives_save_load_export_and_new_items(tmp_path):
    model = count_gate_model()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    h = histories()
    a, sa = model.topk(h, 10)
    b, sb = loaded.topk(h, 10)
    assert np.array_equal(a, b) and np.array_equal(sa, sb) and torch.equal(loaded.count_bucket, model.count_bucket)
    idx, score = model.serving_module(10)(torch.from_numpy(h))  # the item table, gate included, is baked in
    assert np.array_equal(idx.numpy(), a) and np.allclose(score.numpy(), sa, atol=1e-5)
    feats = {m: model.features[[3], j].numpy() for j, m in enumerate(model.spec.modalities)}
    bigger = model.with_new_items(feats)
    assert bigger.count_bucket.tolist() == model.count_bucket.tolist() + [0]  # a new item was never trained on
    with pytest.raises(ValueError, match="concat"):
        ModelSpec(n_items=3, fusion="concat", id_count_gate=True)
