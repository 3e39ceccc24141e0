"""Readiness of a ``fusionrec serve`` server: every model it serves loaded, not just Triton up.

pytriton starts tritonserver in explicit model-control mode and loads the models after the server
answers, so Triton's own ``/v2/health/ready`` turns true before any model is loaded: a probe on it
lets traffic in that gets "unknown model" (and pytriton's repository index stays empty, so it cannot
say which models to wait for). Ready here means each named model answers ``GET /v2/models/<name>/ready``
with 200; the names are the model folders of the repository being served, as ``fusionrec serve`` names them.

    python -m fusionrec.serving.health --repo /models --url 127.0.0.1:8000   # exit 0 ready, 1 not (why on stderr)

It is the serving image's HEALTHCHECK. (NGC's tritonserver, ``docker/triton/``, loads its repository before
it reports ready; its probe stays ``/v2/health/ready``.)

Example:
    >>> models_ready("127.0.0.1:1", ["fusionrec"], timeout_s=0.5)[0]
    False
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Sequence


def models_ready(http_url: str, names: Sequence[str], timeout_s: float = 2.0) -> tuple[bool, str]:
    """``(ready, reason)``: is every model in ``names`` ready on the Triton whose HTTP endpoint is ``http_url``?"""
    if not names:
        raise ValueError("name at least one model to wait for")
    base = (http_url if "://" in http_url else f"http://{http_url}").rstrip("/")
    waiting = []
    for name in names:
        try:
            with urllib.request.urlopen(f"{base}/v2/models/{urllib.parse.quote(name, safe='')}/ready", timeout=timeout_s):
                pass  # 200: loaded and ready
        except urllib.error.HTTPError as exc:  # 400: unknown to Triton yet, or not ready
            waiting.append(f"{name} (HTTP {exc.code})")
        except OSError as exc:  # refused, timed out
            return False, f"no answer from {base}: {exc}"
    if waiting:
        return False, "not ready: " + ", ".join(waiting)
    return True, "ready: " + ", ".join(names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fusionrec.serving.health", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP endpoint, host:port (default %(default)s)")
    ap.add_argument("--repo", help="the model repository being served: wait for every model in it")
    ap.add_argument("--model", action="append", default=[], help="a model name to wait for (repeatable)")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each answer (default %(default)s)")
    args = ap.parse_args(argv)
    names = list(args.model)
    if args.repo:
        from fusionrec.model_repository import model_dirs

        names += [d.name for d in model_dirs(args.repo)]
    if not names:
        ap.error("give --repo or --model")
    ok, why = models_ready(args.url, names, args.timeout)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
