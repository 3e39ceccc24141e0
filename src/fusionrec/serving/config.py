"""Validate Triton ``config.pbtxt`` files with Triton's own protobuf schema (``tritonclient``).

Example:
    >>> from fusionrec.serving.config import validate
    >>> validate("artifacts/repo")                 # doctest: +SKIP
    [PosixPath('artifacts/repo/fusionrec')]
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from fusionrec.model_repository import INPUTS, OUTPUTS


def parse_model_config(text: str, source: str = "config.pbtxt") -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text into ``ModelConfig``; a ``ValueError`` naming ``source`` when invalid."""
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{source}: not a valid Triton model configuration: {exc}") from None


def read_model_config(path: str | os.PathLike) -> model_config_pb2.ModelConfig:
    path = Path(path)
    return parse_model_config(path.read_text(encoding="utf-8"), source=str(path))


def validate(repo: str | os.PathLike) -> list[Path]:
    """Check every ``<name>/config.pbtxt`` of a model repository; return the model folders.

    Beyond parsing, checks what Triton checks at load time and what the serving contract needs:
    the name matches the folder, a version folder holds ``model.onnx``, the I/O names and types.
    """
    repo = Path(repo)
    configs = sorted(repo.glob("*/config.pbtxt"))
    if not configs:
        raise ValueError(f"{repo}: no <name>/config.pbtxt found; is this a model repository from `fusionrec export`?")
    out = []
    for path in configs:
        cfg = read_model_config(path)
        mdir = path.parent
        problems = []
        if cfg.name and cfg.name != mdir.name:
            problems.append(f"name '{cfg.name}' differs from its folder '{mdir.name}'")
        if cfg.platform != "onnxruntime_onnx" and cfg.backend != "onnxruntime":
            problems.append(f"platform '{cfg.platform}' is not onnxruntime_onnx")
        if not any((v / "model.onnx").is_file() for v in mdir.iterdir() if v.is_dir() and v.name.isdigit()):
            problems.append("no <version>/model.onnx")
        types = model_config_pb2.DataType
        ins = {i.name: i.data_type for i in cfg.input}
        outs = {o.name: o.data_type for o in cfg.output}
        if ins != {t.name: types.Value(t.triton_type) for t in INPUTS}:
            problems.append(f"inputs {sorted(ins)} != {', '.join(f'{t.name} ({t.triton_type})' for t in INPUTS)}")
        if outs != {t.name: types.Value(t.triton_type) for t in OUTPUTS}:
            problems.append(f"outputs {sorted(outs)} != {', '.join(f'{t.name} ({t.triton_type})' for t in OUTPUTS)}")
        if cfg.max_batch_size < 1 or not cfg.HasField("dynamic_batching"):
            problems.append("dynamic batching needs max_batch_size >= 1 and a dynamic_batching block")
        if problems:
            raise ValueError(f"{path}: " + "; ".join(problems))
        out.append(mdir)
    return out
