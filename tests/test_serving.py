"""A real Triton server (nvidia-pytriton's tritonserver) on loopback, queried over gRPC with tritonclient.

One server per test session (start-up is several seconds), serving the exported test model under two names.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusionrec.data.dataset import DatasetArtifact
from fusionrec.model_repository import feeds, ort_session
from fusionrec.serving.server import free_ports

sys.path.insert(0, str(Path(__file__).parent))
from test_export import K, MAX_LEN, export_standin  # noqa: E402

MODEL = "standin"


@pytest.fixture(scope="session")
def serving_repo(tiny_dataset, tmp_path_factory) -> Path:
    return export_standin(tiny_dataset, tmp_path_factory.mktemp("serving") / "repo", max_queue_delay_microseconds=20000)


@pytest.fixture(scope="session")
def server(serving_repo):
    from fusionrec.serving.server import start_server

    g, h, m = free_ports(3)
    handle = start_server({MODEL: serving_repo, "second": serving_repo}, grpc_port=g, http_port=h, metrics_port=m)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def histories(tiny_dataset) -> np.ndarray:
    return DatasetArtifact(tiny_dataset).eval_cases("test", MAX_LEN)[1]


@pytest.fixture(scope="session")
def reference(serving_repo):
    sess = ort_session(serving_repo / MODEL / "1" / "model.onnx")
    return lambda h: sess.run(["ITEM_IDX", "SCORE"], feeds(np.ascontiguousarray(h, dtype=np.int64), MAX_LEN))


def assert_same_topk(idx: np.ndarray, score: np.ndarray, ref_idx: np.ndarray, ref_score: np.ndarray) -> None:
    """Served lists equal the in-process ones up to float noise: Triton batches requests into other
    shapes (and runs another thread count) than the reference call, and CPU kernels may round
    differently per shape, so items whose scores are within 1e-5 may swap; nothing else may."""
    from fusionrec.export.parity import compare_topk

    res = compare_topk(ref_idx, ref_score, idx, score, score_tolerance=1e-5, tie_tolerance=1e-5)
    assert res["n_failures"] == 0, res["failures"][:3]


def _input(h: np.ndarray, dtype: str = "INT64"):
    import tritonclient.grpc as grpc

    inp = grpc.InferInput("HISTORY", list(h.shape), dtype)
    inp.set_data_from_numpy(h)
    return [inp]


def _stats(client, model=MODEL, at_least: int | None = None, timeout_s: float = 10.0) -> tuple[int, int]:
    """Triton's (inference_count, execution_count) for ``model``.

    Triton updates its statistics after the responses are sent, so on a loaded machine a read right
    after the last response can miss the final batches: with ``at_least``, poll (bounded) until the
    inference count has reached it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        s = client.get_inference_statistics(model).model_stats[0]
        if at_least is None or int(s.inference_count) >= at_least or time.monotonic() > deadline:
            return int(s.inference_count), int(s.execution_count)
        time.sleep(0.05)


async def _gather(url: str, arrays: list[np.ndarray], model=MODEL, dtypes: list[str] | None = None):
    """Send every array as its own request, all in flight at once; results or exceptions, in order."""
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(url)
    try:
        dtypes = dtypes or ["INT64"] * len(arrays)
        return await asyncio.gather(*(client.infer(model, _input(a, d)) for a, d in zip(arrays, dtypes)), return_exceptions=True)
    finally:
        await client.close()


def test_grpc_equals_onnxruntime_in_process(server, histories, reference):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc_url)
    for name in (MODEL, "second"):  # two models on one server
        for s in range(0, len(histories), 64):
            h = histories[s: s + 64]
            res = client.infer(name, _input(h))
            idx, score = reference(h)
            assert res.as_numpy("ITEM_IDX").dtype == np.int64
            assert_same_topk(res.as_numpy("ITEM_IDX"), res.as_numpy("SCORE"), idx, score)


def test_concurrent_requests_are_batched(server, histories, reference):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc_url)
    inf0, exe0 = _stats(client)
    rows = [histories[i % len(histories)][None] for i in range(64)]
    results = asyncio.run(_gather(server.grpc_url, rows))
    for r, h in zip(results, rows):
        assert not isinstance(r, Exception), r
        assert_same_topk(r.as_numpy("ITEM_IDX"), r.as_numpy("SCORE"), *reference(h))
    inf1, exe1 = _stats(client, at_least=inf0 + 64)
    assert inf1 - inf0 == 64
    assert exe1 - exe0 < inf1 - inf0, f"64 concurrent requests ran in {exe1 - exe0} executions: not batched"


def test_malformed_requests_get_errors_and_server_keeps_serving(server, histories, reference, serving_repo):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    from fusionrec.serving.client import RecommendClient

    client = grpc.InferenceServerClient(server.grpc_url)
    good = histories[:2]
    with pytest.raises(InferenceServerException, match="INT32|data-type"):
        client.infer(MODEL, _input(good.astype(np.int32), "INT32"))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer(MODEL, _input(np.zeros((1, MAX_LEN + 3), np.int64)))
    with pytest.raises(InferenceServerException, match="batch"):
        client.infer(MODEL, _input(np.repeat(good, 40, axis=0)))  # 80 > max_batch_size 64
    n_items = json.loads((serving_repo / MODEL / "export_report.json").read_text())["n_items"]
    bad = good.copy()
    bad[1, -1] = n_items + 7  # out of range: that row gets the per-row status, its neighbour is answered
    res = client.infer(MODEL, _input(bad))
    assert (res.as_numpy("ITEM_IDX")[1] == -1).all() and np.isnan(res.as_numpy("SCORE")[1]).all()
    np.testing.assert_array_equal(res.as_numpy("ITEM_IDX")[0], reference(good[:1])[0][0])
    with pytest.raises(ValueError, match="outside"):
        RecommendClient(server.grpc_url, model=MODEL, repo=serving_repo).topk(bad, 5)
    # still serving
    np.testing.assert_array_equal(client.infer(MODEL, _input(good)).as_numpy("ITEM_IDX"), reference(good)[0])
    assert client.is_server_live() and client.is_model_ready(MODEL)


@pytest.mark.parametrize("kind", ["out_of_range", "wrong_dtype"])
def test_one_bad_request_among_31_good_ones(server, histories, reference, kind):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc_url)
    inf0, exe0 = _stats(client)
    rows = [histories[i % len(histories)][None].copy() for i in range(32)]
    dtypes = ["INT64"] * 32
    if kind == "out_of_range":
        rows[13][0, -1] = 10_000
    else:
        rows[13] = rows[13].astype(np.int32)
        dtypes[13] = "INT32"
    results = asyncio.run(_gather(server.grpc_url, rows, dtypes=dtypes))
    for i, (r, h) in enumerate(zip(results, rows)):
        if i == 13:
            if kind == "out_of_range":
                assert (r.as_numpy("ITEM_IDX") == -1).all()
            else:
                assert isinstance(r, Exception)
            continue
        assert not isinstance(r, Exception), f"good request {i} failed: {r}"
        assert_same_topk(r.as_numpy("ITEM_IDX"), r.as_numpy("SCORE"), *reference(h))
    n_reached = 32 if kind == "out_of_range" else 31
    inf1, exe1 = _stats(client, at_least=inf0 + n_reached)
    assert inf1 - inf0 == n_reached
    assert exe1 - exe0 < n_reached  # they really shared batches with the bad one


def test_recommend_client_sync_and_async(server, serving_repo, histories, reference):
    import tritonclient.grpc as grpc

    from fusionrec.ranking import TopKRanker
    from fusionrec.serving.client import AsyncRecommendClient, RecommendClient

    ids = json.loads((serving_repo / MODEL / "item_ids.json").read_text())
    pop = json.loads((serving_repo / MODEL / "popular.json").read_text())
    stats = grpc.InferenceServerClient(server.grpc_url)
    with RecommendClient(server.grpc_url, model=MODEL, repo=serving_repo) as client:
        assert isinstance(client, TopKRanker)
        idx, score = client.topk(histories[:70], 5)  # 70 > max batch: split into two calls
        ref_i, ref_s = reference(histories[:70])
        assert_same_topk(idx, score, ref_i[:, :5], ref_s[:, :5])
        h = histories[3]
        ext = [ids[i] for i in h[h > 0]]
        recs = client.recommend(ext, k=4)
        assert [r[0] for r in recs] == [ids[i] for i in reference(h[None])[0][0][:4]]
        # cold user: popularity fallback, the model is not called
        inf0, _ = _stats(stats)
        cold = client.recommend([], k=3)
        assert [r[0] for r in cold] == pop["item_id"][:3] and _stats(stats)[0] == inf0
        with pytest.raises(ValueError, match="unknown item id.*'nope'"):
            client.recommend([ext[0], "nope"], k=3)
        with pytest.raises(ValueError, match="top-10"):
            client.recommend(ext, k=K + 1)
        with pytest.raises(TimeoutError):
            RecommendClient(server.grpc_url, model=MODEL, repo=serving_repo, timeout_s=1e-6).topk(histories[:64], 5)

    async def run_async():
        async with AsyncRecommendClient(server.grpc_url, model=MODEL, repo=serving_repo) as ac:
            return await ac.recommend(ext, k=4), (await ac.topk(histories[:70], 5))[0]

    arecs, aidx = asyncio.run(run_async())
    assert [r[0] for r in arecs] == [r[0] for r in recs]
    np.testing.assert_array_equal(aidx, idx)


def test_client_excludes_the_whole_history_over_grpc(server, serving_repo, tiny_dataset, reference):
    """Issue 13 item 1, served: a history longer than max_len is read as its last max_len items, but none of its
    items comes back (the client sends them all as EXCLUDE); old behaviour: only the window was excluded."""
    from fusionrec.serving.client import RecommendClient

    ds = DatasetArtifact(tiny_dataset)
    ids = json.loads((serving_repo / MODEL / "item_ids.json").read_text())
    long_users = [g["item_idx"].to_numpy() for _, g in ds.events.groupby("user_idx") if len(g) > MAX_LEN]
    assert long_users, "the fixture needs users with more events than max_len"
    leaked_before = 0
    with RecommendClient(server.grpc_url, model=MODEL, repo=serving_repo) as client:
        for seq in long_users:
            ext = [ids[i] for i in seq]
            window = np.zeros((1, MAX_LEN), np.int64)
            window[0] = seq[-MAX_LEN:]
            plain = set(reference(window)[0][0].tolist())  # the graph with EXCLUDE left at its fill: window only
            leaked_before += bool(plain & set(seq[:-MAX_LEN].tolist()))
            recs = client.recommend(ext, k=K)
            assert not {r[0] for r in recs} & set(ext)
            # extra consumed ids (not in the history) are excluded too
            extra = [r[0] for r in recs[:2]]
            assert not {r[0] for r in client.recommend(ext, k=K, consumed=extra)} & set(extra)
    assert leaked_before > 0, "without EXCLUDE an earlier-consumed item would have come back"


def test_client_retries_unavailable_then_fails(serving_repo, histories):
    from tritonclient.utils import InferenceServerException

    from fusionrec.serving.client import RecommendClient

    (port,) = free_ports(1)
    client = RecommendClient(f"127.0.0.1:{port}", model=MODEL, repo=serving_repo, retries=2, backoff_s=0.1, timeout_s=2)
    t0 = time.perf_counter()
    with pytest.raises(InferenceServerException, match="UNAVAILABLE|failed to connect|unavailable"):
        client.topk(histories[:2], 3)
    assert time.perf_counter() - t0 >= 0.1 + 0.2  # two backoffs: it retried


def test_cli_recommend_prints_ranked_ids(server, serving_repo, histories):
    from typer.testing import CliRunner

    from fusionrec.cli import app

    ids = json.loads((serving_repo / MODEL / "item_ids.json").read_text())
    h = histories[5]
    hist = ",".join(ids[i] for i in h[h > 0])
    res = CliRunner().invoke(app, ["recommend", "--user-history", hist, "-k", "3", "--url", server.grpc_url,
                                   "--model", MODEL, "--repo", str(serving_repo)])
    assert res.exit_code == 0, res.output
    lines = [ln.split() for ln in res.stdout.strip().splitlines()]
    assert [ln[0] for ln in lines] == ["1", "2", "3"] and all(ln[1] in ids for ln in lines)
    bad = CliRunner().invoke(app, ["recommend", "--user-history", "no-such-item", "--url", server.grpc_url,
                                   "--model", MODEL, "--repo", str(serving_repo)])
    assert bad.exit_code == 2 and "unknown item id" in bad.output


def test_cli_recommend_excludes_the_whole_history_like_the_client(server, serving_repo, tiny_dataset):
    """``fusionrec recommend`` answers what ``RecommendClient.recommend`` answers: for a history longer than
    max_len no history item comes back, including the ones before the window the model reads."""
    from typer.testing import CliRunner

    from fusionrec.cli import app
    from fusionrec.serving.client import RecommendClient

    ds = DatasetArtifact(tiny_dataset)
    ids = json.loads((serving_repo / MODEL / "item_ids.json").read_text())
    long_users = [g["item_idx"].to_numpy() for _, g in ds.events.groupby("user_idx") if len(g) > MAX_LEN]
    assert long_users, "the fixture needs users with more events than max_len"
    with RecommendClient(server.grpc_url, model=MODEL, repo=serving_repo) as client:
        for seq in long_users[:3]:
            ext = [ids[i] for i in seq]
            res = CliRunner().invoke(app, ["recommend", "--user-history", ",".join(ext), "-k", str(K), "--url", server.grpc_url,
                                           "--model", MODEL, "--repo", str(serving_repo)])
            assert res.exit_code == 0, res.output
            printed = [ln.split()[1] for ln in res.stdout.strip().splitlines()]
            assert len(printed) == K and not set(printed) & set(ext)
            assert printed == [r[0] for r in client.recommend(ext, k=K)]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _serve_process(repo: Path) -> tuple[subprocess.Popen, int]:
    """`fusionrec serve repo` as a child process on free ports (output piped); returns it and its gRPC port."""
    g, h, m = free_ports(3)
    cli = Path(sys.executable).parent / "fusionrec"
    proc = subprocess.Popen([str(cli), "serve", str(repo), "--grpc-port", str(g), "--http-port", str(h), "--metrics-port", str(m)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "FUSIONREC_LOG_LEVEL": "WARNING"})
    return proc, g


def test_serve_subprocess_sigterm_leaves_no_process(serving_repo):
    import tritonclient.grpc as grpc

    proc, g = _serve_process(serving_repo)
    try:
        client = grpc.InferenceServerClient(f"127.0.0.1:{g}")
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if client.is_model_ready(MODEL):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        assert client.is_model_ready(MODEL)
        kids = _descendants(proc.pid)
        cmdlines = {p: _cmdline(p) for p in kids if _alive(p)}
        assert any("tritonserver" in c for c in cmdlines.values()), cmdlines
        assert any("stub" in c for c in cmdlines.values()), cmdlines  # the Python-backend stub(s)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in kids):
            time.sleep(0.2)
        left = {p: cmdlines.get(p, "?") for p in kids if _alive(p)}
        assert not left, f"orphaned after SIGTERM: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_subprocess_sigterm_during_start_up_stops_triton(serving_repo):
    """A SIGTERM that lands while `fusionrec serve` is still starting (Triton up, the model loading) stops it cleanly
    (exit 0, no process left); before the handlers were installed ahead of the start, the default handler killed the
    CLI (exit 143), skipping its own shutdown of Triton."""
    proc, _ = _serve_process(serving_repo)
    seen: dict[int, str] = {}

    def look() -> None:
        for p in _descendants(proc.pid):
            if p not in seen and _alive(p):
                try:
                    seen[p] = _cmdline(p)
                except OSError:
                    pass

    try:
        deadline = time.time() + 90
        while time.time() < deadline and not any("tritonserver" in c for c in seen.values()):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            look()
            time.sleep(0.05)
        assert any("tritonserver" in c for c in seen.values()), seen
        proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 90
        while proc.poll() is None and time.time() < deadline:
            look()  # processes started after the signal (backend stubs) must go too
            time.sleep(0.05)
        assert proc.wait(timeout=5) == 0, proc.stdout.read().decode()[-3000:]
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in seen):
            time.sleep(0.2)
        left = {p: c for p, c in seen.items() if _alive(p)}
        assert not left, f"left after SIGTERM during start-up: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_health_is_ready_only_once_every_model_is_loaded(server, serving_repo):
    """The serving image's HEALTHCHECK (fusionrec.serving.health): Triton up with nothing loaded yet (pytriton's
    explicit model-control mode, before it loads the models) is ready for Triton's own probe but not here;
    with the models loaded it is ready, from Python and as the `python -m` command the image runs."""
    import tritonclient.grpc as grpc
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from fusionrec.serving.health import models_ready

    def probe(url: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusionrec.serving.health", "--url", url, *args], capture_output=True, text=True)

    ok, why = models_ready(server.http_url, [MODEL, "second"])
    assert ok, why
    assert not models_ready(server.http_url, [MODEL, "third"])[0]  # one missing model is enough to wait
    done = probe(server.http_url, "--repo", str(serving_repo))  # the repository's one model, served as MODEL
    assert done.returncode == 0 and MODEL in done.stdout, done.stderr

    g, h, m = free_ports(3)
    bare = Triton(config=TritonConfig(grpc_address="127.0.0.1", http_address="127.0.0.1", metrics_address="127.0.0.1",
                                      grpc_port=g, http_port=h, metrics_port=m, exit_timeout_secs=5),
                  security_config=TritonSecurityConfig(restricted_endpoints=[]))
    bare.run()
    try:
        assert grpc.InferenceServerClient(f"127.0.0.1:{g}").is_server_ready()  # Triton's own probe: ready
        done = probe(f"127.0.0.1:{h}", "--repo", str(serving_repo))
        assert done.returncode == 1 and f"{MODEL} (HTTP 400)" in done.stderr, (done.returncode, done.stderr)
    finally:
        bare.stop()
    ok, why = models_ready(f"127.0.0.1:{h}", [MODEL], timeout_s=1)  # stopped: no answer, not ready
    assert not ok and "no answer" in why, why
