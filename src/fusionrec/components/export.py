"""KFP component: export a trained model to ONNX (parity-checked) inside a Triton model repository."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from fusionrec.components.images import step_image


@dsl.component(base_image=step_image("export_onnx"), install_kfp_package=False)
def export_onnx(
    model: Input[Model],
    dataset: Input[Dataset],
    repository: Output[Model],
    parity: Output[Metrics],
    aligned: Input[Dataset] = None,
    embeddings: Input[Dataset] = None,
    name: str = "fusionrec",
    config: dict = {},
):
    """Write ``<repository>/<name>/{config.pbtxt,1/model.onnx,item_ids.json,...}``; fails if ONNX parity fails.

    ``config`` is the ``export`` section (k, max_batch_size, dynamic batching, instance kind...).
    With ``aligned`` (and the merged ``embeddings``, whose ``text/`` the query model needs) the repository
    also holds ``<name>_query``; sequential models get ``<name>_explain`` (``config.explain``).
    """
    from pathlib import Path

    from fusionrec.components._util import config as make_config, log_metrics
    from fusionrec.export import ExportConfig, run

    run(Path(model.path), Path(dataset.path), Path(repository.path), make_config(ExportConfig, config, name=name),
        aligned=Path(aligned.path) if aligned is not None else None,
        text_embeddings=Path(embeddings.path) / "text" if embeddings is not None else None)
    repository.metadata.update({"format": "triton_model_repository", "model_name": name})
    log_metrics(parity, Path(repository.path) / name / "export_report.json")
