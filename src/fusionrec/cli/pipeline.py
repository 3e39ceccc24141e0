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

import json
from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import user_errors
from fusionrec.pipelines.local import format_summary, run_local
from fusionrec.pipelines.params import PipelineError, resolve_parameters
from fusionrec.pipelines.submit import submit

def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The Kubeflow pipeline: compile it, submit it to a KFP cluster, or run it locally with kfp.local.",
                        no_args_is_help=True)
    app.add_typer(group, name="pipeline")

    ParamOption = typer.Option(None, "--param", "-p", help="Pipeline parameter key=value (YAML value; repeatable).")
    ConfigFile = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                              help="Config file: its 'pipeline' section = parameters, step sections = <step>_config.")

    @group.command("compile")
    def compile_cmd(
        out: Optional[Path] = typer.Argument(None, help="Where to write the compiled pipeline YAML "
                                             "(default: pipelines/fusionrec_pipeline.yaml, plus the component specs)."),
        components: Optional[Path] = typer.Option(None, "--components", help="Also write each step's component spec to "
                                                  "DIR/<step>/component.yaml (default without OUT: components/)."),
        gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Request a GPU for encode/align/train/export."),
    ) -> None:
        """Compile the pipeline to KFP v2 YAML and the steps to reusable component specs (identical bytes for identical code).

        With no argument it rewrites both checked-in copies: pipelines/fusionrec_pipeline.yaml and components/*/component.yaml.
        """
        with user_errors(PipelineError):
            from fusionrec.pipelines.fusionrec_pipeline import compile_components, compile_pipeline

            if out is None:
                out, components = Path("pipelines/fusionrec_pipeline.yaml"), components or Path("components")
            path = compile_pipeline(out, gpu=gpu)
            typer.echo(f"compiled pipeline -> {path}")
            if components is not None:
                specs = compile_components(components)
                typer.echo(f"compiled {len(specs)} component specs -> {components}/<step>/component.yaml")

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
