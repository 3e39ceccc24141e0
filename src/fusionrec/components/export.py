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
    name: str = "fusionrec",
    config: dict = {},
):
    """Write ``<repository>/<name>/{config.pbtxt,1/model.onnx,item_ids.json,...}``; fails if ONNX parity fails.

    ``config`` is the ``export`` section (k, max_batch_size, dynamic batching, instance kind...).
    """
    from pathlib import Path

    from fusionrec.components._util import config as make_config, log_metrics
    from fusionrec.export import ExportConfig, run

    run(Path(model.path), Path(dataset.path), Path(repository.path), make_config(ExportConfig, config, name=name))
    repository.metadata.update({"format": "triton_model_repository", "model_name": name})
    log_metrics(parity, Path(repository.path) / name / "export_report.json")
