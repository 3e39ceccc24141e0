"""Serving benchmark: gRPC throughput and p50/p99 latency on the local Triton, batched vs unbatched,
and onnxruntime vs PyTorch eager latency for the same graph.

The graph is the real ``Recommender`` serving graph (2 Transformer layers, d=64, L=50, top-100)
over a 2,000-item catalog with random weights (serving cost does not depend on training).
Each concurrency level sends single-user requests from ``c`` in-flight asyncio loops for a fixed
time. "Unbatched" is the same model served with Triton's default scheduler (every request
executed alone); "batched" uses the dynamic batcher from config.pbtxt.

    .venv/bin/python benchmarks/serving.py [--seconds 4] [--items 2000]

Prints a table and writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusionrec.export import ExportConfig, export_module
from fusionrec.export.graph import guarded
from fusionrec.model_repository import feeds, ort_session
from fusionrec.models.recommender import ModelSpec, Recommender
from fusionrec.serving.server import free_ports

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from protocol import provenance  # noqa: E402


def histories(n: int, n_items: int, max_len: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, max_len), np.int64)
    for i in range(n):
        m = int(rng.integers(1, max_len + 1))
        out[i, max_len - m:] = rng.integers(1, n_items + 1, m)
    return out


def time_fn(fn, reps: int) -> dict:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"p50_ms": float(np.percentile(ts, 50) * 1e3), "mean_ms": float(np.mean(ts) * 1e3)}


async def load(url: str, model: str, hist: np.ndarray, concurrency: int, seconds: float) -> dict:
    import tritonclient.grpc as grpc
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(url)
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int):
        nonlocal errors
        i = w
        while time.perf_counter() < stop:
            h = hist[i % len(hist)][None]
            i += concurrency
            inp = grpc.InferInput("HISTORY", list(h.shape), "INT64")
            inp.set_data_from_numpy(h)
            t0 = time.perf_counter()
            try:
                await client.infer(model, [inp])
                lat.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    a = np.array(lat) * 1e3
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors, "throughput_rps": len(lat) / wall,
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def stats(url: str, model: str) -> tuple[int, int]:
    import tritonclient.grpc as grpc

    s = grpc.InferenceServerClient(url).get_inference_statistics(model).model_stats[0]
    return int(s.inference_count), int(s.execution_count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "serving.json")
    args = ap.parse_args()
    from fusionrec.serving.server import start_server

    torch.manual_seed(0)
    n, max_len, K = args.items, args.max_len, args.k
    spec = ModelSpec(n_items=n, modalities=[], use_id_embedding=True, dim=64, layers=2, heads=2, max_len=max_len, dropout=0.0)
    id_mask = torch.ones(n + 1, dtype=torch.bool)
    id_mask[0] = False
    model = Recommender(spec, id_mask=id_mask).eval()
    module = model.serving_module(K)
    hist = histories(512, n, max_len)
    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-bench-"))
    repo = export_module(module, n, max_len, [""] + [f"i{i}" for i in range(1, n + 1)], None, tmp / "repo",
                         ExportConfig(name="bench", k=K, instance_kind="KIND_CPU"), k=K, histories=hist,
                         popular={"item_idx": [1], "item_id": ["i1"], "count": [1]})
    report = json.loads((repo / "bench" / "export_report.json").read_text())

    # onnxruntime vs PyTorch eager, same guarded graph
    g = guarded(module, n)
    sess = ort_session(repo / "bench" / "1" / "model.onnx")
    eager_vs_ort = {}
    for b in (1, 64):
        h = hist[:b]
        with torch.no_grad():
            te = time_fn(lambda: g(*(torch.from_numpy(v) for v in feeds(h, h.shape[1]).values())), 30)
        to = time_fn(lambda: sess.run(None, feeds(h, h.shape[1])), 30)
        eager_vs_ort[f"batch_{b}"] = {"torch_eager_ms": te["p50_ms"], "onnxruntime_ms": to["p50_ms"],
                                      "speedup": te["p50_ms"] / to["p50_ms"]}

    results: dict = {"batched": [], "unbatched": []}
    for mode in ("unbatched", "batched"):
        gp, hp, mp = free_ports(3)
        with start_server({"bench": repo}, grpc_port=gp, http_port=hp, metrics_port=mp, dynamic_batching=mode == "batched") as srv:
            asyncio.run(load(srv.grpc_url, "bench", hist, 4, 1.0))  # warm-up
            for c in args.concurrency:
                i0, e0 = stats(srv.grpc_url, "bench")
                r = asyncio.run(load(srv.grpc_url, "bench", hist, c, args.seconds))
                i1, e1 = stats(srv.grpc_url, "bench")
                r["mean_batch_size"] = (i1 - i0) / max(1, e1 - e0)
                results[mode].append(r)
                print(f"{mode:>9} c={c:<3} {r['throughput_rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                      f"mean batch {r['mean_batch_size']:.1f}  errors {r['errors']}", flush=True)

    by_c = {r["concurrency"]: r for r in results["unbatched"]}
    ratio = {str(r["concurrency"]): r["throughput_rps"] / by_c[r["concurrency"]]["throughput_rps"] for r in results["batched"]}
    p99_c8 = next((r["p99_ms"] for r in results["batched"] if r["concurrency"] == 8), None)
    out = {
        "provenance": provenance(sys.argv),
        "graph": {"items": n, "max_len": max_len, "k": K, "layers": 2, "dim": 64, "exporter": report["export"]["exporter"]},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "provider": sess.get_providers()[0]},
        "seconds_per_point": args.seconds,
        "grpc": results,
        "batched_over_unbatched_throughput": ratio,
        "eager_vs_onnxruntime": eager_vs_ort,
        "goals": {"batching_ge_2x_at_c32": ratio.get("32", 0) >= 2.0, "p99_lt_50ms_at_c8": p99_c8 is not None and p99_c8 < 50},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print("\n| mode | concurrency | req/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|")
    for mode in ("unbatched", "batched"):
        for r in results[mode]:
            print(f"| {mode} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch_size']:.1f} |")
    print("\nbatched / unbatched throughput:", {c: round(v, 2) for c, v in ratio.items()})
    for b, v in eager_vs_ort.items():
        print(f"{b}: torch eager {v['torch_eager_ms']:.2f} ms, onnxruntime {v['onnxruntime_ms']:.2f} ms ({v['speedup']:.1f}x)")
    print("goals:", out["goals"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
