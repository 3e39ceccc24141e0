"""Progress bars and logging shared by the steps.

On a terminal: tqdm bars. With stderr piped to a file (CI, ``kfp.local``, ``make demo``'s
pipeline.log) a bar is useless, but a step silent for minutes looks hung: there, a loop that
runs longer than ``FUSIONREC_PROGRESS_INTERVAL`` seconds (default 10) logs one progress line per
interval instead. ``FUSIONREC_QUIET=1`` turns both off (the test suite).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def _quiet() -> bool:
    return os.environ.get("FUSIONREC_QUIET", "") in ("1", "true")


def progress_enabled() -> bool:
    return not _quiet() and sys.stderr.isatty()


class _LogLines:
    """A file-like target for tqdm that turns each refresh into one log line (no carriage returns)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.logger.info(text)

    def flush(self) -> None:
        pass


_LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm bar on a terminal; elsewhere a log line every ``FUSIONREC_PROGRESS_INTERVAL`` seconds.

    >>> sum(progress(range(4), desc="items", disable=True))
    6
    """
    if "disable" in kwargs or progress_enabled() or _quiet():
        kwargs.setdefault("disable", not progress_enabled())
        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("file", sys.stderr)
        return tqdm(iterable, **kwargs)
    interval = float(os.environ.get("FUSIONREC_PROGRESS_INTERVAL", "10"))
    kwargs.update(file=_LogLines(get_logger("fusionrec.progress")), mininterval=interval, delay=interval,
                  bar_format=_LOG_FORMAT, dynamic_ncols=False)
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
