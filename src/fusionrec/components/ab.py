"""KFP component: A/B evaluation of treatment vs control (offline paired tests + online replay on Triton)."""


from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from fusionrec.components.images import step_image


@dsl.component(base_image=step_image("ab_evaluate"), install_kfp_package=False)
def ab_evaluate(
    control: Input[Model],
    treatment: Input[Model],
    dataset: Input[Dataset],
    ab_report: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    alpha: float = 0.05,
    online: bool = True,
    config: dict = {},
) -> bool:
    """Compare two model repositories; returns True when the treatment should be promoted.

    With ``online`` both arms are served on one Triton server started inside this step
    (pytriton, 127.0.0.1) and held-out sessions are replayed over gRPC (hit rate, latency
    guardrails, team-draft interleaving); the offline paired tests always run. ``config`` is the
    ``ab`` section. The single bool output is what the pipeline's promotion gate reads (a single
    output named ``Output``: kfp.local cannot resolve a named bool output in a nested condition).
    """
    import shutil
    from pathlib import Path

    from fusionrec.ab import ABConfig, run
    from fusionrec.artifacts import read_json
    from fusionrec.components._util import config as make_config, log_metrics
    from fusionrec.serving.ab_online import replay_on_triton

    cfg = make_config(ABConfig, config, alpha=float(alpha))
    out = Path(ab_report.path)
    run(Path(control.path), Path(treatment.path), Path(dataset.path), out, cfg, online=replay_on_triton if online else None)
    shutil.copyfile(out / "report.html", report.path)
    shutil.copyfile(out / "report.md", summary.path)
    log_metrics(metrics, out / "metrics.json")
    decision = read_json(out / "decision.json")
    ab_report.metadata.update({"promote": bool(decision["promote"]), "decided_by": str(decision.get("decided_by", ""))})
    return bool(decision["promote"])
