"""CLI commands: ``fusionrec encode`` (one modality of a dataset artifact) and ``fusionrec encode-merge``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fusionrec.cli.common import ConfigOption, ForceOption, SetOption, step_config, user_errors


def _summary(path: Path) -> None:
    from fusionrec.artifacts import read_manifest

    m = read_manifest(path)
    c = m.get("counts", {})
    n = m.get("shard", {}).get("items") or m.get("n_items")
    typer.echo(f"{m['kind']} {m['modality']} -> {path}")
    typer.echo(f"  encoder   {m.get('encoder')}  dim {m.get('dim')}")
    typer.echo(f"  items     {n}: {c.get('present', 0)} present, {c.get('masked', 0)} masked")
    for reason, k in (m.get("reasons") or {}).items():
        typer.echo(f"    {k:>6}  {reason}")
    line = f"  encoded   {c.get('encoded', 0)}, from cache {c.get('cached', 0)}"
    if c.get("items_per_s"):
        line += f", {c['items_per_s']} items/s"
    typer.echo(line)


def register(app: typer.Typer) -> None:
    @app.command("encode")
    def encode(
        dataset: Optional[Path] = typer.Argument(None, help="dataset artifact folder (from `fusionrec ingest`)", exists=True, file_okay=False),
        out: Optional[Path] = typer.Argument(None, help="output embeddings artifact folder"),
        modality: Optional[str] = typer.Option(None, "--modality", "-m", help="text, image, audio or tabular"),
        encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="registered encoder name (default: the modality's default)"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="items per inference batch"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda[:i]"),
        shard: Optional[int] = typer.Option(None, "--shard", help="this shard's index (0-based)"),
        num_shards: Optional[int] = typer.Option(None, "--num-shards", help="number of shards (>1 writes a shard artifact for encode-merge)"),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="content-hash cache folder"),
        no_cache: bool = typer.Option(False, "--no-cache", help="encode everything, read and write no cache"),
        list_encoders: bool = typer.Option(False, "--list", help="list the registered encoders per modality and exit"),
        config: Optional[Path] = ConfigOption,
        sets: Optional[List[str]] = SetOption,
        force: bool = ForceOption,
    ) -> None:
        """Encode one modality of DATASET into an embeddings artifact OUT (embeddings.npy, mask.npy, reasons.parquet).

        Encoder options: --set encoder_kwargs.model=/path/to/model (repeatable), e.g.
        `fusionrec encode ds out -m text -e hf --set encoder_kwargs.model=./bert-base`.
        """
        with user_errors(RuntimeError):
            from fusionrec.config import parse_overrides
            from fusionrec.encoders.encode import EncodeConfig, run
            from fusionrec.encoders.registry import MODALITIES, available, default_encoder

            if list_encoders:
                for m in MODALITIES:
                    names = available(m)
                    try:
                        d = default_encoder(m)
                    except KeyError:
                        d = None
                    typer.echo(f"{m:8s} " + ", ".join(f"{n}{' (default)' if n == d else ''}" for n in names))
                return
            if dataset is None or out is None:
                raise ValueError("encode needs DATASET and OUT (or --list alone)")
            kw_pairs = [s[len("encoder_kwargs."):] for s in sets or [] if s.startswith("encoder_kwargs.")]
            plain = [s for s in sets or [] if not s.startswith("encoder_kwargs.")]
            flags = {
                "modality": modality, "encoder": encoder, "batch_size": batch_size, "device": device, "shard": shard,
                "num_shards": num_shards, "cache_dir": str(cache_dir) if cache_dir else None, "cache": False if no_cache else None,
            }
            cfg = step_config(EncodeConfig, config, "encode", flags, plain)
            if kw_pairs:
                cfg.encoder_kwargs.update(parse_overrides(kw_pairs))
            path = run(dataset, out, cfg, force=force)
            _summary(path)

    @app.command("encode-merge")
    def encode_merge(
        out: Path = typer.Argument(..., help="output embeddings artifact folder"),
        shards: List[Path] = typer.Argument(..., help="the shard artifacts of one sharded encode run", exists=True, file_okay=False),
        force: bool = ForceOption,
    ) -> None:
        """Merge the shard artifacts of `fusionrec encode --shard i --num-shards n` into one embeddings artifact."""
        with user_errors():
            from fusionrec.encoders.encode import merge

            _summary(merge(shards, out, force=force))
