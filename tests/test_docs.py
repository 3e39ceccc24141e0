"""The docs keep their promises: every command line in README.md and docs/*.md is taken from the
markdown itself and run, in document order, on a tiny demo catalog (60 items, 1 epoch), so a
command that stops working, or an option that is renamed, fails here. Commands that need a
server run against a real local Triton started here (`serve` in a subprocess); the few that need
a cluster, Docker or minutes are listed in EXCLUDED with the reason and are still parsed against
the CLI (options and argument counts), so their spelling cannot drift either. Placeholders
(DATASET, REPO_A, ITEM_ID, ...) are filled with the artifacts the walkthrough made.

Also: configs/demo.yaml is a real config whose sections are valid step settings.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from fusionrec.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Appended to commands so the walkthrough stays small (a later flag wins over the documented one).
TINY = {"demo-data": ["--items", "60", "--users", "40", "--events-per-user", "12"], "train": ["--epochs", "1"],
        "align": ["--epochs", "1"]}
#: Commands not run, by prefix, and why (each is still parsed against the CLI when it is a fusionrec command).
EXCLUDED = {
    "make demo": "runs the whole pipeline for minutes; tests/test_pipeline.py::test_run_local_end_to_end runs it on a tiny catalog",
    "make test-containers": "a Docker engine, image builds and the pipeline in containers (minutes, root); CI runs it after make test",
    "make test": "is this test suite",
    "docker/build.sh": "needs Docker and a registry; tests/test_docker.py checks the Dockerfiles and the script",
    "docker/local-engine.sh": "installs and starts a Docker engine (root, minutes); make test-containers runs it",
    ".venv/bin/python benchmarks/": "benchmarks take minutes (figures, not tests)",
    "fusionrec pipeline run-local": "the whole pipeline through kfp.local (minutes); tests/test_pipeline.py runs it end to end",
    "fusionrec pipeline submit": "needs a Kubeflow Pipelines cluster; tests/test_pipeline.py checks the unreachable-host error",
    "fusionrec datasets movielens": "converts the 100k MovieLens ratings (~10 s, optional extra); tests/test_movielens.py covers it",
    "fusionrec ingest  artifacts/ml/": "the MovieLens walkthrough (trains up to 600 s per model); tests/test_movielens_pipeline.py runs its steps on a slice",
    "fusionrec encode  artifacts/ml/": "MovieLens walkthrough, see above",
    "fusionrec align   artifacts/ml/": "MovieLens walkthrough, see above",
    "fusionrec train   artifacts/ml/": "MovieLens walkthrough, see above",
    "fusionrec evaluate artifacts/ml/": "MovieLens walkthrough, see above",
    "fusionrec export  artifacts/ml/": "MovieLens walkthrough, see above",
}
#: Placeholders and example names in the docs -> what this walkthrough made (whole tokens, or inside a token).
PLACEHOLDERS = {
    "DATASET": "artifacts/dataset", "ALIGNED": "artifacts/aligned", "MODEL": "artifacts/model", "EVAL": "artifacts/eval",
    "EMB_TEXT": "artifacts/emb/text", "EMB_IMAGE": "artifacts/emb/image", "EMB_AUDIO": "artifacts/emb/audio",
    "EMB_TABULAR": "artifacts/emb/tabular", "REPO_A": "artifacts/repo_id", "REPO_B": "artifacts/repo", "REPO": "artifacts/repo",
    "ds": "artifacts/dataset", "N": "1",
    "artifacts/repo_fused": "artifacts/repo",  # docs/ab.md's treatment: the README's fused model
}
#: `OUT` means the step's own output
OUT = {"align": "artifacts/aligned", "train": "artifacts/model", "evaluate": "artifacts/eval"}
#: Run once, before the first command that mentions the key (inputs the docs assume exist).
SETUP = {
    "data/raw": [["demo-data", "data/raw", "--seed", "0", *TINY["demo-data"]]],  # "your own data": the demo catalog again
    # audio with the no-weights encoder: the docs only need an audio embeddings artifact here
    "artifacts/emb/audio": [["encode", "artifacts/dataset", "artifacts/emb/audio", "-m", "audio", "-e", "logmel-stats"]],
    "artifacts/emb/tabular": [["encode", "artifacts/dataset", "artifacts/emb/tabular", "-m", "tabular"]],
    "artifacts/repo_id": [["train", "artifacts/dataset", "artifacts/model_id", "--model", "id", "--epochs", "1"],  # the A/B control
                          ["export", "artifacts/model_id", "artifacts/dataset", "artifacts/repo_id", "--cpu"]],
}

runner = CliRunner()


# ---------------------------------------------------------------------------------------------- extraction
def _blocks(text: str):
    """(first line number, lines) of every fenced code block that is shell (bash, sh or unlabelled)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if m:
            lang, start, body = m.group(1), i + 1, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            if lang in ("bash", "sh", "shell", "console", ""):
                yield start + 1, body
        i += 1


def doc_commands() -> list[tuple[str, int, int, str]]:
    """``(doc, line, block id, command)`` for every command line in the docs, continuations joined,
    ``for`` loops expanded."""
    out = []
    for doc in DOCS:
        for b, (start, body) in enumerate(_blocks(doc.read_text())):
            joined, first = "", None
            for k, line in enumerate(body):
                if first is None:
                    first = start + k
                if line.rstrip().endswith("\\"):
                    joined += line.rstrip()[:-1] + " "
                    continue
                joined += line
                cmd = joined.strip()
                joined, lineno, first = "", first, None
                cmd = re.sub(r"^\s*(\$\s+)", "", cmd)
                loop = re.match(r"^for (\w+) in ([^;]+); do (.+?); done\b(.*)$", cmd)
                if loop:
                    var, values, body_cmd = loop.group(1), loop.group(2).split(), loop.group(3)
                    for v in values:
                        out.append((doc.relative_to(ROOT).as_posix(), lineno, b, body_cmd.replace(f"${var}", v)))
                    continue
                if re.match(r"^(fusionrec\s|make\s|docker/\S+\.sh\b|\.venv/bin/python\s|python3?\s)", cmd):
                    out.append((doc.relative_to(ROOT).as_posix(), lineno, b, cmd))
    return out


COMMANDS = doc_commands()


def _excluded(cmd: str) -> str | None:
    return next((why for prefix, why in EXCLUDED.items() if cmd.startswith(prefix)), None)


def _tokens(cmd: str) -> list[str]:
    cmd = cmd.replace("[more repositories...]", "")  # an optional repeat
    cmd = re.sub(r"<[^>]*>", "VALUE", cmd)  # <model repository in production>: a value to fill in
    cmd = re.sub(r"\[([^\]]*)\]", r"\1", cmd)  # [--cpu]: an optional flag, shown, so run with it
    return shlex.split(cmd, comments=True)


def _fill(args: list[str], sub: str, same_block: list[list[str]]) -> list[str]:
    """Placeholders -> real paths; ``...`` -> the arguments of the block's first command of this step."""
    if "..." in args:
        base = next(a for a in same_block if a and a[0] == sub and "..." not in a)
        i = args.index("...")
        args = [*args[:i], *base[1:], *args[i + 1:]]
    filled = []
    for a in args:
        if a == "OUT":
            filled.append(OUT[sub])
            continue
        for key, value in PLACEHOLDERS.items():
            if a == key or (len(key) > 2 and key in a and "/" in key):
                a = value if a == key else a.replace(key, value)
        filled.append(a)
    return filled


def test_commands_are_found_and_every_one_is_run_or_excluded_with_a_reason():
    docs = {d for d, *_ in COMMANDS}
    assert {"README.md", "docs/serving.md", "docs/ab.md", "docs/encoders.md", "docs/ingest.md"} <= docs, docs
    run = [c for *_, c in COMMANDS if not _excluded(c)]
    assert len(run) >= 40 and all(c.startswith("fusionrec ") for c in run), [c for c in run if not c.startswith("fusionrec ")]
    assert all(why.strip() for why in EXCLUDED.values())
    used = {p for p in EXCLUDED if any(c.startswith(p) for *_, c in COMMANDS)}
    assert used == set(EXCLUDED), f"exclusions matching no command (stale): {set(EXCLUDED) - used}"


def _parse_only(args: list[str]) -> None:
    """Options exist and the argument count fits (no path checks, nothing run)."""
    root = typer.main.get_command(app)
    cmd, rest, name = root, list(args), "fusionrec"
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:  # typer vendors its own click classes
        name, cmd, rest = rest[0], cmd.commands[rest[0]], rest[1:]
    ctx = cmd.make_context(name, [], resilient_parsing=True)
    _, extra, _ = cmd.make_parser(ctx).parse_args(args=rest)
    assert not extra, f"unexpected arguments {extra}"


@pytest.mark.parametrize("doc, line, cmd", [(d, ln, c) for d, ln, _, c in COMMANDS if _excluded(c) and c.startswith("fusionrec ")],
                         ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_excluded_commands_still_parse(doc, line, cmd):
    _parse_only(_tokens(cmd)[1:])


# ---------------------------------------------------------------------------------------------- the walkthrough
def _wait_ready(proc: subprocess.Popen, grpc: int) -> None:
    """Wait for ``fusionrec serve``'s "ready:" line: it comes after every model is bound and loaded.

    (Triton's own is_server_ready() turns true before pytriton has loaded the models, and on a
    loaded machine a request sent then gets "unknown model".) The output is read by a thread so a
    full pipe never blocks the server; ``proc.output`` keeps it for error messages.
    """
    import threading

    proc.output = []  # type: ignore[attr-defined]
    ready = threading.Event()

    def read() -> None:
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            proc.output.append(line)  # type: ignore[attr-defined]
            if line.startswith("ready:"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 120
    while time.time() < deadline:
        if ready.wait(0.5):
            return
        assert proc.poll() is None, "".join(proc.output)[-3000:]  # type: ignore[attr-defined]
    pytest.fail(f"fusionrec serve did not become ready on grpc port {grpc}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(getattr(proc, "output", []))[-3000:]


def test_every_documented_command_runs_on_a_tiny_catalog(tmp_path, tmp_path_factory, monkeypatch):
    """README then docs/*.md, each command as written (placeholders filled, tiny sizes appended)."""
    import pandas as pd

    from fusionrec.serving.server import free_ports

    if "FUSIONREC_TEST_CACHE" not in os.environ:  # the encoders' ONNX exports, shared with the other tests
        os.environ["FUSIONREC_TEST_CACHE"] = str(tmp_path_factory.mktemp("fusionrec_cache"))
    monkeypatch.setenv("FUSIONREC_CACHE", os.environ["FUSIONREC_TEST_CACHE"])
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "pipelines").mkdir()
    monkeypatch.chdir(tmp_path)
    pytriton_home = Path(__import__("tempfile").mkdtemp(prefix="ptr", dir="/tmp"))  # short: Triton's sockets live there
    ports = dict(zip(("8001", "8000", "8002"), map(str, free_ports(3))))
    ran: dict[str, str] = {}
    timings: list[tuple[float, str, str]] = []  # printed with -s: where the walkthrough spends its time
    done_setup: set[str] = set()
    server: subprocess.Popen | None = None
    served: str | None = None  # the one repository the running server serves (None: named ones or no server)

    def cli(args: list[str], where: str) -> None:
        t0 = time.perf_counter()
        res = runner.invoke(app, args)
        timings.append((round(time.perf_counter() - t0, 1), where, shlex.join(args)))
        # (not asserting on "Traceback" text: a library logger bound to an earlier invocation's
        # captured stderr prints "--- Logging error ---" here, never to a user's terminal)
        assert res.exit_code == 0 and res.exception is None, f"{where}: fusionrec {shlex.join(args)}\n{res.output[-3000:]}"

    def item_ids(n: int) -> str:
        ids = pd.read_parquet("artifacts/dataset/items.parquet")["item_id"].astype(str).tolist()
        return ",".join(ids[:n])

    by_block: dict[tuple[str, int], list[list[str]]] = {}
    for doc, line, block, cmd in COMMANDS:
        by_block.setdefault((doc, block), []).append(_tokens(cmd)[1:])
    try:
        for doc, line, block, cmd in COMMANDS:
            if _excluded(cmd):
                continue
            where = f"{doc}:{line}"
            args = _tokens(cmd)[1:]
            sub = args[0]
            args = _fill(args, sub, by_block[(doc, block)])
            args = [ports.get(a, a) for a in args]
            args = [re.sub(r":(800[012])$", lambda m: ":" + ports[m.group(1)], a) for a in args]
            if sub == "recommend":
                # a user passes the repository they serve; the docs' REPO stands for it (README's walkthrough serves
                # artifacts/model_repository, with added items, by the time docs/query-and-explain.md asks it)
                if served is not None and "--repo" in args:
                    args[args.index("--repo") + 1] = served
                args = [item_ids(2) if a == "ITEM_ID,ITEM_ID" else item_ids(3) if a in ("m12,m7,m33", "it_1,it_2,it_3") else a for a in args]
                if "--url" not in args:  # the documented default, 127.0.0.1:8001, is this walkthrough's server port
                    args += ["--url", f"127.0.0.1:{ports['8001']}"]
            for key, steps in SETUP.items():
                if key not in done_setup and any(key in a for a in args):
                    done_setup.add(key)
                    for step in steps:
                        cli(step, f"setup for {where}")
            if "--add-items" in args and not Path(args[args.index("--add-items") + 1]).exists():
                new = args[args.index("--add-items") + 1]
                Path(new).write_text("item_id,title,description\nnew_1,Rocket launch,A night launch of a lunar rocket.\n"
                                     "new_2,Slow cooking,Stews that simmer all afternoon.\n")
            args += TINY.get(sub, [])
            key = shlex.join(args)
            if key in ran:  # the same command shown in two places runs once
                continue
            ran[key] = where
            if sub == "serve":
                _stop(server)
                if "--grpc-port" not in args:
                    args += ["--grpc-port", ports["8001"], "--http-port", ports["8000"], "--metrics-port", ports["8002"]]
                repos = [a for a in args[1:] if not a.startswith("-") and not a.isdigit()]
                served = repos[0] if len(repos) == 1 and "=" not in repos[0] else None
                server = subprocess.Popen([str(Path(sys.executable).parent / "fusionrec"), *args], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, env={**os.environ, "PYTRITON_HOME": str(pytriton_home)})
                _wait_ready(server, int(ports["8001"]))
                continue
            cli(args, where)
    finally:
        _stop(server)
        shutil.rmtree(pytriton_home, ignore_errors=True)
        for t in sorted(timings, reverse=True)[:12]:
            print(*t)
    assert len(ran) >= 35, sorted(ran)


# ---------------------------------------------------------------------------------------------- configs/demo.yaml
def test_demo_config_is_real_documented_and_the_defaults():
    """Every section holds valid settings of its step, equal to the defaults it says it documents."""
    from fusionrec.ab.config import ABConfig
    from fusionrec.config import load_config
    from fusionrec.data.demo import DemoConfig
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.evaluate import EvalConfig
    from fusionrec.export import ExportConfig
    from fusionrec.models.align import AlignConfig
    from fusionrec.train import TrainConfig
    from fusionrec.pipelines.params import pipeline_parameters, resolve_parameters

    path = ROOT / "configs" / "demo.yaml"
    data = yaml.safe_load(path.read_text())
    classes = {"demo": DemoConfig, "ingest": IngestConfig, "encode": EncodeConfig, "align": AlignConfig, "train": TrainConfig,
               "evaluate": EvalConfig, "export": ExportConfig, "ab": ABConfig}
    assert set(data) == {"pipeline", *classes}
    for section, cls in classes.items():
        extra = {"modality": "text"} if cls is EncodeConfig else {}
        cfg = load_config(cls, path, section=section, overrides=extra)
        default = cls(**extra)
        for field, value in data[section].items():
            assert getattr(cfg, field) == value == getattr(default, field), (section, field)
    defaults = pipeline_parameters()
    for name, value in data["pipeline"].items():
        assert defaults[name] == value, name
    args = resolve_parameters(None, path)
    assert args["train_config"] == data["train"] and args["epochs"] == defaults["epochs"]
    text = path.read_text()
    for section in data:  # documented: a comment line right above each section
        above = text.split(f"\n{section}:")[0].rstrip().splitlines()[-1]
        assert above.startswith("#"), section
    # the demo command and the docs that cite it
    res = runner.invoke(app, ["demo", "--help"])
    assert res.exit_code == 0 and "configs/demo.yaml" in res.output
    assert "configs/demo.yaml" in (ROOT / "README.md").read_text() and "configs/demo.yaml" in (ROOT / "docs" / "ingest.md").read_text()
