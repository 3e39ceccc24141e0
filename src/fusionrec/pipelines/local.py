"""Run the pipeline on this machine through ``kfp.local`` and report each step's wall time and outputs."""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from fusionrec.artifacts import atomic_write_json
from fusionrec.pipelines.fusionrec_pipeline import make_pipeline
from fusionrec.pipelines.params import PipelineError

#: ``run_local(runner=...)`` values: every step in this Python environment, or in its own step image.
RUNNERS = ("subprocess", "docker")
#: the user the step images run as (docker/base/Dockerfile); owns what a root-started docker run writes
IMAGE_UID = 1000


class StepTimer:
    """Times every step kfp.local runs and reads back its outputs.

    kfp.local's own log lines race between its worker threads (ParallelFor iterations run two
    at a time and a "finished" line can be lost), so the timer wraps the task handlers instead
    (subprocess and Docker): one record per step execution (retries included), keyed by the
    task's output folder, whose ``executor_output.json`` holds the artifact URIs and output
    values; a Docker step also records the image it ran in.
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

    def _wrap(self, original: Any, in_image: bool) -> Any:
        timer = self

        def run(handler):
            start = time.time()
            task_dir = timer._task_dir(handler.full_command)
            image = handler.image if in_image else None
            if timer.echo is not None:
                timer.echo(f"  started  {Path(task_dir).name if task_dir else '?'}" + (f" in {image}" if image else ""))
            result = original(handler)
            status = getattr(result, "name", str(result))
            if in_image and status == "SUCCESS" and task_dir and not (Path(task_dir) / "executor_output.json").exists():
                # kfp.local's Docker handler reports exit code 0 when the auto-removed container is
                # already gone at wait(); every step that really succeeded wrote its executor output
                from kfp.local.status import Status

                result, status = Status.FAILURE, "FAILURE"
            with timer._lock:
                timer.records.append({"dir": task_dir, "start": start, "end": time.time(), "status": status, "image": image})
            if timer.echo is not None:
                label = timer._label(Path(task_dir) if task_dir else None)
                timer.echo(f"  {status.lower():<8} {label} ({time.time() - start:.1f} s)")
            return result

        return run

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from kfp.local import subprocess_task_handler

        handlers = [(subprocess_task_handler.SubprocessTaskHandler, False)]
        if hasattr(sys.modules.get("docker"), "DockerClient"):  # the SDK (not docker/ of Dockerfiles): kfp.local has its Docker handler
            from kfp.local import docker_task_handler

            handlers.append((docker_task_handler.DockerTaskHandler, True))
        originals = [(cls, cls.run) for cls, _ in handlers]
        for cls, in_image in handlers:
            cls.run = self._wrap(cls.run, in_image)
        try:
            yield
        finally:
            for cls, original in originals:
                cls.run = original

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
                        "image": rec.get("image"),
                        "task_dir": str(task_dir) if task_dir else None, "outputs": outputs, "params": params})
        return out


def _run_root(pipeline_root: Path, before: set[str]) -> Path | None:
    new = [p for p in pipeline_root.iterdir() if p.is_dir() and p.name not in before] if pipeline_root.exists() else []
    return max(new, key=lambda p: p.stat().st_mtime) if new else None


def _import_kfp_local():
    """Import ``kfp.local`` even when this repository's ``docker/`` folder shadows the docker SDK.

    kfp.local imports the optional ``docker`` SDK for its DockerRunner. With the SDK installed
    (the ``containers`` extra) the SDK wins: Python prefers a regular package anywhere on the
    path to a folder without ``__init__.py``. Without it, run from the repository root
    (``python -m pytest``) the ``docker/`` folder of Dockerfiles is found instead as a namespace
    package and kfp.local fails with "module 'docker' has no attribute 'DockerClient'"; the
    SubprocessRunner needs no docker SDK, so such a namespace package is hidden while importing.
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


def _docker_client() -> Any:
    """The docker SDK's client of a running engine, or a one-line PipelineError saying what is missing."""
    try:
        import docker
    except ImportError:
        docker = None
    if docker is None or not hasattr(docker, "from_env"):
        raise PipelineError("--runner docker needs the docker Python SDK: pip install 'fusionrec[containers]'")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise PipelineError(f"no Docker engine answers ({str(exc).splitlines()[0][:160]}); "
                            "start one with docker/local-engine.sh start") from None
    return client


def _docker_runner(local: Any, args: dict[str, Any], workdir: Path) -> Any:
    """A kfp.local DockerRunner for this run: every step image present, host paths mounted, a non-root user.

    kfp.local mounts only the pipeline root; the steps also read ``dataset_uri`` and
    ``control_model_uri`` when they are host folders (mounted read-only at the same path) and
    ``promote`` installs into ``serving_location``, next to which it keeps the previous model
    (its parent is mounted read-write). The steps run as the image's unprivileged user; a
    non-root caller runs them with its own uid:gid so that it owns what they write, and a root
    caller hands the run's folders to the image's user instead. No network: the step images
    carry everything a step needs (models in wheels, offline Hugging Face).
    """
    from docker.types import Mount

    from fusionrec.components import images

    client = _docker_client()
    try:
        missing = sorted({images.step_image(step) for step in images.STEP_IMAGES}
                         - {tag for image in client.images.list() for tag in image.tags})
    finally:
        client.close()
    if missing:
        raise PipelineError(f"step image(s) not built: {', '.join(missing)}; build them with docker/build.sh --local "
                            "(docker/local-engine.sh up first where no registry is reachable)")
    read_only = [Path(args[k]) for k in ("dataset_uri", "control_model_uri") if args.get(k) and "://" not in str(args[k])]
    read_write = [workdir]
    if args.get("serving_location"):
        serving_parent = Path(args["serving_location"]).resolve().parent
        serving_parent.mkdir(parents=True, exist_ok=True)
        read_write.append(serving_parent)
    for path in read_only:
        if not path.exists():
            raise PipelineError(f"{path} does not exist (the steps' containers mount it read-only)")
    mounts = [Mount(target=str(p.resolve()), source=str(p.resolve()), type="bind", read_only=True) for p in read_only]
    mounts += [Mount(target=str(p), source=str(p), type="bind") for p in dict.fromkeys(read_write)]  # (kfp adds outputs/)
    run_args: dict[str, Any] = {"mounts": mounts, "network_mode": "none",
                                # pytriton passes tensors through /dev/shm (the A/B step's online replay)
                                "shm_size": "1g"}
    if os.getuid() != 0:
        run_args["user"] = f"{os.getuid()}:{os.getgid()}"
    else:
        (workdir / "outputs").mkdir(parents=True, exist_ok=True)
        for path in dict.fromkeys([*read_write, workdir / "outputs"]):
            os.chown(path, IMAGE_UID, IMAGE_UID)
    return local.DockerRunner(**run_args)


def run_local(args: dict[str, Any], workdir: Path, cache: bool = True, retries: bool = False,
              log_file: Path | None = None, runner: str = "subprocess") -> dict[str, Any]:
    """Run the pipeline through kfp.local; returns the run summary (also written to ``workdir``).

    ``runner``: ``subprocess`` runs every step in this Python environment; ``docker`` runs every
    step in its own step image (``fusionrec.components.images``) through kfp.local's DockerRunner.
    ``log_file``: send the steps' own output there (kfp.local echoes each step's whole executor
    input) and keep only kfp.local's task lines on the terminal.
    """
    if runner not in RUNNERS:
        raise PipelineError(f"unknown runner {runner!r}; use one of {', '.join(RUNNERS)}")
    local = _import_kfp_local()

    pipeline = make_pipeline(gpu=True, retries=retries)  # kfp.local ignores the GPU/CPU/memory requests
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args = dict(args)
    args.setdefault("serving_location", str(workdir / "serving"))
    if runner == "docker":
        kfp_runner = _docker_runner(local, args, workdir)
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(workdir / "outputs"),
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
        "runner": runner,
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
        if s.get("image"):
            outs.insert(0, f"image {s['image']}")
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
