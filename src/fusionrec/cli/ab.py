"""CLI command: ``fusionrec ab`` (offline paired tests + online replay on Triton + interleaving -> decision)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, step_config, user_errors


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.2%}"


def register(app: typer.Typer) -> None:
    @app.command("ab")
    def ab(
        control: Path = typer.Option(..., "--control", help="Control: model repository (`fusionrec export`) or model artifact."),
        treatment: Path = typer.Option(..., "--treatment", help="Treatment: model repository or model artifact."),
        dataset: Path = typer.Option(..., "--dataset", help="Dataset artifact whose held-out cases are replayed."),
        out: Path = typer.Option(..., "--out", help="Output ab_report folder (written atomically)."),
        alpha: Optional[float] = typer.Option(None, "--alpha", help="Significance level of the primary test (default 0.05)."),
        primary_metric: Optional[str] = typer.Option(None, "--primary-metric", help="Metric that decides (default ndcg@10)."),
        no_online: bool = typer.Option(False, "--no-online", help="Skip the Triton replay and interleaving (offline only)."),
        config: Optional[Path] = ConfigOption,
        sets: Optional[list[str]] = SetOption,
    ) -> None:
        """A/B-evaluate TREATMENT against CONTROL and decide whether to promote it (exit code 0 either way)."""
        with user_errors():
            from fusionrec.ab.config import ABConfig
            from fusionrec.artifacts import read_json

            cfg = step_config(ABConfig, config, "ab", {"alpha": alpha, "primary_metric": primary_metric}, sets)
            for p in (control, treatment, dataset):
                if not p.exists():
                    raise FileNotFoundError(f"not found: {p}")
            from fusionrec.ab import run

            if no_online:
                path = run(control, treatment, dataset, out, cfg)
            else:
                from fusionrec.serving.ab_online import replay_on_triton

                path = run(control, treatment, dataset, out, cfg, online=replay_on_triton)
            d = read_json(path / "decision.json")
            m = read_json(path / "metrics.json")
            prim = d["rules"][0]
            verdict = "PROMOTE" if d["promote"] else "REJECT"
            typer.secho(f"{verdict}: decided by {d['decided_by']} ({d['reason']})", fg=typer.colors.GREEN if d["promote"] else typer.colors.RED)
            typer.echo(f"primary {prim['metric']} ({prim['segment']}): control {prim['mean_control']:.4f} -> treatment "
                       f"{prim['mean_treatment']:.4f}, lift {_pct(prim['lift'])} [95% CI {_pct(prim['lift_ci'][0])}, "
                       f"{_pct(prim['lift_ci'][1])}], p={prim['pvalue']:.3g}, d_z={prim['cohens_dz']:.3f}, users={prim['n_users']}")
            for r in d["rules"][1:]:
                typer.echo(f"  {r['rule']}: {'ok' if r['passed'] else 'BLOCKS'} - {r['why']}")
            if "online.lift" in m:
                typer.echo(f"online hit rate: control {m['online.control.hit_rate']:.4f}, treatment {m['online.treatment.hit_rate']:.4f} "
                           f"(lift {_pct(m['online.lift'])}, clustered p={m['online.p_clustered']:.3g}); p99 latency "
                           f"{m['online.control.latency_p99_ms']:.2f} / {m['online.treatment.latency_p99_ms']:.2f} ms")
                if "interleaving.pvalue" in m:
                    typer.echo(f"interleaving: treatment share {m['interleaving.treatment_share']:.3f}, sign test p={m['interleaving.pvalue']:.3g}")
            else:
                typer.echo("online replay: not run")
            typer.echo(f"report: {path / 'report.html'}")
