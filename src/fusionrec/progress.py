"""Progress bars and logging shared by the steps (tqdm; quiet when not a terminal or FUSIONREC_QUIET=1)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    return os.environ.get("FUSIONREC_QUIET", "") not in ("1", "true") and sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm bar writing to stderr, disabled when stderr is not a terminal (logs stay clean)."""
    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logging.getLogger("fusionrec").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root = logging.getLogger("fusionrec")
        root.addHandler(handler)
        root.setLevel(os.environ.get("FUSIONREC_LOG_LEVEL", "INFO"))
    return logger
