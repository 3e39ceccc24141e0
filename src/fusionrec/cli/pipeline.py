"""CLI commands: ``fusionrec pipeline compile | submit | run-local`` (the Kubeflow pipeline).

``compile`` writes the pipeline's YAML IR; ``submit`` sends it to a KFP cluster with
``kfp.Client``; ``run-local`` runs the same pipeline on this machine through ``kfp.local``
(``SubprocessRunner(use_venv=False)``: every step runs in this Python environment) and prints
each step's wall time and where its artifacts are.

Pipeline parameters are given as ``--param key=value`` (values are YAML: ``epochs=3``,
``modalities=[text,image]``, ``train_config={batch_size: 64}``) and/or a config file
(``--config``): its ``pipeline`` section holds pipeline parameters and each step section
(``ingest``, ``encode``, ``align``, ``train``, ``export``, ``ab``) becomes that step's
``<step>_config`` parameter. ``--param`` wins over the file.

Example:
    fusionrec pipeline compile pipelines/fusionrec_pipeline.yaml
    fusionrec pipeline run-local --param "dataset_uri=demo://?n_items=200&n_users=100" --param epochs=2
    fusionrec pipeline submit --host http://localhost:8080 --experiment fusionrec --param dataset_uri=/data/catalog
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from fusionrec.cli.common import user_errors

#: config-file sections that map to ``<section>_config`` pipeline parameters.
STEP_SECTIONS = ("ingest", "encode", "align", "train", "export", "ab")


class PipelineError(ValueError):
    """A pipeline parameter, host or local run problem, reported as one line."""


def pipeline_parameters() -> dict[str, Any]:
    """The pipeline's parameters and their defaults (from the pipeline function's signature)."""
    import inspect

    from fusionrec.pipelines.fusionrec_pipeline import fusionrec_pipeline

    sig = inspect.signature(fusionrec_pipeline.pipeline_func)
    return {name: p.default for name, p in sig.parameters.items()}


def resolve_parameters(params: list[str] | None, config: Path | None = None) -> dict[str, Any]:
    """Pipeline arguments from a config file and ``key=value`` pairs, checked against the pipeline."""
    from fusionrec.config import parse_overrides, read_config_file

    known = pipeline_parameters()
    args: dict[str, Any] = {}
    if config is not None:
        data = read_config_file(config)
        unknown_sections = sorted(set(data) - {"pipeline", *STEP_SECTIONS, "demo", "evaluate", "serve"})
        if unknown_sections:
            raise PipelineError(f"{config}: unknown section(s) {unknown_sections}; use pipeline, {', '.join(STEP_SECTIONS)}")
        args.update(data.get("pipeline") or {})
        for section in STEP_SECTIONS:
            if data.get(section):
                args[f"{section}_config"] = dict(data[section])
    args.update(parse_overrides(params))
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise PipelineError(f"unknown pipeline parameter(s) {unknown}; the pipeline takes: {', '.join(known)}")
    for name, value in args.items():
        default = known[name]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise PipelineError(f"pipeline parameter {name} must be true/false, got {value!r}")
        if isinstance(default, (list, dict)) and not isinstance(value, type(default)):
            raise PipelineError(f"pipeline parameter {name} must be a {type(default).__name__} (YAML), got {value!r}")
        if isinstance(default, str) and value is not None and not isinstance(value, str):
            args[name] = str(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            args[name] = float(value)
    return args


# --------------------------------------------------------------------------------------------
# run-local: each step's wall time and outputs
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
    import sys

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
    import builtins
    import contextlib
    import logging

    local = _import_kfp_local()

    from fusionrec.artifacts import atomic_write_json
    from fusionrec.pipelines.fusionrec_pipeline import make_pipeline

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
    import warnings

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


# --------------------------------------------------------------------------------------------
def _connection_errors() -> tuple[type[BaseException], ...]:
    import urllib3

    return (urllib3.exceptions.HTTPError, ConnectionError, OSError)


def submit(host: str, args: dict[str, Any], experiment: str, run_name: str | None = None,
           namespace: str | None = None, existing_token: str | None = None) -> dict[str, str]:
    """Compile the pipeline and create a run on the KFP at ``host``; returns run id and URL."""
    import tempfile

    import kfp
    from kfp_server_api.exceptions import ApiException

    from fusionrec.pipelines.fusionrec_pipeline import compile_pipeline

    import warnings

    try:
        with warnings.catch_warnings():  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
            warnings.simplefilter("ignore", FutureWarning)
            client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
        with tempfile.TemporaryDirectory() as tmp:
            package = compile_pipeline(Path(tmp) / "fusionrec_pipeline.yaml")
            result = client.create_run_from_pipeline_package(str(package), arguments=args, run_name=run_name,
                                                             experiment_name=experiment, namespace=namespace)
    except _connection_errors() as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PipelineError(f"cannot reach KFP at {host}: {reason}") from None
    except ApiException as exc:
        raise PipelineError(f"KFP at {host} refused the request: HTTP {exc.status} {exc.reason}"
                            + (f": {str(exc.body)[:300]}" if exc.body else "")) from None
    run_id = result.run_id
    return {"run_id": run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run_id}"}


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The Kubeflow pipeline: compile it, submit it to a KFP cluster, or run it locally with kfp.local.",
                        no_args_is_help=True)
    app.add_typer(group, name="pipeline")

    ParamOption = typer.Option(None, "--param", "-p", help="Pipeline parameter key=value (YAML value; repeatable).")
    ConfigFile = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                              help="Config file: its 'pipeline' section = parameters, step sections = <step>_config.")

    @group.command("compile")
    def compile_cmd(
        out: Path = typer.Argument(Path("pipelines/fusionrec_pipeline.yaml"), help="Where to write the compiled YAML."),
        gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Request a GPU for encode/align/train/export."),
    ) -> None:
        """Compile the pipeline to KFP v2 YAML (identical bytes for identical code)."""
        with user_errors(PipelineError):
            from fusionrec.pipelines.fusionrec_pipeline import compile_pipeline

            path = compile_pipeline(out, gpu=gpu)
            typer.echo(f"compiled pipeline -> {path}")

    @group.command("submit")
    def submit_cmd(
        host: str = typer.Option(..., "--host", help="KFP API endpoint, e.g. http://localhost:8080 (port-forwarded ml-pipeline-ui)."),
        experiment: str = typer.Option("fusionrec", "--experiment", help="Experiment name (created when missing)."),
        run_name: Optional[str] = typer.Option(None, "--run-name", help="Run name (default: KFP's)."),
        namespace: Optional[str] = typer.Option(None, "--namespace", help="Kubeflow profile namespace (multi-user clusters)."),
        token: Optional[str] = typer.Option(None, "--token", envvar="KFP_TOKEN", help="Bearer token for an authenticated endpoint."),
        param: Optional[list[str]] = ParamOption,
        config: Optional[Path] = ConfigFile,
    ) -> None:
        """Submit a run of the pipeline to a KFP cluster (kfp.Client)."""
        with user_errors(PipelineError):
            args = resolve_parameters(param, config)
            info = submit(host, args, experiment, run_name, namespace, token)
            typer.echo(f"submitted run {info['run_id']}: {info['url']}")

    @group.command("run-local")
    def run_local_cmd(
        param: Optional[list[str]] = ParamOption,
        config: Optional[Path] = ConfigFile,
        workdir: Path = typer.Option(Path("artifacts/pipeline"), "--workdir", help="Pipeline root, cache and default serving location."),
        cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse outputs of steps whose inputs did not change."),
        retries: bool = typer.Option(False, "--retries/--no-retries", help="Apply the pipeline's KFP retries (with back-off) as on a cluster."),
        as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
        log_file: Optional[Path] = typer.Option(None, "--log-file", help="Write the steps' own output there instead of the terminal."),
    ) -> None:
        """Run the whole pipeline here through kfp.local (each step in this Python environment)."""
        with user_errors(PipelineError):
            summary = run_local(resolve_parameters(param, config), workdir, cache=cache, retries=retries, log_file=log_file)
        typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
        if summary["status"] != "SUCCESS":
            typer.secho(f"error: pipeline failed: {summary['error']}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1)
