"""KFP component: align (per-modality projection heads into one space, symmetric InfoNCE)."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from fusionrec.components.images import step_image


@dsl.component(base_image=step_image("align"), install_kfp_package=False)
def align(
    dataset: Input[Dataset],
    embeddings: Input[Dataset],
    aligned: Output[Dataset],
    metrics: Output[Metrics],
    modalities: list,
    config: dict = {},
):
    """Align the merged per-modality embeddings (``<embeddings>/<modality>/``) in ``modalities`` order.

    ``config`` is the ``align`` section (dim, epochs, temperature...).
    """
    from pathlib import Path

    from fusionrec.components._util import config as make_config, log_metrics
    from fusionrec.models.align import AlignConfig, run

    root = Path(embeddings.path)
    missing = [m for m in modalities if not (root / m).is_dir()]
    if missing:
        raise FileNotFoundError(f"no embeddings for modality {missing} in {root}: was it in the encode plan?")
    run(Path(dataset.path), [root / m for m in modalities], Path(aligned.path), make_config(AlignConfig, config))
    log_metrics(metrics, Path(aligned.path) / "metrics.json", prefix="align.")
