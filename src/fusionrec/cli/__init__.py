"""The ``fusionrec`` command line: one typer app, one module per command (or command group), named after it.

Each module in this package defines ``register(app)`` adding its commands; a module is
imported only to register, and heavy libraries (torch, transformers, pytriton) are imported
inside the commands so ``fusionrec --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Optional

import typer

from fusionrec import __version__

# Order is the order of the pipeline, which is also the order --help lists them in.
COMMAND_MODULES = ("demo", "demo_data", "ingest", "datasets", "encode", "align", "train", "evaluate", "export", "serve",
                   "recommend", "ab", "pipeline")

app = typer.Typer(
    name="fusionrec",
    help="Multimodal recommender: ingest, encode, align, train, export to ONNX, serve on Triton, A/B-evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fusionrec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """fusionrec: multimodal recommendation with pretrained encoders, Triton serving and KFP pipelines."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"fusionrec.cli.{_name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
