"""The benchmarks' step runner: run a pipeline step unless its artifact is already there (resumable runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def step(name: str, out: Path, fn: Callable[[], object], timings: dict, fresh: bool = False) -> Path:
    """Run ``fn`` (which writes the artifact ``out``) unless ``out`` holds a manifest and not ``fresh``.

    ``timings[name]`` gets the seconds it took, or ``"reused"``.
    """
    if (out / "manifest.json").exists() and not fresh:
        print(f"[reuse] {name}: {out}", flush=True)
        timings[name] = "reused"
        return out
    t0 = time.perf_counter()
    print(f"[run]   {name} ...", flush=True)
    fn()
    timings[name] = round(time.perf_counter() - t0, 1)
    print(f"        {name}: {timings[name]} s", flush=True)
    return out
