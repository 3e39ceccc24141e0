"""The fusionrec pipeline (KFP v2): ingest -> encode (fan-out) -> align -> train -> export -> A/B -> promote.

```
ingest ─► encode_plan ─► ParallelFor((modality, shard)) encode ─► merge_embeddings ─► align ─► train_fusion ─► export_onnx ─┐
   │                                                                                                                     ▼
   ├─ control_model_uri != "" : importer(control_model_uri) ─────────────────────────────────────────────► ab_evaluate ─► If(promote) promote
   └─ else                    : train_baseline ─► export_onnx ───────────────────────────────────────────► ab_evaluate ─► If(promote) promote
```
Every (modality, shard) pair is one ``encode`` task, so the modalities run in parallel and a
large catalog fans out further with ``num_shards``. The control arm is the model in
production (``control_model_uri``: a Triton model repository, brought in with ``dsl.importer``)
or, when empty, the ID-only baseline trained in the same run. Promotion runs only when the A/B
step returns True and ``serving_location`` is set.

Build the pipeline function with :func:`make_pipeline` (``gpu=False`` drops the GPU requests for
clusters without GPUs); :data:`fusionrec_pipeline` is the default (GPU requests on encode,
align, train and export). Under ``kfp.local`` the accelerator and resource settings are ignored.

Example:
    >>> from kfp import compiler
    >>> compiler.Compiler().compile(fusionrec_pipeline, "fusionrec_pipeline.yaml")   # doctest: +SKIP
"""



from typing import Callable, Dict, Tuple

from kfp import dsl, kubernetes

from fusionrec.components import (ab_evaluate, align, encode, encode_plan, export_onnx, ingest, merge_embeddings,
                                  promote, train_baseline, train_fusion)

PIPELINE_NAME = "fusionrec"
PIPELINE_DESCRIPTION = ("Multimodal recommender: ingest, encode text/image/audio/tabular with pretrained encoders, "
                        "align, train a fused sequential model, export to ONNX for Triton, A/B-evaluate against the "
                        "control and promote the winner.")
GPU_RESOURCE = "nvidia.com/gpu"
#: Most managed clusters taint GPU nodes with this key (GKE, AKS, the NVIDIA GPU operator's docs).
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
DEFAULT_MODALITIES = ["text", "image", "audio", "tabular"]

#: (cpu request, cpu limit, memory request, memory limit) per step.
RESOURCES: Dict[str, Tuple[str, str, str, str]] = {
    "ingest": ("1", "2", "2G", "8G"),
    "encode_plan": ("100m", "500m", "128M", "512M"),
    "encode": ("2", "4", "8G", "16G"),
    "merge_embeddings": ("1", "2", "2G", "8G"),
    "align": ("2", "4", "4G", "16G"),
    "train": ("2", "8", "8G", "32G"),
    "export_onnx": ("2", "4", "4G", "16G"),
    "ab_evaluate": ("2", "4", "4G", "16G"),
    "promote": ("100m", "1", "256M", "2G"),
}
#: retries for the steps that can fail for reasons outside the step (storage, node loss, server start).
RETRIES: Dict[str, int] = {"ingest": 2, "encode": 3, "merge_embeddings": 2, "ab_evaluate": 2, "promote": 2}


def _apply_resources(task: dsl.PipelineTask, step: str, gpu: bool = False, retries: bool = True) -> dsl.PipelineTask:
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[step]
    task.set_cpu_request(cpu_req).set_cpu_limit(cpu_lim).set_memory_request(mem_req).set_memory_limit(mem_lim)
    if retries and step in RETRIES:
        task.set_retry(num_retries=RETRIES[step], backoff_duration="30s", backoff_factor=2.0)
    if gpu:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_toleration(task, **GPU_TOLERATION)
    return task


def make_pipeline(gpu: bool = True, retries: bool = True) -> Callable:
    """The pipeline function.

    ``gpu`` adds a GPU request (+ toleration) to encode, align, train and export; ``retries``
    sets KFP retries (with back-off) on the steps in :data:`RETRIES` (``run-local`` turns them off
    by default so that a failing step fails fast on a laptop).
    """

    def _resources(task: dsl.PipelineTask, step: str, gpu_step: bool = False) -> dsl.PipelineTask:
        return _apply_resources(task, step, gpu and gpu_step, retries)

    @dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)
    def fusionrec(
        dataset_uri: str = "demo://",
        modalities: list = DEFAULT_MODALITIES,
        encoders: dict = {},
        num_shards: int = 1,
        fusion: str = "attention",
        epochs: int = 10,
        baseline: str = "id",
        alpha: float = 0.05,
        online_ab: bool = True,
        control_model_uri: str = "",
        serving_location: str = "",
        model_name: str = "fusionrec",
        ingest_config: dict = {},
        encode_config: dict = {},
        align_config: dict = {},
        train_config: dict = {},
        export_config: dict = {},
        ab_config: dict = {},
    ):
        """fusionrec: encode, align, fuse, train, export, A/B-evaluate and promote.

        Args:
            dataset_uri: Data-contract folder as the steps see it (a mounted volume), or demo://[?n_items=..&n_users=..&seed=..].
            modalities: Modalities to encode, align and fuse (text, image, audio, tabular).
            encoders: Encoder name per modality, e.g. {"text": "minilm"}; absent modalities use the registry default.
            num_shards: Encoding shards per modality (each shard is one parallel task).
            fusion: Fusion strategy of the treatment: concat, weighted, attention or user_gate.
            epochs: Training budget (max epochs; early stopping may end sooner) of both trained models.
            baseline: The baseline trained as control when control_model_uri is empty (id or popularity).
            alpha: Significance level of the A/B decision.
            online_ab: Also replay held-out sessions against both arms served on Triton (inside the A/B step).
            control_model_uri: Model repository of the model in production (the A/B control); empty = the baseline.
            serving_location: Where a promoted model repository is installed; empty = never promote.
            model_name: Triton model name of the exported repositories.
            ingest_config: The ingest config section (IngestConfig fields).
            encode_config: The encode config section (EncodeConfig fields).
            align_config: The align config section (AlignConfig fields).
            train_config: The train config section (TrainConfig fields).
            export_config: The export config section (ExportConfig fields).
            ab_config: The ab config section (ABConfig fields).
        """
        ing = _resources(ingest(dataset_uri=dataset_uri, config=ingest_config), "ingest")
        data = ing.outputs["dataset"]

        plan = _resources(encode_plan(modalities=modalities, num_shards=num_shards), "encode_plan")
        with dsl.ParallelFor(plan.output, name="encode-shards") as item:
            enc = _resources(encode(dataset=data, modality=item.modality, shard=item.shard, num_shards=num_shards,
                                    encoders=encoders, config=encode_config), "encode", True)
        merged = _resources(merge_embeddings(shards=dsl.Collected(enc.outputs["embeddings"])), "merge_embeddings")

        al = _resources(align(dataset=data, embeddings=merged.outputs["embeddings"], modalities=modalities,
                              config=align_config), "align", True)
        fused = _resources(train_fusion(dataset=data, aligned=al.outputs["aligned"], fusion=fusion, epochs=epochs,
                                        config=train_config), "train", True)
        treatment = _resources(export_onnx(model=fused.outputs["model"], dataset=data, name=model_name,
                                           config=export_config), "export_onnx", True)

        def evaluate_and_promote(control) -> None:
            ab = _resources(ab_evaluate(control=control, treatment=treatment.outputs["repository"], dataset=data,
                                        alpha=alpha, online=online_ab, config=ab_config), "ab_evaluate")
            # A single bool output named "Output": kfp.local resolves it inside a nested condition.
            with dsl.If(ab.outputs["Output"] == True, name="ab-says-promote"):  # noqa: E712 (KFP condition)
                with dsl.If(serving_location != "", name="serving-location-set"):
                    promoted = _resources(promote(repository=treatment.outputs["repository"],
                                                  ab_report=ab.outputs["ab_report"],
                                                  serving_location=serving_location), "promote")
                    promoted.set_caching_options(False)

        with dsl.If(control_model_uri != "", name="control-in-production"):
            production = dsl.importer(artifact_uri=control_model_uri, artifact_class=dsl.Model, reimport=False,
                                      metadata={"role": "control"})
            evaluate_and_promote(production.output)
        with dsl.Else(name="control-is-baseline"):
            base = _resources(train_baseline(dataset=data, epochs=epochs, baseline=baseline, config=train_config),
                              "train", True)
            control = _resources(export_onnx(model=base.outputs["model"], dataset=data, name=model_name,
                                             config=export_config), "export_onnx", True)
            evaluate_and_promote(control.outputs["repository"])

    return fusionrec


fusionrec_pipeline = make_pipeline(gpu=True)

#: Each step as a reusable KFP component spec, checked in as ``components/<name>/component.yaml``
#: (as KFP's own component library ships them): load one with ``kfp.components.load_component_from_file``.
COMPONENTS = {"ingest": ingest, "encode_plan": encode_plan, "encode": encode, "merge_embeddings": merge_embeddings,
              "align": align, "train_fusion": train_fusion, "train_baseline": train_baseline, "export_onnx": export_onnx,
              "ab_evaluate": ab_evaluate, "promote": promote}


def compile_pipeline(path, gpu: bool = True):
    """Compile the pipeline to ``path`` (YAML IR); compiling twice gives identical bytes."""
    from pathlib import Path

    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(fusionrec_pipeline if gpu else make_pipeline(gpu=False), str(path))
    return path


def compile_components(folder) -> list:
    """Compile every step to ``<folder>/<name>/component.yaml``; compiling twice gives identical bytes."""
    from pathlib import Path

    from kfp import compiler

    paths = []
    for name, component in COMPONENTS.items():
        path = Path(folder) / name / "component.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(component, str(path))
        paths.append(path)
    return paths
