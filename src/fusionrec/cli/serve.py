"""CLI commands: ``fusionrec export`` (model -> Triton repository), ``serve`` (local Triton), ``recommend`` (gRPC)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, step_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: Path = typer.Argument(..., help="Model artifact folder (from `fusionrec train`)."),
        dataset: Path = typer.Argument(..., help="Dataset artifact the model was trained on (parity runs on its test cases)."),
        out: Path = typer.Argument(..., help="Output model repository folder (written atomically)."),
        config: Optional[Path] = ConfigOption,
        name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository (default fusionrec)."),
        k: Optional[int] = typer.Option(None, "-k", "--k", help="Top-K computed in the graph (default 100)."),
        max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", help="Triton max_batch_size (default 64)."),
        max_queue_delay_us: Optional[int] = typer.Option(None, "--max-queue-delay-us", help="Dynamic batching queue delay (default 2000)."),
        cpu: bool = typer.Option(False, "--cpu", help="instance_group KIND_CPU (default KIND_GPU, for production Triton)."),
        instances: Optional[int] = typer.Option(None, "--instances", help="instance_group count (default 1)."),
        tensorrt: bool = typer.Option(False, "--tensorrt", help="Add the TensorRT GPU execution accelerator to config.pbtxt."),
        legacy: bool = typer.Option(False, "--legacy-exporter", help="Use the TorchScript-based exporter instead of dynamo."),
        add_items: Optional[Path] = typer.Option(None, "--add-items", help="New (cold-start) items: a raw items CSV/parquet or a dataset "
                                                  "folder; they are encoded, aligned and appended to the item table without retraining."),
        aligned: Optional[Path] = typer.Option(None, "--aligned", help="Aligned artifact the model used (needed by --add-items)."),
        sets: Optional[list[str]] = SetOption,
    ) -> None:
        """Export a model to ONNX, check parity on every test case, write a Triton model repository."""
        with user_errors():
            from fusionrec import export as ex
            from fusionrec.export.new_items import run_with_new_items
            from fusionrec.serving.config import validate

            cfg = step_config(ex.ExportConfig, config, "export", {
                "name": name, "k": k, "max_batch_size": max_batch_size, "max_queue_delay_microseconds": max_queue_delay_us,
                "instance_kind": "KIND_CPU" if cpu else None, "instance_count": instances,
                "accelerator": "tensorrt" if tensorrt else None, "dynamo": False if legacy else None}, sets)
            if add_items is not None:
                if aligned is None:
                    raise ValueError("--add-items needs --aligned ALIGNED_ARTIFACT (the projection heads the model was trained with)")
                path = run_with_new_items(model, dataset, aligned, add_items, out, cfg)
            else:
                path = ex.run(model, dataset, out, cfg)
            dirs = validate(path)
            for mdir in dirs:
                from fusionrec.artifacts import read_json

                p = read_json(mdir / "export_report.json")["parity"]
                typer.echo(f"{mdir}: config.pbtxt valid; parity on {p['n_cases']} test cases: max |score diff| "
                           f"{p['max_abs_score_diff']:.2g}, {p['reordered_cases']} near-tie reorders")

    @app.command("serve")
    def serve(
        repos: list[Path] = typer.Argument(..., help="Model repository folder(s) from `fusionrec export`; every model in them is served."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
        grpc_port: int = typer.Option(8001, "--grpc-port"),
        http_port: int = typer.Option(8000, "--http-port"),
        metrics_port: int = typer.Option(8002, "--metrics-port"),
        max_queue_delay_us: Optional[int] = typer.Option(None, "--max-queue-delay-us", help="Override config.pbtxt's dynamic batching delay."),
        instances: int = typer.Option(1, "--instances", help="Model instances (onnxruntime sessions) per model."),
        no_batching: bool = typer.Option(False, "--no-dynamic-batching", help="Serve every request alone (for comparisons)."),
    ) -> None:
        """Serve exported models on a local Triton server (nvidia-pytriton) until SIGINT/SIGTERM."""
        with user_errors():
            from fusionrec.serving.server import serve_forever, start_server

            handle = start_server(repos, host=host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                                  max_queue_delay_us=max_queue_delay_us, instances=instances, dynamic_batching=not no_batching)
            for m in handle.models.values():
                typer.echo(f"serving '{m.name}' (L={m.max_len}, K={m.k}, max batch {m.max_batch_size}, "
                           f"queue delay {m.max_queue_delay_us} us, {m.provider}) on grpc {handle.grpc_url}", err=True)
            typer.echo(f"ready: grpc {handle.grpc_url} http {handle.http_url} metrics {host}:{metrics_port}", err=True)
            serve_forever(handle)

    @app.command("recommend")
    def recommend(
        user_history: str = typer.Option("", "--user-history", help="Comma-separated item ids, most recent last (empty: cold user)."),
        k: int = typer.Option(10, "-k", "--k"),
        url: str = typer.Option("127.0.0.1:8001", "--url", help="Triton gRPC address."),
        model: str = typer.Option("fusionrec", "--model", help="Served model name."),
        repo: Optional[Path] = typer.Option(None, "--repo", help="Model repository (item id map + popularity fallback)."),
        timeout_s: float = typer.Option(10.0, "--timeout", help="Per-call deadline in seconds."),
    ) -> None:
        """Ask a served model for top-K recommendations over gRPC and print them."""
        with user_errors(TimeoutError):
            from tritonclient.utils import InferenceServerException

            from fusionrec.serving.client import RecommendClient

            history = [x.strip() for x in user_history.split(",") if x.strip()]
            try:
                with RecommendClient(url, model=model, repo=repo, timeout_s=timeout_s) as client:
                    if client.item_ids is None:
                        raise ValueError("--repo MODEL_REPO is needed to map item ids")
                    recs = client.recommend(history, k=k)
            except InferenceServerException as exc:
                raise ValueError(f"Triton at {url}: {exc.message() if hasattr(exc, 'message') else exc}") from None
            if not history:
                typer.echo("(empty history: popularity fallback)", err=True)
            for rank, (item, score) in enumerate(recs, 1):
                typer.echo(f"{rank:>3}  {item}  {score:.4f}")
