"""Issue 14: training data construction (every train event a target once per epoch, no valid/test leak),
the fair input of a model that cannot represent some history items, and the content-alignment term."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from fusionrec.train import training_arrays


def _targets_by_user(X: np.ndarray, Y: np.ndarray, seqs: list[np.ndarray]) -> None:
    """Every window's (input, target) pairs are consecutive events of one user's sequence."""
    for x, y in zip(X, Y):
        pos = np.flatnonzero(x > 0)
        assert len(pos) and pos[0] + len(pos) == len(x)  # left-padded, no hole
        # inputs and targets are a contiguous slice of a user's sequence shifted by one
        xs, ys = x[pos], y[pos]
        matched = any(np.array_equal(s[start:start + len(xs)], xs)
                      and np.all((ys == 0) | (ys == s[start + 1:start + 1 + len(xs)]))
                      for s in seqs for start in range(len(s) - len(xs)))
        assert matched, x


@pytest.mark.parametrize("max_len,stride", [(4, None), (4, 2), (4, 1), (10, None), (3, 3)])
def test_every_train_event_after_the_first_is_a_target_exactly_once(max_len, stride):
    rng = np.random.default_rng(max_len * 10 + (stride or 0))
    # lengths around and far beyond max_len; ids distinct across users so a target names its event
    lengths = [1, 2, 3, max_len, max_len + 1, max_len + 2, 3 * max_len + 1, 7 * max_len]
    seqs, nxt = [], 1
    for n in lengths:
        seqs.append(np.arange(nxt, nxt + n, dtype=np.int64))
        nxt += n
    rng.shuffle(seqs)
    X, Y = training_arrays(seqs, max_len, "all", stride)
    assert X.shape == Y.shape and X.shape[1] == max_len
    expected = Counter(int(v) for s in seqs for v in s[1:])  # a user's first event has no history
    got = Counter(int(v) for v in Y[Y > 0])
    assert got == expected  # every event once: none missing, none twice
    assert set(np.unique(X[X > 0])) <= {int(v) for s in seqs for v in s[:-1]}  # a user's last train event is never an input
    _targets_by_user(X, Y, seqs)
    # a target is only predicted from its own past: its input position holds the event just before it
    rows, cols = np.nonzero(Y)
    assert np.all(X[rows, cols] == Y[rows, cols] - 1)  # ids are consecutive within a user


def test_overlapping_stride_gives_every_target_more_context():
    seq = [np.arange(1, 41, dtype=np.int64)]
    _, Y_full = training_arrays(seq, 10, "all", None)
    X_half, Y_half = training_arrays(seq, 10, "all", 5)
    # the same targets, once each, but with stride 5 every owned target after the first window sees >= 5 items
    assert sorted(Y_full[Y_full > 0]) == sorted(Y_half[Y_half > 0]) == list(range(2, 41))
    rows, cols = np.nonzero(Y_half)
    context = np.array([(X_half[r, : c + 1] > 0).sum() for r, c in zip(rows, cols)])
    assert (context[Y_half[rows, cols] > 6] >= 5).all()


def test_last_window_mode_is_the_old_one_window_per_user():
    seqs = [np.arange(1, 30, dtype=np.int64), np.arange(100, 103, dtype=np.int64), np.array([7], np.int64)]
    X, Y = training_arrays(seqs, 5, "last")
    assert X.shape == (2, 5)
    assert list(Y[0]) == list(range(25, 30)) and list(X[0]) == list(range(24, 29))
    assert (Y > 0).sum() == 5 + 2  # 27 of user 0's 28 targets are never trained on: why "all" is the default


def test_no_valid_or_test_event_leaks_into_training(tiny_dataset):
    """Every target and every input of the training windows is a train event of that user, in order; no
    valid/test event (nor a cold item's event) appears, and a user's windows hold their train events only."""
    from fusionrec.data.dataset import DatasetArtifact

    ds = DatasetArtifact(tiny_dataset)
    ev = ds.events
    held = ev[ev["split"] != "train"]
    assert len(held) > 0
    seqs = ds.train_sequences()
    X, Y = training_arrays(seqs, 8, "all")
    tr = ev[ev["split"] == "train"]
    expected = Counter(int(v) for s in seqs for v in s[1:])
    assert Counter(int(v) for v in Y[Y > 0]) == expected
    assert expected.total() == len(tr) - tr["user_idx"].nunique()
    # cold items (no train event) never appear; a held-out item of a user appears only if that user also has it in train
    cold = set(ds.cold_items.tolist()) if len(ds.cold_items) else set()
    used = set(np.unique(np.concatenate([X[X > 0], Y[Y > 0]])).tolist())
    assert not (used & cold)
    assert used <= set(tr["item_idx"].astype(int))
    _targets_by_user(X, Y, seqs)
    # the (user, item) pairs of valid/test cases never appear as a (window input -> target) of that user
    train_pairs = {(int(u), int(i)) for u, i in zip(tr["user_idx"], tr["item_idx"])}
    held_pairs = {(int(u), int(i)) for u, i in zip(held["user_idx"], held["item_idx"])} - train_pairs
    by_user = {int(u): set(g["item_idx"].astype(int)) for u, g in tr.groupby("user_idx")}
    for x, y in zip(X, Y):
        items = set(np.concatenate([x[x > 0], y[y > 0]]).tolist())
        owners = [u for u, s in by_user.items() if items <= s]
        assert owners, "a window mixes events of several users"
        assert not any((u, i) in held_pairs for u in owners for i in items)


def test_drop_unknown_shifts_known_items_right_and_keeps_order():
    from fusionrec.models.recommender import drop_unknown

    known = torch.tensor([False, True, False, True, True, False, True])  # items 2 and 5 unknown; 0 = padding
    h = torch.tensor([[0, 0, 1, 2, 3, 4],
                      [2, 5, 2, 5, 2, 5],
                      [1, 3, 4, 6, 1, 3],
                      [0, 0, 0, 0, 0, 6],
                      [5, 1, 2, 6, 5, 4]])
    out = drop_unknown(h, known)
    assert out.tolist() == [[0, 0, 0, 1, 3, 4],
                            [0, 0, 0, 0, 0, 0],
                            [1, 3, 4, 6, 1, 3],
                            [0, 0, 0, 0, 0, 6],
                            [0, 0, 0, 1, 6, 4]]


def _id_model(n_items: int, known: np.ndarray, unknown_history: str):
    from fusionrec.models.recommender import ModelSpec, Recommender

    spec = ModelSpec(n_items=n_items, modalities=[], aligned_dim=0, dim=8, layers=1, heads=2, max_len=6, dropout=0.0,
                     unknown_history=unknown_history)
    torch.manual_seed(0)
    return Recommender(spec, id_mask=torch.from_numpy(known)).eval()


def test_id_model_reads_a_history_without_the_items_it_has_no_vector_for():
    """The fair input of an ID-only model (issue 14): a cold item in the history is left out, so the ranking of
    [a, cold, b] equals that of [a, b]; the old behaviour (a zero vector in its place) differs, and the exclusion
    still covers the cold item."""
    n = 12
    known = np.ones(n + 1, bool)
    known[0] = False
    known[[3, 7]] = False  # two cold items
    fair, old = _id_model(n, known, "drop"), _id_model(n, known, "zero")
    old.load_state_dict(fair.state_dict())
    with_cold = np.array([[0, 0, 1, 3, 2, 7]])
    without = np.array([[0, 0, 0, 0, 1, 2]])
    i_fair, s_fair = fair.topk(with_cold, k=8)
    i_ref, s_ref = fair.topk(without, k=8)
    assert np.array_equal(i_fair, i_ref)
    np.testing.assert_allclose(s_fair, s_ref, rtol=1e-5, atol=1e-6)  # same input after the drop; float32 matmul order only
    i_old, s_old = old.topk(with_cold, k=8)
    assert not np.allclose(s_old, s_fair, atol=1e-4)  # the zero vectors do change the user state
    assert not set(i_fair[0]) & {1, 2, 3, 7}  # history (including cold items) is still excluded


def test_fused_model_graph_has_no_drop_when_every_item_has_content(synth_models):
    fused, _ = synth_models
    assert not fused.serving_module(5).drop_unknown


@pytest.fixture(scope="module")
def synth_models(tmp_path_factory):
    from synth_rec import make_dataset, make_embeddings

    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models.align import AlignConfig, load_aligned
    from fusionrec.models.align import run as align
    from fusionrec.models.recommender import Recommender
    from fusionrec.train import TrainConfig, build_spec

    root = tmp_path_factory.mktemp("synth14")
    ds_path = make_dataset(root / "ds", n_items=40, n_users=30, events=10)
    embs = make_embeddings(ds_path, root / "emb")
    aligned = align(ds_path, embs, root / "aligned", AlignConfig(dim=8, hidden=16, epochs=2, batch_size=32, device="cpu"))
    ds = DatasetArtifact(ds_path)
    mods, feats, fmask = load_aligned(aligned)
    fmask = fmask.copy()
    fmask[1:].fill(True)  # every item has content here (the synth generator masks a few)
    counts = np.bincount(ds.split("train")["item_idx"], minlength=ds.n_items + 1)
    cfg = TrainConfig(dim=8, layers=1, heads=2, max_len=6, device="cpu")
    torch.manual_seed(0)
    model = Recommender(build_spec(cfg, ds.n_items, mods, feats.shape[2]), torch.from_numpy(feats), torch.from_numpy(fmask),
                        torch.from_numpy(counts > 0)).eval()
    return model, (ds, aligned)


def test_content_alignment_term_pulls_content_vectors_to_the_full_ones(synth_models):
    """The term is the MSE between warm items' content-only and full vectors (full ones fixed), it is 0 without an ID
    channel, and minimising it alone brings the content-only vectors of warm items to the full ones."""
    from fusionrec.train import content_alignment_loss

    model, _ = synth_models
    model = type(model)(model.spec, model.features.clone(), model.feature_mask.clone(), model.id_mask.clone())
    model.load_state_dict(synth_models[0].state_dict())
    vecs, mask = model.channels()
    warm = model.id_mask & model.feature_mask.any(1)
    with torch.no_grad():
        expect = float(((model.content_table(vecs, mask)[warm] - model.fusion(vecs, mask)[0][warm]) ** 2).mean())
    start = float(content_alignment_loss(model).detach())
    assert start == pytest.approx(expect, rel=1e-5) and start > 0  # rel: float32 sums in another order
    id_before = model.id_emb.weight.detach().clone()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("id_emb")], lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = content_alignment_loss(model)
        loss.backward()
        assert model.id_emb.weight.grad is None or float(model.id_emb.weight.grad.abs().max()) == 0.0  # the full side is fixed
        opt.step()
    assert float(content_alignment_loss(model).detach()) < 0.2 * start
    assert torch.equal(model.id_emb.weight, id_before)
    no_id = type(model)(model.spec.model_copy(update={"use_id_embedding": False}), model.features, model.feature_mask, model.id_mask)
    assert float(content_alignment_loss(no_id)) == 0.0


def test_exported_id_graph_drops_unknown_history_items_like_pytorch(tiny_dataset, tmp_path):
    """The served ID-only model gets the same fair input as in evaluation: the ONNX graph leaves cold items out of
    the history (ranking [a, cold, b] as [a, b]) and agrees with PyTorch on every test case."""
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.export.graph import export_onnx, guarded
    from fusionrec.model_repository import feeds, ort_session

    ds = DatasetArtifact(tiny_dataset)
    known = np.zeros(ds.n_items + 1, bool)
    known[np.unique(ds.split("train")["item_idx"].to_numpy())] = True
    assert (~known[1:]).any()  # the tiny catalog has cold items
    model = _id_model(ds.n_items, known, "drop")
    module = model.serving_module(5)
    assert module.drop_unknown
    path = tmp_path / "id.onnx"
    export_onnx(guarded(module, ds.n_items), 6, path)
    sess = ort_session(path)
    _, hist = ds.eval_cases("test", 6)
    cold = np.flatnonzero(~known[1:]) + 1
    hist[::3, -2] = cold[np.arange(len(hist[::3])) % len(cold)]  # put a cold item into every third history
    idx_onnx, score_onnx = sess.run(["ITEM_IDX", "SCORE"], feeds(hist, 6))
    idx_pt, score_pt = model.topk(hist, 5)
    np.testing.assert_allclose(score_onnx, score_pt, rtol=1e-4, atol=1e-4)  # ORT vs PyTorch float32 kernels
    # a history of cold items only reads as empty: every score ties, so only rows with a known item have one order
    readable = known[hist].any(1)
    assert readable.sum() > len(hist) // 2
    assert np.array_equal(idx_onnx[readable], idx_pt[readable])
    # and it is the ranking of the history without its cold items (which an ID model cannot score anyway)
    stripped = np.array([np.concatenate([np.zeros((~known[h]).sum(), np.int64), h[known[h]]]) for h in hist])
    idx_ref, _ = model.topk(stripped, 5)
    assert np.array_equal(idx_onnx[readable], idx_ref[readable])


def test_whitening_and_mlp_adapter_round_trip(synth_models, tmp_path):
    """``whiten`` maps each modality's present rows to identity covariance with buffers saved in the model; an
    ``mlp`` adapter model saves and reloads to the same rankings (strict state dict, no pickle)."""
    from fusionrec.models.recommender import Recommender, load_model, save_model, whitening

    rows = torch.randn(200, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64) + 3.0
    mean, mat = whitening(rows)
    white = (rows.float() - mean) @ mat
    np.testing.assert_allclose(np.cov(white.numpy().T), np.eye(8), atol=1e-3)  # float32 matmul of float64 fit

    base, _ = synth_models
    spec = base.spec.model_copy(update={"whiten": True, "adapter": "mlp"})
    torch.manual_seed(1)
    model = Recommender(spec, base.features.clone(), base.feature_mask.clone(), base.id_mask.clone()).eval()
    assert model.white_matrix.shape == (len(spec.modalities), spec.aligned_dim, spec.aligned_dim)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.spec.whiten and again.spec.adapter == "mlp"
    hist = np.array([[0, 0, 0, 1, 2, 3], [0, 4, 5, 6, 7, 8]])
    i1, s1 = model.topk(hist, 5)
    i2, s2 = again.topk(hist, 5)
    assert np.array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-6)  # same weights and buffers: only float noise


def test_cold_calibration_is_the_mean_log_mean_exp_of_the_id_residual_and_shifts_only_cold_scores(synth_models, tmp_path):
    """``cold_calibration`` = mean over training states of log mean_i exp(full - content-only score) over warm items
    (recomputed here item by item); a model carrying it scores content-only items (cold, and items added later)
    exactly that much higher, warm items unchanged, and keeps it through save/load."""
    from fusionrec.models.recommender import Recommender, load_model, save_model
    from fusionrec.train import cold_calibration

    base, (ds, _) = synth_models
    id_mask = base.id_mask.clone()
    id_mask[1:6] = False  # make sure there are cold items (content only)
    model = Recommender(base.spec, base.features.clone(), base.feature_mask.clone(), id_mask).eval()
    model.load_state_dict({k: v for k, v in base.state_dict().items() if k != "id_mask"}, strict=False)
    X, Y = (torch.from_numpy(a) for a in training_arrays(ds.train_sequences(), model.spec.max_len))
    bias = cold_calibration(model, X, Y, n_states=10**6)  # every training state: the sample order cannot matter

    with torch.no_grad():
        vecs, mask = model.channels()
        full = model.fusion(vecs, mask)[0]
        states = model.user_states(X, full)
        warm = [i for i in range(1, model.n_items + 1) if model.id_mask[i] and model.feature_mask[i].any()]
        per_state = []
        for b, t in torch.nonzero(Y > 0).tolist():
            h = states[b, t].double()
            r = []
            for i in warm:
                content_mask = mask[i:i + 1].clone()
                content_mask[:, -1] = False
                content = model.fusion(vecs[i:i + 1] * content_mask.unsqueeze(-1), content_mask)[0][0]
                r.append(float(h @ full[i].double()) - float(h @ content.double()))
            per_state.append(np.log(np.mean(np.exp(r))))
    assert bias == pytest.approx(float(np.mean(per_state)), rel=1e-4, abs=1e-5)  # float32 batched vs float64 per item
    assert bias != 0.0

    calibrated = Recommender(model.spec.model_copy(update={"cold_bias": bias}), model.features, model.feature_mask, model.id_mask).eval()
    calibrated.load_state_dict(model.state_dict())
    hist = np.array([[0, 0, 0, 7, 8, 9], [0, 10, 11, 12, 13, 14]])

    def all_scores(m):
        idx, score = m.topk(hist, m.n_items)
        out = np.full((len(hist), m.n_items + 1), np.nan)
        np.put_along_axis(out, idx, score, 1)
        return out

    before, after = all_scores(model), all_scores(calibrated)
    cold = ~model.id_mask.numpy() & model.feature_mask.any(1).numpy()
    cold[0] = False
    ok = np.isfinite(before) & (before > -1e7)  # items not excluded by the history
    np.testing.assert_allclose((after - before)[:, cold][ok[:, cold]], bias, atol=1e-5)  # float32 scores
    np.testing.assert_allclose((after - before)[:, ~cold][ok[:, ~cold]], 0.0, atol=1e-6)
    grown = calibrated.with_new_items({m: model.features[1:3, j].numpy() for j, m in enumerate(model.spec.modalities)})
    assert grown.spec.cold_bias == bias
    assert bool(grown.serving_module(5).penalty[-1] == np.float32(bias))
    save_model(calibrated, tmp_path / "cal")
    assert load_model(tmp_path / "cal").spec.cold_bias == bias
    no_id = Recommender(model.spec.model_copy(update={"use_id_embedding": False}), model.features, model.feature_mask, model.id_mask)
    assert cold_calibration(no_id, X, Y) == 0.0


def test_calibrate_cold_leaves_the_trained_weights_alone(tiny_text_image_model, tiny_dataset, tmp_path):
    """The cold bias is computed after training: a model trained with ``calibrate_cold`` has the same weights as
    one trained without it, so with its bias set to 0 it ranks every test case the same (what the quality
    benchmarks' ``+ cold bias`` rows rely on: one training, two operating points)."""
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.evaluate import evaluate
    from fusionrec.models.recommender import load_model
    from fusionrec.train import TrainConfig, run

    plain_dir, aligned, _, _ = tiny_text_image_model
    cfg = TrainConfig(**{**json.loads((plain_dir / "manifest.json").read_text())["params"], "calibrate_cold": True})
    biased = load_model(run(tiny_dataset, aligned, tmp_path / "biased", cfg))
    plain = load_model(plain_dir)
    assert biased.spec.cold_bias != 0.0 and plain.spec.cold_bias == 0.0
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(biased.state_dict()[k], v, rtol=0, atol=0, msg=k)
    biased.spec = biased.spec.model_copy(update={"cold_bias": 0.0})
    ds = DatasetArtifact(tiny_dataset)
    a, b = (evaluate(m, ds, "test", ks=(10,), k_max=10, max_len=cfg.max_len).per_case for m in (plain, biased))
    np.testing.assert_array_equal(a["ndcg@10"].to_numpy(), b["ndcg@10"].to_numpy())
    # the bias set afterwards on the model trained without it is the one training set (same windows, same seed)
    from fusionrec.train import with_cold_calibration

    after = with_cold_calibration(load_model(plain_dir), ds, TrainConfig(**json.loads((plain_dir / "manifest.json").read_text())["params"]))
    assert after.spec.cold_bias == pytest.approx(load_model(tmp_path / "biased").spec.cold_bias, rel=1e-5)
