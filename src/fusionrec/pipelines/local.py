"""Run the pipeline on this machine through ``kfp.local`` and report each step's wall time and outputs."""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from fusionrec.artifacts import atomic_write_json
from fusionrec.pipelines.fusionrec_pipeline import make_pipeline


class StepTimer:
    """Times every step kfp.local runs and reads back its outputs.

    kfp.local's own log lines race between its worker threads (ParallelFor iterations run two
    at a time and a "finished" line can be lost), so the timer wraps the subprocess task
    handler instead: one record per step execution (retries included), keyed by the task's
    output folder, whose ``executor_output.json`` holds the artifact URIs and output values.
    """

    def __init__(self, echo: Any = None) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        #: called with one line per step start/end (live progress while the steps' output goes to a log file)
        self.echo = echo

    @staticmethod
    def _label(task_dir: Path | None) -> str:
        """The task's name, with the modality for encode tasks (``encode[text]``)."""
        if task_dir is None:
            return "?"
        executor_output = task_dir / "executor_output.json"
        if executor_output.exists():
            for value in (json.loads(executor_output.read_text()).get("artifacts") or {}).values():
                for art in value.get("artifacts", []):
                    if (art.get("metadata") or {}).get("modality"):
                        return f"{task_dir.name}[{art['metadata']['modality']}]"
        return task_dir.name

    @staticmethod
    def _task_dir(full_command: list[str]) -> str | None:
        try:
            executor_input = json.loads(full_command[full_command.index("--executor_input") + 1])
            return str(Path(executor_input["outputs"]["outputFile"]).parent)
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from kfp.local import subprocess_task_handler as handler_module

        original = handler_module.SubprocessTaskHandler.run
        timer = self

        def run(handler):
            start = time.time()
            task_dir = timer._task_dir(handler.full_command)
            if timer.echo is not None:
                timer.echo(f"  started  {Path(task_dir).name if task_dir else '?'}")
            result = original(handler)
            status = getattr(result, "name", str(result))
            with timer._lock:
                timer.records.append({"dir": task_dir, "start": start, "end": time.time(), "status": status})
            if timer.echo is not None:
                label = timer._label(Path(task_dir) if task_dir else None)
                timer.echo(f"  {status.lower():<8} {label} ({time.time() - start:.1f} s)")
            return result

        handler_module.SubprocessTaskHandler.run = run
        try:
            yield
        finally:
            handler_module.SubprocessTaskHandler.run = original

    def steps(self, run_root: Path | None) -> list[dict[str, Any]]:
        out = []
        for rec in sorted(self.records, key=lambda r: r["start"]):
            task_dir = Path(rec["dir"]) if rec["dir"] else None
            name = task_dir.name if task_dir else "?"
            outputs: dict[str, str] = {}
            params: dict[str, Any] = {}
            label = ""
            executor_output = task_dir / "executor_output.json" if task_dir else None
            if executor_output is not None and executor_output.exists():
                data = json.loads(executor_output.read_text())
                for key, value in (data.get("artifacts") or {}).items():
                    for art in value.get("artifacts", []):
                        outputs[key] = art.get("uri", "")
                        label = label or str((art.get("metadata") or {}).get("modality", ""))
                params = data.get("parameterValues") or {}
            if label:
                name = f"{name}[{label}]"
            out.append({"step": name, "status": rec["status"], "wall_s": round(rec["end"] - rec["start"], 2),
                        "task_dir": str(task_dir) if task_dir else None, "outputs": outputs, "params": params})
        return out


def _run_root(pipeline_root: Path, before: set[str]) -> Path | None:
    new = [p for p in pipeline_root.iterdir() if p.is_dir() and p.name not in before] if pipeline_root.exists() else []
    return max(new, key=lambda p: p.stat().st_mtime) if new else None


def _import_kfp_local():
    """Import ``kfp.local`` even when this repository's ``docker/`` folder shadows the docker SDK.

    kfp.local imports the optional ``docker`` SDK for its DockerRunner; run from the repository
    root (``python -m pytest``) the ``docker/`` folder of Dockerfiles is found instead as a
    namespace package and kfp.local fails with "module 'docker' has no attribute 'DockerClient'".
    The SubprocessRunner needs no docker SDK, so hide such a namespace package while importing.
    """
    import importlib.util

    if "kfp.local.task_dispatcher" in sys.modules:
        from kfp import local

        return local
    loaded = sys.modules.get("docker")
    if loaded is not None:
        shadowed = getattr(loaded, "__file__", None) is None  # a namespace package, not the SDK
    else:
        spec = importlib.util.find_spec("docker")
        shadowed = spec is not None and spec.origin in (None, "namespace")
    if shadowed:
        sys.modules["docker"] = None  # type: ignore[assignment]  # -> ImportError inside kfp.local
    try:
        from kfp import local
        from kfp.local import pipeline_orchestrator, task_dispatcher  # noqa: F401 (imported lazily by kfp otherwise)
    finally:
        if shadowed:
            del sys.modules["docker"]
    return local


def run_local(args: dict[str, Any], workdir: Path, cache: bool = True, retries: bool = False,
              log_file: Path | None = None) -> dict[str, Any]:
    """Run the pipeline through kfp.local in this environment; returns the run summary (also written to ``workdir``).

    ``log_file``: send the steps' own output there (kfp.local echoes each step's whole executor
    input) and keep only kfp.local's task lines on the terminal.
    """
    local = _import_kfp_local()

    pipeline = make_pipeline(gpu=True, retries=retries)  # kfp.local ignores the GPU/CPU/memory requests
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args = dict(args)
    args.setdefault("serving_location", str(workdir / "serving"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "outputs"),
               raise_on_error=True, enable_caching=cache, cache_root=str(workdir / "cache"))
    stderr = sys.stderr  # kept before stdout goes to log_file: live progress goes here
    timer = StepTimer(echo=(lambda line: (stderr.write(line + "\n"), stderr.flush())) if log_file is not None else None)
    outputs_root = workdir / "outputs"
    before = {p.name for p in outputs_root.iterdir()} if outputs_root.exists() else set()
    started = time.time()
    error: str | None = None

    # kfp.local indents subprocess output by swapping builtins.print per task, and swaps the root
    # logger's handlers; with ParallelFor tasks in threads the print swaps interleave and can leave
    # an indenting print behind. Put both back afterwards.
    original_print, root = builtins.print, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.ExitStack() as stack:
            if log_file is not None:
                Path(log_file).parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(log_file, "w", encoding="utf-8"))))
            stack.enter_context(timer.installed())
            stack.enter_context(warnings.catch_warnings())
            # expected under kfp.local: resource/GPU requests are cluster settings, and the step
            # images are the environment this process already runs in
            warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner.*")
            warnings.filterwarnings("ignore", message=r".*custom or non-Python base image.*")
            pipeline(**args)
    except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    finally:
        builtins.print = original_print
        root.handlers[:] = handlers
        root.setLevel(level)
    run_root = _run_root(outputs_root, before)
    steps = timer.steps(run_root)
    promoted = any(s["step"].startswith("promote") and s["status"] == "SUCCESS" for s in steps)
    summary = {
        "status": "FAILURE" if error else "SUCCESS",
        "error": error,
        "wall_s": round(time.time() - started, 2),
        "workdir": str(workdir),
        "run_root": str(run_root) if run_root else None,
        "parameters": args,
        "promoted": promoted,
        "serving_location": args["serving_location"] if promoted else None,
        "steps": steps,
    }
    atomic_write_json(workdir / "run_summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The run summary as a table: step, status, wall time, outputs (artifact folders and values)."""
    lines = ["", f"{'step':<26} {'status':<8} {'wall':>8}  outputs"]
    for s in summary["steps"]:
        outs = [f"{k}: {v}" for k, v in s["outputs"].items()] + [f"{k} = {json.dumps(v)}" for k, v in s["params"].items()]
        lines.append(f"{s['step']:<26} {s['status']:<8} {s['wall_s']:>7.1f}s  {outs[0] if outs else ''}")
        lines += [f"{'':<46}{o}" for o in outs[1:]]
    total = sum(s["wall_s"] for s in summary["steps"])
    lines.append(f"pipeline {summary['status']} in {summary['wall_s']:.1f} s (steps {total:.1f} s); run folder {summary['run_root']}")
    if summary["promoted"]:
        lines.append(f"promoted model repository: {summary['serving_location']}")
    else:
        lines.append("no model promoted (the A/B decision was reject, no serving_location, or the run failed)")
    lines.append(f"run summary: {Path(summary['workdir']) / 'run_summary.json'}")
    return "\n".join(lines)
