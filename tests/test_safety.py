"""Never destroy a user's files (issue #12): where a step may write, what it refuses, and what an
interrupted write leaves behind. Every case runs the real CLI on the tiny demo catalog."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusionrec.artifacts import ArtifactError, artifact_dir, check_output, read_manifest, write_manifest
from fusionrec.cli import app

runner = CliRunner()


def cli(*args) -> "object":
    return runner.invoke(app, [str(a) for a in args])


def tree(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (what 'nothing was lost' means)."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(res, folder: Path) -> None:
    """One line, exit 2, naming the folder; no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1, res.output
    assert str(folder) in res.output, res.output


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A folder of a user's own files, none of them a fusionrec artifact."""
    root = tmp_path_factory.mktemp("home") / "somefolder"
    root.mkdir()
    (root / "thesis.txt").write_text("three years of work\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.md").write_text("- defend\n")
    return root


@pytest.fixture(scope="module")
def popularity_model(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pop") / "model"
    res = cli("train", tiny_dataset, out, "--model", "popularity")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def popularity_repo(popularity_model, tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "control_repository"
    res = cli("export", popularity_model, tiny_dataset, out, "--cpu", "-k", "20")
    assert res.exit_code == 0, res.output
    return out


# -------------------------------------------------------------------------------- the cases
def test_ingest_into_its_own_source_is_refused_and_loses_nothing(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    before = tree(raw)
    assert {"items.csv", "interactions.csv"} <= set(before) and any(k.startswith("truth/") for k in before)
    refused(cli("ingest", raw, raw), raw)
    refused(cli("ingest", raw, raw, "--force"), raw)  # --force never overrides an input
    refused(cli("ingest", raw, raw / "dataset"), raw)  # inside the input
    refused(cli("ingest", raw, tmp_path), tmp_path)  # contains the input
    assert tree(raw) == before


def test_evaluate_into_a_folder_of_other_files_is_refused(tiny_dataset, popularity_model, user_folder):
    before = tree(user_folder)
    res = cli("evaluate", tiny_dataset, popularity_model, user_folder)
    refused(res, user_folder)
    assert "--force" in res.output and "thesis.txt" in res.output
    assert tree(user_folder) == before


def test_ab_out_on_the_control_repository_is_refused(tiny_dataset, popularity_repo):
    before = tree(popularity_repo)
    for extra in ([], ["--force"]):
        res = cli("ab", "--control", popularity_repo, "--treatment", popularity_repo, "--dataset", tiny_dataset,
                  "--out", popularity_repo, "--no-online", *extra)
        refused(res, popularity_repo)
        assert "input" in res.output
    assert tree(popularity_repo) == before
    assert read_manifest(popularity_repo)["kind"] == "model_repository"


@pytest.mark.parametrize("step", ["demo-data", "encode", "train", "export"])
def test_every_step_refuses_a_folder_that_is_not_its_artifact(step, tiny_dataset, popularity_model, user_folder):
    args = {
        "demo-data": ["demo-data", user_folder, "--items", "10", "--users", "3"],
        "encode": ["encode", tiny_dataset, user_folder, "-m", "tabular"],
        "train": ["train", tiny_dataset, user_folder, "--model", "popularity"],
        "export": ["export", popularity_model, tiny_dataset, user_folder, "--cpu"],
    }[step]
    before = tree(user_folder)
    res = cli(*args)
    refused(res, user_folder)
    assert "--force" in res.output
    assert tree(user_folder) == before


def test_another_kind_of_artifact_is_refused_the_same_kind_replaced_force_replaces(tiny_dataset, popularity_model, tmp_path):
    out = tmp_path / "eval"
    assert cli("evaluate", tiny_dataset, popularity_model, out).exit_code == 0
    first = read_manifest(out, kind="evaluation")["created"]
    res = cli("evaluate", tiny_dataset, popularity_model, out)  # same kind: replaced
    assert res.exit_code == 0, res.output
    assert read_manifest(out, kind="evaluation")["created"] >= first
    res = cli("train", tiny_dataset, out, "--model", "popularity")  # a model step over an evaluation
    refused(res, out)
    assert "'evaluation' artifact" in res.output
    assert read_manifest(out)["kind"] == "evaluation"
    res = cli("train", tiny_dataset, out, "--model", "popularity", "--force")
    assert res.exit_code == 0, res.output
    assert read_manifest(out)["kind"] == "model"


def test_empty_and_missing_folders_are_fine_a_file_never(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", "dataset") == tmp_path / "empty"
    assert check_output(tmp_path / "missing" / "deeper", "dataset").name == "deeper"
    (tmp_path / "a_file").write_text("x")
    for force in (False, True):
        with pytest.raises(ArtifactError, match="not a folder"):
            check_output(tmp_path / "a_file", "dataset", force=force)


def test_a_failed_commit_check_leaves_the_target_as_it_was(tmp_path):
    """Something that appears in the target while the step runs is not replaced either."""
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="refusing to replace"):
        with artifact_dir(out, "dataset") as tmp:
            (tmp / "x.txt").write_text("new")
            out.mkdir()
            (out / "precious.txt").write_text("old")
    assert (out / "precious.txt").read_text() == "old" and not (out / "x.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left


# -------------------------------------------------------------------------------- interrupted writes
def test_sigterm_mid_write_leaves_no_temporary_folder(tmp_path):
    """`demo-data` killed with SIGTERM while writing media: the temporary folder goes with it."""
    out = tmp_path / "dd"
    exe = Path(sys.executable).parent / "fusionrec"
    proc = subprocess.Popen([str(exe), "demo-data", str(out), "--items", "20000", "--users", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it is writing media into its temporary folder
            if any(any((t / "media" / "audio").glob("*.wav")) for t in tmp_path.glob(".dd.*.tmp")):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("demo-data never started writing")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)  # a guard, not a speed claim: a loaded machine (tests beside training) needed over 30 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGTERM, proc.stderr.read().decode()
    assert list(tmp_path.iterdir()) == [], [p.name for p in tmp_path.iterdir()]


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    """SIGKILL gives no chance to clean up: the next write of the same target removes the leftovers."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.{dead}.abc123.tmp"
    (stale / "media").mkdir(parents=True)
    (stale / "media" / "big.wav").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".out.{os.getppid()}.def456.tmp"  # another live writer's: left alone
    alive.mkdir()
    other = tmp_path / f".other.{dead}.abc.tmp"  # another target's: left alone
    other.mkdir()
    with artifact_dir(tmp_path / "out", "dataset") as tmp:
        write_manifest(tmp, step="ingest", kind="dataset")
    assert not stale.exists() and alive.exists() and other.exists()
    assert read_manifest(tmp_path / "out", kind="dataset")


# -------------------------------------------------------------------------------- fail fast, one line
@pytest.mark.parametrize("setting, field", [("epochs=0", "epochs"), ("dim=-1", "dim"), ("batch_size=0", "batch_size"),
                                            ("lr=0", "lr"), ("dim=31", "heads")])
def test_bad_training_settings_name_the_field(tiny_dataset, tmp_path, setting, field):
    res = cli("train", tiny_dataset, tmp_path / "m", "--model", "id", "--set", setting)
    assert res.exit_code == 2 and "Traceback" not in res.output and field in res.output, res.output
    assert not (tmp_path / "m").exists()


def test_diverging_training_stops_without_an_artifact(tiny_dataset, tmp_path):
    res = cli("train", tiny_dataset, tmp_path / "m", "--model", "id", "--set", "lr=1e9", "--set", "epochs=3", "--set", "dim=16")
    assert res.exit_code == 2, res.output
    assert "diverged" in res.output and "lower lr" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []


def test_export_failure_is_one_line_exit_2(popularity_model, tiny_dataset, tmp_path):
    """An ExportError (here: the parity tolerance no graph can meet) is a step failure, not a crash."""
    res = cli("export", popularity_model, tiny_dataset, tmp_path / "repo", "--cpu", "--set", "score_tolerance=-1")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "parity failed" in res.output and not (tmp_path / "repo").exists()


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory) -> Path:
    """Another catalog (other seed, other size): its item table matches no model of the tiny one."""
    from fusionrec.data.demo import DemoConfig, generate
    from fusionrec.data.ingest import IngestConfig, run

    root = tmp_path_factory.mktemp("other")
    raw = generate(root / "raw", DemoConfig(n_items=25, n_users=15, events_per_user=6, seed=99))
    return run(raw, root / "dataset", IngestConfig(cold_item_share=0.1, seed=0))


def test_evaluate_and_ab_refuse_a_model_of_another_catalog(other_dataset, popularity_model, popularity_repo, tmp_path):
    res = cli("evaluate", other_dataset, popularity_model, tmp_path / "eval")
    assert res.exit_code == 2 and "has 60 items, dataset" in res.output and "has 25" in res.output, res.output
    res = cli("ab", "--control", popularity_model, "--treatment", popularity_model, "--dataset", other_dataset,
              "--out", tmp_path / "ab", "--no-online")
    assert res.exit_code == 2 and "has 60 items" in res.output, res.output
    res = cli("ab", "--control", popularity_repo, "--treatment", popularity_repo, "--dataset", other_dataset,
              "--out", tmp_path / "ab", "--no-online")
    assert res.exit_code == 2 and "knows only 0 of the 25 items" in res.output, res.output
    assert not (tmp_path / "eval").exists() and not (tmp_path / "ab").exists()


def test_demo_data_too_large_for_the_machine_says_what_fits(tmp_path):
    res = cli("demo-data", tmp_path / "d", "--items", "99999999999")
    assert res.exit_code == 2 and "n_items" in res.output and "Traceback" not in res.output, res.output
    res = cli("demo-data", tmp_path / "d", "--items", "9000000", "--users", "100000")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "GiB of memory" in res.output and "items fit" in res.output
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []


def test_recommend_k_must_be_positive():
    for k in ("0", "-3"):
        res = cli("recommend", "--user-history", "a,b", "-k", k, "--url", "127.0.0.1:1")
        assert res.exit_code == 2 and "Traceback" not in res.output and "-k" in res.output, res.output


def test_epoch_milliseconds_are_converted_and_mixed_units_refused(tmp_path):
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.ingest import DataContractError, IngestConfig, run

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "items.csv").write_text("item_id,title\ni1,a\ni2,b\ni3,c\n")
    ms = [1577836800000, 1577836900000, 1577837000000, 1577837100000]
    rows = [("u1", "i1"), ("u1", "i2"), ("u1", "i3"), ("u2", "i1")]
    (raw / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for (u, i), t in zip(rows, ms)))
    ds = DatasetArtifact(run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0)))
    assert sorted(ds.events["timestamp"]) == [t // 1000 for t in ms]
    assert ds.stats["timestamps"]["max_iso"].startswith("2020-01-01")
    (raw / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,1577836800\nu1,i2,1577836900000\nu2,i1,1577836900\n")
    with pytest.raises(DataContractError, match="mix seconds .* and milliseconds"):
        run(raw, tmp_path / "ds2", IngestConfig(cold_item_share=0.0))


# -------------------------------------------------------------------------------- progress without a terminal
def test_progress_is_logged_at_intervals_when_output_is_piped(tiny_dataset, tmp_path, monkeypatch, caplog):
    """With stderr not a terminal (CI, kfp.local) a long loop logs progress lines instead of staying silent."""
    import logging

    from fusionrec.encoders.encode import EncodeConfig, run
    from fusionrec.progress import progress

    monkeypatch.delenv("FUSIONREC_QUIET", raising=False)
    monkeypatch.setenv("FUSIONREC_PROGRESS_INTERVAL", "0")  # every update, so a tiny run shows lines
    with caplog.at_level(logging.INFO, logger="fusionrec.progress"):
        assert sum(progress(range(5), desc="loop", unit="x")) == 10
        run(tiny_dataset, tmp_path / "tab", EncodeConfig(modality="tabular", cache=False))
    lines = [r.getMessage() for r in caplog.records if r.name == "fusionrec.progress"]
    assert any(m.startswith("loop: 5/5") for m in lines), lines
    assert any(m.startswith("encode tabular: ") for m in lines), lines
    assert not any("\r" in m for m in lines)
    caplog.clear()
    monkeypatch.setenv("FUSIONREC_PROGRESS_INTERVAL", "30")  # a loop shorter than the interval says nothing
    with caplog.at_level(logging.INFO, logger="fusionrec.progress"):
        list(progress(range(5), desc="short"))
    assert not [r for r in caplog.records if r.name == "fusionrec.progress"]


# -------------------------------------------------------------------------------- serve: fail fast, quiet, clean
def test_serve_on_a_port_in_use_fails_at_once(popularity_repo):
    import socket

    from fusionrec.serving.server import free_ports

    g, h, m = free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", g))
        taken.listen()
        t0 = time.monotonic()
        res = cli("serve", popularity_repo, "--grpc-port", g, "--http-port", h, "--metrics-port", m)
        took = time.monotonic() - t0
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"port {g} (grpc) is in use" in res.output
    assert took < 5, took  # was ~124 s of tritonserver retries, then a timeout traceback


def test_serve_two_repositories_with_one_model_name_says_how_to_name_them(popularity_repo, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(popularity_repo, twin)
    res = cli("serve", popularity_repo, twin)
    assert res.exit_code == 2 and "two models named 'fusionrec'" in res.output, res.output
    assert "fusionrec serve control=" in res.output and "treatment=" in res.output
    res = cli("serve", f"control={popularity_repo}", twin)
    assert res.exit_code == 2 and "NAME=PATH" in res.output, res.output


@pytest.fixture
def pytriton_home():
    """A short PYTRITON_HOME of its own (Triton's unix sockets live there: a pytest tmp path is too long)."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="ptr", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _start_serve(args: list, pytriton_home: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "fusionrec"
    return subprocess.Popen([str(exe), "serve", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTRITON_HOME": str(pytriton_home)})


def test_serve_named_models_quiet_output_log_file_and_no_workspace_left(popularity_repo, tmp_path, pytriton_home):
    import tritonclient.grpc as grpc

    from fusionrec.serving.server import free_ports

    twin = tmp_path / "twin"
    shutil.copytree(popularity_repo, twin)
    home, log_file = pytriton_home, tmp_path / "logs" / "triton.log"
    g, h, m = free_ports(3)
    proc = _start_serve([f"control={popularity_repo}", f"treatment={twin}", "--grpc-port", g, "--http-port", h,
                         "--metrics-port", m, "--log-file", log_file], home)
    try:
        client = grpc.InferenceServerClient(f"127.0.0.1:{g}")
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if client.is_model_ready("control") and client.is_model_ready("treatment"):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        assert client.is_model_ready("control") and client.is_model_ready("treatment")
        assert any(home.glob("workspace_*"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode()
    assert f"Triton's own log: {log_file}" in out and "serving 'control'" in out and "serving 'treatment'" in out, out
    for noise in ("NVML", "CudaDriverHelper", "DCGM", "+----"):  # Triton's own lines are in the log file only
        assert noise not in out, out
    assert log_file.stat().st_size > 0
    assert list(home.glob("workspace_*")) == []


def test_sigterm_while_the_server_starts_leaves_no_workspace(popularity_repo, pytriton_home):
    from fusionrec.serving.server import free_ports

    home = pytriton_home
    g, h, m = free_ports(3)
    proc = _start_serve([popularity_repo, "--grpc-port", g, "--http-port", h, "--metrics-port", m], home)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(home.glob("workspace_*")):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.02)
        assert any(home.glob("workspace_*"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stdout.read().decode()
    assert list(home.glob("workspace_*")) == []


# -------------------------------------------------------------------------------- the A/B report as a reader sees it
def test_ab_report_names_arms_skips_rules_and_flags_identical_arms(tiny_dataset, popularity_repo, tmp_path):
    from fusionrec.artifacts import read_json

    out = tmp_path / "ab"
    res = cli("ab", "--control", popularity_repo, "--treatment", popularity_repo, "--dataset", tiny_dataset, "--out", out,
              "--no-online", "--set", "k_max=20", "--set", "bootstrap_resamples=100")
    assert res.exit_code == 0, res.output
    assert "warning: identical arms" in res.output and "REJECT" in res.output
    assert "latency_p99: skipped" in res.output and "online_hit_rate: skipped" in res.output
    md = (out / "report.md").read_text()
    name = f"fusionrec ({popularity_repo.parent.name}/{popularity_repo.name})"
    assert md.splitlines()[0] == f"# A/B report: {name} [treatment] vs {name} [control]"  # not "repository vs repository"
    assert "**Warning: identical arms" in md
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in md.splitlines() if line.startswith("| ") and "|" in line[2:]}
    assert rows["latency_p99"] == "skipped" and rows["online_hit_rate"] == "skipped" and rows["coverage"] == "yes"
    assert read_json(out / "decision.json")["warnings"][0].startswith("identical arms")


def test_ab_report_zero_control_lift_and_clipped_latency_are_labelled(tiny_dataset, popularity_model):
    import dataclasses
    import itertools

    import numpy as np

    from fusionrec.ab.config import ABConfig
    from fusionrec.ab.decision import decide
    from fusionrec.ab.offline import load_ranker, offline_compare
    from fusionrec.ab.online import replay
    from fusionrec.ab.report import render_markdown
    from fusionrec.ab.stats import paired_compare
    from fusionrec.data.dataset import DatasetArtifact

    ds = DatasetArtifact(tiny_dataset)
    cfg = ABConfig(k_max=20, bootstrap_resamples=100, online_warmup=0)
    ranker = load_ranker(popularity_model, ds)
    offline = offline_compare(ranker, ranker, ds, cfg)
    # a cold-start comparison whose control scores 0 everywhere (an ID-only control cannot rank cold items)
    cold = paired_compare(np.array([1.0, 0.0, 1.0, 0.5]), np.zeros(4), np.ones(4), metric="recall@20", segment="cold",
                          n_resamples=100)
    assert np.isinf(cold.lift)
    offline = dataclasses.replace(offline, comparisons=[*offline.comparisons, cold])
    # an online replay with one straggler (2 s among 1 ms requests), from a scripted clock
    cases, hist = ds.eval_cases("test", 10)
    steps = itertools.chain([0.001] * 41, [2.0], itertools.repeat(0.001))
    ticks = itertools.accumulate(steps)
    users = ds.users.set_index("user_idx").loc[cases["user_idx"], "user_id"].astype(str).tolist()
    online = replay(cases, hist, users, ranker, ranker, cfg, clock=lambda: next(ticks))
    md = render_markdown(decide(offline, online, cfg), offline, online, cfg, {"control": "c", "treatment": "t"},
                         {"lift": "lift.png", "user_diffs": "d.png", "latency": "latency.png", "interleaving": "i.png"})
    assert "inf%" not in md
    row = [line for line in md.splitlines() if line.startswith("| cold | recall@20 |")][-1]  # the synthetic one
    assert "+0.6250 (abs.; control 0)" in row and "(abs.)" in row, row
    assert "1 slower request(s), up to 2000.0 ms, are counted in its last bin" in md


def test_benchmark_work_folder_is_emptied_only_when_a_benchmark_made_it(tmp_path, monkeypatch):
    """``--work`` of every benchmark goes through ``_steps.fresh_work``: a mistyped folder is refused, not emptied."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.setenv("FUSIONREC_CACHE", str(tmp_path / "unused"))  # fresh_work points it into the work folder
    from _steps import WORK_MARKER, fresh_work

    users = tmp_path / "thesis"
    users.mkdir()
    (users / "chapter1.txt").write_text("three years of work")
    before = tree(users)
    for reuse in (False, True):
        with pytest.raises(SystemExit, match="no benchmark wrote"):
            fresh_work(users, reuse=reuse)
        assert tree(users) == before

    work = tmp_path / "bench"
    fresh_work(work, reuse=False)  # missing: taken, and marked
    (work / "dataset").mkdir()
    (work / "dataset" / "old.parquet").write_text("an earlier run's output")
    fresh_work(work, reuse=True)
    assert (work / "dataset" / "old.parquet").exists()  # reuse keeps it
    cache = fresh_work(work, reuse=False)
    assert not (work / "dataset").exists() and (work / WORK_MARKER).exists()  # from scratch: the benchmark's own files go
    assert cache["encoder_cache"]["folder"] == str(work / "encoder_cache") and os.environ["FUSIONREC_CACHE"] == str(work / "encoder_cache")
