"""The images for real: built by ``docker/build.sh --local``, run by a local Docker engine.

Deselected by ``make test`` (no engine there); ``make test-containers`` starts the engine
(``docker/local-engine.sh up``), builds the images and runs these with ``pytest --containers``.

- every image runs its smoke command as the unprivileged user, with a HEALTHCHECK, and carries no
  pip CA / secret;
- the whole pipeline runs through kfp.local's DockerRunner, each step in its own image, and
  gives the same dataset and the same test metrics as the subprocess runner;
- the serving image serves the pipeline's exported repository (mounted read-only) and answers
  tritonclient gRPC calls from the host with the library's top-K.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusionrec.components import images

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import TINY_ARGS  # noqa: E402
from test_serving import free_ports  # noqa: E402

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[1]
ALL_IMAGES = [*images.IMAGES, *images.SERVING_IMAGES]


def docker_cli() -> str:
    return subprocess.run([str(ROOT / "docker/local-engine.sh"), "cli"], check=True, capture_output=True, text=True).stdout.strip()


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([docker_cli(), *args], check=check, capture_output=True, text=True, timeout=timeout)


def step_key(step: str) -> str:
    """Run-summary step name -> pipeline step: 'encode[text]' -> encode, 'export-onnx-2' -> export_onnx."""
    return re.sub(r"-\d+$", "", step.split("[")[0]).replace("-", "_")


@pytest.mark.parametrize("key", ALL_IMAGES)
def test_image_runs_as_non_root_with_healthcheck_and_no_ca(key):
    ref = images.image(key)
    config = json.loads(docker("image", "inspect", ref).stdout)[0]["Config"]
    assert config["User"] == "1000:1000", f"{ref} runs as {config['User']!r}"
    assert config.get("Healthcheck", {}).get("Test"), f"{ref} has no HEALTHCHECK"
    # the smoke command, offline, as the image's user
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "fusionrec", ref, "--version").stdout
    assert out.strip() == f"fusionrec {images.DEFAULT_TAG}", out
    who = docker("run", "--rm", "--network", "none", "--entrypoint", "id", ref, "-u").stdout.strip()
    assert who == "1000"
    # the build-time CA (a BuildKit secret) left nothing behind: no secret file, no pip setting,
    # not in any layer's command or environment
    check = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", ref, "-c",
                   "ls /run/secrets 2>/dev/null; pip config list | grep -i cert; env | grep -i -E '^(PIP_CERT|SSL_CERT|REQUESTS_CA)'; true")
    assert check.stdout.strip() == "", check.stdout
    history = docker("image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", ref).stdout
    assert "ca-certificates.crt" not in history and "PIP_CERT=/" not in history.replace("PIP_CERT=/run/secrets/pip_ca", "")


def _run(runner: str, workdir: Path) -> dict:
    from fusionrec.pipelines.local import run_local

    summary = run_local(dict(TINY_ARGS), workdir, cache=False, runner=runner, log_file=workdir.parent / f"{runner}.log")
    assert summary["status"] == "SUCCESS", (summary["error"], (workdir.parent / f"{runner}.log").read_text()[-3000:])
    return summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """The tiny demo pipeline, once in containers and once in this Python environment.

    The host run gets an empty encoder cache (the containers' is empty too), so both compute
    every embedding instead of the host reading what an earlier run left in ~/.cache/fusionrec.
    """
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONREC_CACHE", str(root / "encoder-cache"))
        return {runner: _run(runner, root / runner) for runner in ("docker", "subprocess")}


def _outputs(summary: dict) -> dict[str, dict[str, Path]]:
    return {s["step"]: {k: Path(v) for k, v in s["outputs"].items()} for s in summary["steps"]}


def test_every_step_ran_in_its_own_image(runs):
    summary = runs["docker"]
    assert summary["runner"] == "docker"
    seen = set()
    for s in summary["steps"]:
        assert s["status"] == "SUCCESS", s
        assert s["image"] == images.step_image(step_key(s["step"])), s
        seen.add(step_key(s["step"]))
    assert {"ingest", "encode_plan", "encode", "merge_embeddings", "align", "train_fusion", "train_baseline",
            "export_onnx", "ab_evaluate"} <= seen
    assert {s["image"] for s in summary["steps"]} >= {images.image(k) for k in ("base", "gpu", "encode", "ab")}
    assert all(s["image"] is None for s in runs["subprocess"]["steps"])


# Test metrics: both runs execute the same code on the same package versions (the images are
# built with the host venv's versions as pip constraints) and the same 2 CPU threads, so they are
# expected bit-equal; 1e-6 relative allows only float-summation-order noise, should a BLAS pick
# another kernel inside a container.
METRIC_RTOL = 1e-6


def _assert_close(a, b, path="") -> float:
    """Assert a ~ b (floats to METRIC_RTOL, everything else equal); returns the largest relative float difference."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        return max([_assert_close(a[k], b[k], f"{path}.{k}") for k in a], default=0.0)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        return max([_assert_close(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        assert math.isclose(a, b, rel_tol=METRIC_RTOL, abs_tol=1e-12), f"{path}: {a} != {b}"
        return abs(a - b) / max(abs(a), abs(b)) if a != b else 0.0
    assert a == b, f"{path}: {a!r} != {b!r}"
    return 0.0


def test_containers_give_the_same_artifacts_as_the_subprocess_runner(runs):
    from fusionrec.artifacts import read_json, read_manifest

    docker_out, host_out = _outputs(runs["docker"]), _outputs(runs["subprocess"])
    assert set(docker_out) == set(host_out)
    # the dataset: byte-identical files (the manifest's content hash covers every file)
    d_manifest = read_manifest(docker_out["ingest"]["dataset"], kind="dataset")
    h_manifest = read_manifest(host_out["ingest"]["dataset"], kind="dataset")
    assert d_manifest["content_hash"] == h_manifest["content_hash"]
    # the embeddings of every modality
    for modality in ("text", "image", "audio", "tabular"):
        step = f"encode[{modality}]"
        assert read_manifest(docker_out[step]["embeddings"])["content_hash"] == read_manifest(host_out[step]["embeddings"])["content_hash"], modality
    # the trained models' test metrics, and the A/B decision
    max_rel_diff = {}
    for step in ("train-fusion", "train-baseline"):
        max_rel_diff[step] = _assert_close(read_json(docker_out[step]["model"] / "metrics.json")["test"],
                                           read_json(host_out[step]["model"] / "metrics.json")["test"], step)
    d_decision = read_json(docker_out["ab-evaluate-2"]["ab_report"] / "decision.json")
    h_decision = read_json(host_out["ab-evaluate-2"]["ab_report"] / "decision.json")
    assert d_decision["promote"] == h_decision["promote"]
    assert runs["docker"]["promoted"] == runs["subprocess"]["promoted"]
    if os.environ.get("FUSIONREC_CONTAINERS_COMPARISON"):  # docker/test-containers.sh puts this in its report
        Path(os.environ["FUSIONREC_CONTAINERS_COMPARISON"]).write_text(json.dumps({
            "dataset_content_hash": {"docker": d_manifest["content_hash"], "subprocess": h_manifest["content_hash"]},
            "test_metrics_max_relative_difference": max_rel_diff, "metric_rtol": METRIC_RTOL,
            "promote": {"docker": d_decision["promote"], "subprocess": h_decision["promote"]},
            "wall_s": {r: runs[r]["wall_s"] for r in runs},
        }, indent=2))


def _wait_ready(client, container: str, model: str, timeout_s: float = 180) -> None:
    """Wait for ``model`` itself: Triton's is_server_ready() turns true before pytriton has loaded any model."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if client.is_model_ready(model):
                return
        except Exception:  # noqa: BLE001 (connection refused while the server starts)
            pass
        state = docker("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state not in ("running", "created"):
            raise AssertionError(f"serving container {state}: {docker('logs', container, check=False).stderr[-3000:]}")
        time.sleep(1)
    raise AssertionError(f"serving container not ready in {timeout_s} s: {docker('logs', container, check=False).stderr[-3000:]}")


def test_serving_container_answers_grpc_with_the_library_topk(runs):
    import tritonclient.grpc as grpc

    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models import load_model

    out = _outputs(runs["docker"])
    repo, model_dir, dataset = out["export-onnx"]["repository"], out["train-fusion"]["model"], out["ingest"]["dataset"]
    name = TINY_ARGS.get("model_name", "fusionrec")
    model = load_model(model_dir)
    _, histories = DatasetArtifact(dataset).eval_cases("test", model.spec.max_len)
    g, h = free_ports(2)
    container = f"fusionrec-serve-test-{g}"
    docker("run", "-d", "--name", container, "--shm-size", "1g",
           "-p", f"127.0.0.1:{g}:8001", "-p", f"127.0.0.1:{h}:8000",
           "-v", f"{repo}:/models:ro", images.image("serve"))
    try:
        client = grpc.InferenceServerClient(f"127.0.0.1:{g}")
        _wait_ready(client, container, name)
        k = 10
        ref_idx, ref_score = model.topk(histories, model.n_items)  # the full ranking, to look up ties
        for s in range(0, len(histories), 32):
            batch = np.ascontiguousarray(histories[s: s + 32], dtype=np.int64)
            inp = grpc.InferInput("HISTORY", list(batch.shape), "INT64")
            inp.set_data_from_numpy(batch)
            res = client.infer(name, [inp])
            idx, score = res.as_numpy("ITEM_IDX")[:, :k], res.as_numpy("SCORE")[:, :k]
            lib_idx, lib_score = ref_idx[s: s + 32, :k], ref_score[s: s + 32, :k]
            # ONNX Runtime vs PyTorch kernels: scores equal up to float summation order (the export
            # parity check's tolerance), and a top-K position may differ only between tied items
            np.testing.assert_allclose(score, lib_score, rtol=0, atol=1e-4)
            for row in np.argwhere(idx != lib_idx):
                r, j = row
                full = dict(zip(ref_idx[s + r].tolist(), ref_score[s + r].tolist()))
                assert abs(full[int(idx[r, j])] - float(lib_score[r, j])) <= 1e-4, (s + r, j, idx[r], lib_idx[r])
        # the image's HEALTHCHECK (every model under /models ready: fusionrec.serving.health) reports healthy too
        deadline = time.time() + 60
        while docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip() != "healthy":
            assert time.time() < deadline, docker("inspect", "--format", "{{json .State.Health}}", container).stdout
            time.sleep(2)
    finally:
        docker("rm", "-f", container, check=False)
