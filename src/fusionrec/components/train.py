"""KFP components: train the fused model (treatment) and the ID-only baseline (control)."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from fusionrec.components.images import step_image


@dsl.component(base_image=step_image("train_fusion"), install_kfp_package=False)
def train_fusion(
    dataset: Input[Dataset],
    aligned: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    fusion: str,
    epochs: int,
    config: dict = {},
):
    """Train the fused multimodal sequential recommender (the A/B treatment).

    ``fusion`` is ``concat``, ``weighted``, ``attention`` or ``user_gate``; ``epochs`` caps the
    training budget (early stopping may end sooner); ``config`` is the ``train`` section.
    """
    from pathlib import Path

    from fusionrec.components._util import config as make_config, log_metrics
    from fusionrec.train import TrainConfig, run

    cfg = make_config(TrainConfig, config, model="fused", fusion=fusion, epochs=int(epochs))
    run(Path(dataset.path), Path(aligned.path), Path(model.path), cfg)
    model.metadata.update({"model": "fused", "fusion": fusion})
    log_metrics(metrics, Path(model.path) / "metrics.json")


@dsl.component(base_image=step_image("train_baseline"), install_kfp_package=False)
def train_baseline(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    epochs: int,
    baseline: str = "id",
    config: dict = {},
):
    """Train a baseline by the same code path (default the ID-only SASRec-like model: the default A/B control).

    ``baseline`` is ``id`` or ``popularity`` (content baselines need the aligned artifact: use
    ``train_fusion``'s step or the CLI).
    """
    from pathlib import Path

    from fusionrec.components._util import config as make_config, log_metrics
    from fusionrec.train import TrainConfig, run

    cfg = make_config(TrainConfig, config, model=baseline, epochs=int(epochs))
    run(Path(dataset.path), None, Path(model.path), cfg)
    model.metadata["model"] = baseline
    log_metrics(metrics, Path(model.path) / "metrics.json")
