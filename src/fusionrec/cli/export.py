"""CLI command: ``fusionrec export`` (model -> ONNX -> Triton model repository, parity checked)."""

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
