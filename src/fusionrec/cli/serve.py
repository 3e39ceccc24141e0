"""CLI command: ``fusionrec serve`` (exported models on a local Triton server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import user_errors


def register(app: typer.Typer) -> None:
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
