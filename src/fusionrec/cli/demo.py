"""``fusionrec demo``: the main job on the built-in demo catalog (what ``make demo`` runs).

1. generate the demo catalog (real PNG/WAV files, descriptions, ground truth) unless it is there;
2. run the whole Kubeflow pipeline locally through ``kfp.local`` (ingest, encoders, align, train
   fused + ID-only control, export to ONNX, A/B, promote), printing each step's wall time;
3. print the fused model, the control and the generator's oracle ceiling side by side;
4. serve the promoted model (or, if the A/B step rejected it, the new model, and say so) on a
   local Triton server, ask it for a few users' recommendations over gRPC and print them next to
   those users' recent history; then stop the server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from fusionrec.cli.common import user_errors

#: Demo-sized defaults: the whole demo must finish in minutes on 2 CPU cores.
DEMO_ITEMS = 2000
DEMO_USERS = 1000


def _find(steps: list[dict[str, Any]], prefix: str, output: str) -> Optional[Path]:
    for s in steps:
        if s["step"].startswith(prefix) and output in s["outputs"]:
            return Path(s["outputs"][output])
    return None


def _metric_rows(models: dict[str, Optional[Path]], oracle: Optional[dict]) -> list[str]:
    from fusionrec.artifacts import read_json

    cols = [("overall", "ndcg@10"), ("overall", "recall@10"), ("warm", "ndcg@10"), ("cold", "ndcg@10"), ("overall", "mrr")]
    head = f"{'model':<22}" + "".join(f"{seg + ' ' + m:>18}" for seg, m in cols)
    lines = [head, "-" * len(head)]
    rows: dict[str, dict] = {}
    for label, path in models.items():
        if path is not None and (path / "metrics.json").exists():
            rows[label] = read_json(path / "metrics.json").get("test", {})
    if oracle:
        rows["oracle (ceiling)"] = oracle
    for label, summary in rows.items():
        cells = []
        for seg, m in cols:
            v = summary.get(seg, {}).get(m)
            cells.append(f"{v:>18.4f}" if isinstance(v, (int, float)) else f"{'-':>18}")
        lines.append(f"{label:<22}" + "".join(cells))
    return lines


def _serve_and_query(repo: Path, dataset: Path, n_users: int, k: int, log_file: Path) -> None:
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.serving.server import free_ports
    from fusionrec.serving.client import RecommendClient
    from fusionrec.serving.server import start_server

    ds = DatasetArtifact(dataset)
    titles = dict(zip(ds.items["item_id"].astype(str), ds.items["title"].fillna("").astype(str)))
    cases, histories = ds.eval_cases("test", max_len=50)
    warm = cases.index[cases["segment"] == "warm"][:n_users]
    grpc_port, http_port, metrics_port = free_ports(3)
    t0 = time.perf_counter()
    with start_server(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, log_file=log_file) as srv:
        name = next(n for n, m in srv.models.items() if m.kind == "ranker")
        extra = [n for n in srv.models if n != name]
        typer.echo(f"\nTriton serving '{name}'{' with ' + ', '.join(repr(n) for n in extra) if extra else ''} from {repo} "
                   f"on grpc {srv.grpc_url} (started in {time.perf_counter() - t0:.1f} s; server log: {log_file})")
        with RecommendClient(srv.grpc_url, model=name, repo=repo) as client:
            for i in warm:
                hist = [str(ds.item_ids[j]) for j in histories[i] if j > 0]
                t1 = time.perf_counter()
                recs = client.recommend(hist, k=k)
                ms = (time.perf_counter() - t1) * 1000
                target = str(ds.item_ids[int(cases.loc[i, "item_idx"])])
                user = ds.users.loc[ds.users["user_idx"] == int(cases.loc[i, "user_idx"]), "user_id"].iloc[0]
                typer.echo(f"\nuser {user}: recent history (most recent last)")
                for h in hist[-5:]:
                    typer.echo(f"    {h:<10} {titles.get(h, '')}")
                typer.echo(f"  top-{k} from Triton over gRPC ({ms:.1f} ms); their real next item: {target} {titles.get(target, '')}")
                for rank, (item, score) in enumerate(recs, 1):
                    mark = "  <- the real next item" if item == target else ""
                    typer.echo(f"    {rank:>2}. {item:<10} {score:8.3f}  {titles.get(item, '')}{mark}")
            _explained_and_query(client, srv, histories[warm[0]] if len(warm) else None, titles)
    typer.echo("Triton stopped.")


#: The demo's text query: words of one genre's vocabulary, none of them an item id or title.
DEMO_QUERY = "stories about astronauts, rockets and distant galaxies"


def _explained_and_query(client, srv, history, titles: dict[str, str]) -> None:
    """One explained recommendation (served <name>_explain) and one text query (served <name>_query)."""
    from fusionrec.explain import format_explanation

    if history is not None and f"{client.model}_explain" in srv.models:
        idx, _, ex = client.topk(history.reshape(1, -1), 1, explain=True)
        typer.echo("\nwhy the first user's top recommendation? (served explain model over gRPC: the modality bar is each "
                   "channel's share of the score, the history items are the score drop when each is removed)")
        typer.echo("  " + format_explanation(ex[0][0], client.item_ids, titles).replace("\n", "\n  "))
    if f"{client.model}_query" in srv.models:
        client.query_topk(["warm up"], k=1)  # the first call loads the tokenizer: keep it out of the timing
        t1 = time.perf_counter()
        recs = client.query(DEMO_QUERY, k=5)
        ms = (time.perf_counter() - t1) * 1000
        typer.echo(f"\na new user with no history types {DEMO_QUERY!r} (served query model over gRPC, {ms:.0f} ms):")
        for rank, (item, score) in enumerate(recs, 1):
            typer.echo(f"    {rank:>2}. {item:<10} {score:8.3f}  {titles.get(item, '')}")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("artifacts/demo"), "--out", help="Where the catalog, pipeline outputs and promoted model go."),
        items: Optional[int] = typer.Option(None, "--items", help=f"Demo catalog size (items; default: the config's demo section, else {DEMO_ITEMS})."),
        users: Optional[int] = typer.Option(None, "--users", help=f"Demo catalog size (users; default: the config's demo section, else {DEMO_USERS})."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Demo catalog seed (default: the config's demo section, else 0)."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                              help="Config file (e.g. configs/demo.yaml): its `demo` section (the catalog), `pipeline` section and step sections."),
        params: Optional[list[str]] = typer.Option(None, "--param", help="Pipeline parameter key=value (e.g. epochs=5, fusion=user_gate)."),
        serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the promoted model on Triton and query it over gRPC."),
        n_show: int = typer.Option(3, "--show-users", help="How many users' recommendations to print."),
        k: int = typer.Option(10, "-k", help="Recommendations per user."),
        cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached pipeline steps from an earlier demo run."),
    ) -> None:
        """Run the whole pipeline locally on the built-in demo catalog, then serve and query the promoted model."""
        with user_errors(ImportError, RuntimeError):
            from fusionrec.pipelines.local import format_summary, run_local
            from fusionrec.pipelines.params import resolve_parameters
            from fusionrec.data.demo import DemoConfig, generate, oracle_metrics

            out = out.resolve()
            t_start = time.perf_counter()
            raw = out / "raw"
            from fusionrec.config import load_config

            # flags > the config's demo section > DemoConfig's defaults (DEMO_ITEMS x DEMO_USERS)
            demo_cfg = load_config(DemoConfig, config, section="demo", overrides={"n_items": items, "n_users": users, "seed": seed})
            stamp = out / "raw.config.json"
            if not (raw / "items.csv").exists() or not stamp.exists() or stamp.read_text() != demo_cfg.model_dump_json():
                typer.echo(f"[1/4] generating the demo catalog ({demo_cfg.n_items} items, {demo_cfg.n_users} users) -> {raw}")
                generate(raw, demo_cfg, force=stamp.exists())  # the stamp says this command wrote `raw` before
                stamp.write_text(demo_cfg.model_dump_json())
            else:
                typer.echo(f"[1/4] demo catalog already at {raw}")

            args = resolve_parameters(params, config)
            args.setdefault("dataset_uri", str(raw))
            args.setdefault("serving_location", str(out / "serving"))
            log_path = out / "pipeline.log"
            typer.echo("[2/4] running the pipeline locally (kfp.local, each step in a subprocess of this environment);"
                       f" the steps' own output goes to {log_path}")
            summary = run_local(args, out / "pipeline", cache=cache, log_file=log_path)
            typer.echo(format_summary(summary))
            if summary["status"] != "SUCCESS":
                tail = log_path.read_text(errors="replace").splitlines()[-40:]
                typer.echo("\n".join(tail), err=True)
                raise RuntimeError(f"the pipeline failed: {summary['error']} (full log: {log_path})")

            steps = summary["steps"]
            dataset = _find(steps, "ingest", "dataset")
            fused = _find(steps, "train-fusion", "model")
            control = _find(steps, "train-baseline", "model")
            if dataset is not None:
                from fusionrec.data.ingest import summary as dataset_summary

                typer.echo("")
                typer.echo(dataset_summary(dataset))
            typer.echo("\n[3/4] test metrics (full ranking over the catalog; cold = items never seen in training)")
            oracle = oracle_metrics(raw, dataset) if dataset is not None else None
            for line in _metric_rows({"fused (treatment)": fused, "ID-only (control)": control}, oracle):
                typer.echo("  " + line)
            ab_report = _find(steps, "ab-evaluate", "ab_report")
            if ab_report is not None:
                typer.echo(f"  A/B report: {ab_report / 'report.html'}")

            if serve:
                repo = Path(summary["serving_location"]) if summary["promoted"] else _find(steps, "export-onnx", "repository")
                if not summary["promoted"]:
                    typer.echo("\nThe A/B step did not promote the new model; serving it anyway to show it answering.")
                typer.echo("[4/4] serving on Triton and asking for recommendations over gRPC")
                if repo is None or dataset is None:
                    raise RuntimeError("no exported model repository found in the pipeline outputs")
                _serve_and_query(repo, dataset, n_show, k, out / "triton.log")
            typer.echo(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; everything is under {out}")
