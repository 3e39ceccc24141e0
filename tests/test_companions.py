"""The text-query and explanation models served beside the ranker: export, real Triton, gRPC client, CLI.

One tiny text+image model (MiniLM and EfficientNet-Lite0 from PyPI, real align and train) exported with
``--aligned`` so the repository holds ``tq``, ``tq_query`` and ``tq_explain``; one real pytriton server.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fusionrec.cli import app
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.model_repository import ort_session
from fusionrec.query import QueryError, QueryTokenizer

from fusionrec.serving.server import free_ports  # noqa: E402

NAME = "tq"
K = 20


@pytest.fixture(scope="module")
def repo(tiny_text_image_model, tiny_dataset, tmp_path_factory) -> Path:
    model, aligned, _, _ = tiny_text_image_model
    out = tmp_path_factory.mktemp("companions") / "repo"
    res = CliRunner().invoke(app, ["export", str(model), str(tiny_dataset), str(out), "--name", NAME, "-k", str(K), "--cpu",
                                   "--aligned", str(aligned), "--set", "explain_k=5"])
    assert res.exit_code == 0, res.output
    assert "text query model" in res.output and "explanation model" in res.output
    return out


@pytest.fixture(scope="module")
def server(repo):
    from fusionrec.serving.server import start_server

    g, h, m = free_ports(3)
    handle = start_server(repo, grpc_port=g, http_port=h, metrics_port=m)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server, repo):
    from fusionrec.serving.client import RecommendClient

    with RecommendClient(server.grpc_url, model=NAME, repo=repo) as c:
        yield c


def test_repository_holds_three_models_in_one_manifest(repo):
    from fusionrec.serving.config import validate

    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["models"] == [NAME, f"{NAME}_explain", f"{NAME}_query"]
    assert manifest["companions"] == {f"{NAME}_explain": "explain", f"{NAME}_query": "query"}
    assert [d.name for d in validate(repo)] == [NAME, f"{NAME}_explain", f"{NAME}_query"]
    assert (repo / f"{NAME}_query" / "tokenizer").is_dir()


def test_server_binds_every_kind(server):
    assert {n: m.kind for n, m in server.models.items()} == {NAME: "ranker", f"{NAME}_query": "query", f"{NAME}_explain": "explain"}


def test_query_over_grpc_equals_the_exported_graph(client, repo):
    tok = QueryTokenizer(repo / f"{NAME}_query" / "tokenizer")
    queries = ["cooking recipes for dinner", "murder detectives", "calm nature podcasts"]
    sess = ort_session(repo / f"{NAME}_query" / "1" / "model.onnx")
    ids, mask = tok(queries)
    ref_i, ref_s = sess.run(["ITEM_IDX", "SCORE"], {"INPUT_IDS": ids, "ATTENTION_MASK": mask})
    idx, score = client.query_topk(queries, k=5)
    assert np.array_equal(idx, ref_i[:, :5])
    np.testing.assert_allclose(score, ref_s[:, :5], atol=1e-6)  # same graph, same runtime: float noise at most
    recs = client.query("cooking recipes for dinner", k=5)
    assert [r[0] for r in recs] == [client.item_ids[i] for i in ref_i[0, :5]]


def test_a_history_hands_over_to_the_sequential_model(client, tiny_dataset):
    ds = DatasetArtifact(tiny_dataset)
    hist = [str(ds.item_ids[1]), str(ds.item_ids[2])]
    assert client.query("anything at all", k=5, history=hist) == client.recommend(hist, k=5)


def test_async_client_queries_like_the_sync_client(server, repo, client, tiny_dataset):
    """Same answers and the same refusals as ``RecommendClient``; two requests in flight (max_batch_size=2, 3 queries)."""
    import asyncio

    from fusionrec.serving.client import AsyncRecommendClient

    queries = ["cooking recipes for dinner", "murder detectives", "calm nature podcasts"]
    ds = DatasetArtifact(tiny_dataset)
    hist = [str(ds.item_ids[1]), str(ds.item_ids[2])]

    async def run():
        async with AsyncRecommendClient(server.grpc_url, model=NAME, repo=repo, max_batch_size=2) as ac:
            got = {"topk": await ac.query_topk(queries, k=5), "query": await ac.query(queries[0], k=5),
                   "history": await ac.query("anything at all", k=5, history=hist),
                   "mix": await ac.query(queries[1], k=5, history=hist[:1], mix=True)}
            errors = []
            for call in (lambda: ac.query("", k=5), lambda: ac.query("спокойные вечерние подкасты", k=5),
                         lambda: ac.query_topk(queries, k=K + 1), lambda: ac.query(queries[0], k=5, history=["nope"], mix=True),
                         lambda: ac.query(queries[0], k=5, history=hist[:1], mix=True, mix_until=0)):
                with pytest.raises(ValueError) as exc:  # QueryError is a ValueError
                    await call()
                errors.append((type(exc.value), str(exc.value)))
            return got, errors

    got, errors = asyncio.run(run())
    idx, score = client.query_topk(queries, k=5)
    assert np.array_equal(got["topk"][0], idx)
    np.testing.assert_allclose(got["topk"][1], score, atol=1e-6)  # same graph; another batch composition: float noise at most
    assert [r[0] for r in got["query"]] == [r[0] for r in client.query(queries[0], k=5)]
    assert got["history"] == client.recommend(hist, k=5)
    assert [r[0] for r in got["mix"]] == [r[0] for r in client.query(queries[1], k=5, history=hist[:1], mix=True)]
    expected = []
    for call in (lambda: client.query("", k=5), lambda: client.query("спокойные вечерние подкасты", k=5),
                 lambda: client.query_topk(queries, k=K + 1), lambda: client.query(queries[0], k=5, history=["nope"], mix=True),
                 lambda: client.query(queries[0], k=5, history=hist[:1], mix=True, mix_until=0)):
        with pytest.raises(ValueError) as exc:
            call()
        expected.append((type(exc.value), str(exc.value)))
    assert errors == expected
    assert [t for t, _ in errors[:2]] == [QueryError, QueryError] and "top-" in errors[2][1] and "'nope'" in errors[3][1]


def test_a_one_event_history_mixes_the_query_and_the_sequence(client):
    """``query(..., history=[one item], mix=True)``: the two served lists merged by weighted reciprocal-rank fusion."""
    from fusionrec.query import mix_rankings

    text, k = "true crime detective stories", 5
    first = client.query(text, k=1)[0][0]
    hist = [first]  # the query's own best item: it must not come back
    q = [i for i, _ in client.query(text, k=k + 1)]  # the lists the mix reads, k + len(history) deep
    s = [i for i, _ in client.recommend(hist, k=k + 1)]
    mixed = client.query(text, k=k, history=hist, mix=True)
    assert mixed == mix_rankings(q, s, hist, k)  # same lists, same pure function: exactly the same floats
    ids = [i for i, _ in mixed]
    assert len(ids) == k and first not in ids and set(ids) <= set(q) | set(s)
    assert set(ids) & set(s) and set(ids) & set(q), (q, s, ids)  # items from both served lists
    # with c=1 the head of each list counts more: on this catalog the query's best (after the history) and the
    # sequence's best both make the top k
    even = [i for i, _ in client.query(text, k=k, history=hist, mix=True, rrf_c=1.0)]
    assert len(even) == k and q[1] in even and s[0] in even and first not in even, (q, s, even)
    # from mix_until events on, the sequential model alone; without mix, as before
    hist3 = [first, *s[:2]]
    assert client.query(text, k=k, history=hist3, mix=True) == client.recommend(hist3, k=k)
    assert client.query(text, k=k, history=hist) == client.recommend(hist, k=k)


@pytest.mark.parametrize("bad, why", [("", "empty query"), ("спокойные вечерние подкасты", "unsupported script"),
                                      ("podcast " * 60, "too long")])
def test_bad_queries_fail_in_the_client_and_the_server_keeps_answering(client, bad, why):
    with pytest.raises(QueryError, match=why):
        client.query(bad, k=5)
    assert len(client.query("space rockets", k=5)) == 5


def test_a_bad_raw_row_does_not_fail_its_batch(client, repo):
    """Out-of-vocabulary token ids sent raw (bypassing the client checks) come back as -1 / NaN rows only."""
    tok = QueryTokenizer(repo / f"{NAME}_query" / "tokenizer")
    ids, mask = tok(["football tactics"])
    bad = ids.copy()
    bad[0, 1] = 10 ** 9

    def send(arr):
        return client._infer_named(f"{NAME}_query", {"INPUT_IDS": arr, "ATTENTION_MASK": mask}, ["ITEM_IDX", "SCORE"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, [bad if i % 4 == 0 else ids for i in range(16)]))
    for i, r in enumerate(results):
        if i % 4 == 0:
            assert (r["ITEM_IDX"] == -1).all() and np.isnan(r["SCORE"]).all()
        else:
            assert (r["ITEM_IDX"] >= 1).all() and np.array_equal(r["ITEM_IDX"], results[1]["ITEM_IDX"])


def test_explanations_over_grpc_match_pytorch(client, tiny_text_image_model, tiny_dataset):
    from fusionrec.explain import explain
    from fusionrec.models import load_model

    model = load_model(tiny_text_image_model[0])
    _, hist = DatasetArtifact(tiny_dataset).eval_cases("test", model.spec.max_len)
    hist = hist[:6].copy()
    hist[5] = 0  # an empty history: popularity fallback, nothing to explain
    idx, score, served = client.topk(hist, 4, explain=True)
    assert served[5] is None and all(served[b] is not None for b in range(5))
    local = explain(model, hist[:5], idx[:5])
    for b in range(5):
        for s_ex, l_ex, sc in zip(served[b], local[b], score[b]):
            assert s_ex.item_idx == l_ex.item_idx
            assert s_ex.score == pytest.approx(float(sc), abs=1e-4)  # the explain graph re-scores like the ranker
            assert s_ex.channels == ["image", "text", "id"] or s_ex.channels == ["text", "image", "id"]
            assert sum(s_ex.channel_scores) == pytest.approx(s_ex.score, abs=1e-4)
            np.testing.assert_allclose([d for _, d in s_ex.history], [d for _, d in l_ex.history], atol=1e-4)
    with pytest.raises(ValueError, match="at most 5 items"):
        client.topk(hist[:1], 6, explain=True)


def test_cli_query_and_explain(server, repo, tiny_dataset):
    runner = CliRunner()
    base = ["recommend", "--url", server.grpc_url, "--model", NAME, "--repo", str(repo), "-k", "3"]
    res = runner.invoke(app, [*base, "--query", "true crime detective stories"])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.stdout.splitlines() if x.strip()]
    assert len(lines) == 3 and lines[0].split()[0] == "1"
    ds = DatasetArtifact(tiny_dataset)
    _, hist = ds.eval_cases("test", 20)
    ids = ",".join(str(ds.item_ids[i]) for i in hist[0] if i > 0)
    res = runner.invoke(app, [*base, "--user-history", ids, "--explain"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("modalities (share of the score)") == 3 and "because you had" in res.stdout
    for bad in ("", "安静的晚间播客"):
        res = runner.invoke(app, [*base, "--query", bad])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "error:" in res.output



def test_cli_query_mixed_with_a_short_history(server, repo, client):
    from fusionrec.query import MIX_UNTIL, RRF_C

    runner = CliRunner()
    base = ["recommend", "--url", server.grpc_url, "--model", NAME, "--repo", str(repo), "-k", "4"]
    text = "calm nature podcasts"
    hist = [client.query("football tactics", k=1)[0][0]]
    res = runner.invoke(app, [*base, "--query", text, "--user-history", hist[0], "--mix"])
    assert res.exit_code == 0, res.output
    assert [line.split()[1] for line in res.stdout.splitlines() if line.strip()] == \
        [i for i, _ in client.query(text, k=4, history=hist, mix=True)]
    assert "reciprocal-rank fusion" in res.stderr and "weight 0.67" in res.stderr
    help_text = runner.invoke(app, ["recommend", "--help"], terminal_width=200).output
    assert f"w/({RRF_C:g} + rank)" in help_text and f"[default: {MIX_UNTIL}]" in help_text  # the help states the library's defaults
    for bad in (["--mix"], ["--query", text, "--user-history", hist[0], "--mix", "--explain"]):
        res = runner.invoke(app, [*base, *bad])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "error:" in res.output and "--mix" in res.output, res.output
    res = runner.invoke(app, [*base, "--query", text, "--user-history", hist[0], "--mix", "--mix-until", "0"])
    assert res.exit_code == 2 and "--mix-until" in res.output and "Traceback" not in res.output, res.output


def test_without_aligned_there_is_no_query_model_and_a_clear_error(tiny_text_image_model, tiny_dataset, tmp_path):
    from fusionrec.export import ExportConfig, run
    from fusionrec.serving.client import RecommendClient

    model, _, _, _ = tiny_text_image_model
    out = run(model, tiny_dataset, tmp_path / "repo", ExportConfig(name=NAME, k=K, instance_kind="KIND_CPU", explain=False))
    assert json.loads((out / "manifest.json").read_text())["models"] == [NAME]
    c = RecommendClient.__new__(RecommendClient)  # no server needed: the check happens before any call
    c.repo, c.model = out, NAME
    with pytest.raises(ValueError, match="--aligned"):
        c._companion_dir("_query", "a text query")


def test_ab_report_shows_explained_recommendations(repo, tiny_dataset, tmp_path):
    from fusionrec.ab import ABConfig, run

    out = run(repo, repo, tiny_dataset, tmp_path / "ab", ABConfig(bootstrap_resamples=200, k_max=K))
    page = (out / "report.html").read_text()
    assert "Explained recommendations (treatment)" in page
    assert page.count('class="rec"') == 9  # 3 cases x 3 items
    assert 'class="thumb" src="data:image/png;base64,' in page and 'class="bar"' in page
    md = (out / "report.md").read_text()
    assert md.count("because of:") == 9 and "image " in md and "text " in md
