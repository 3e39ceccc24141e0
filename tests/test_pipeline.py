"""The Kubeflow pipeline: compiled IR (images, artifact types, GPU requests, promotion gate), the
checked-in YAML, `fusionrec pipeline submit` against an unreachable host, promotion, and the whole
pipeline run end to end through kfp.local on a tiny demo catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fusionrec.cli import app
from fusionrec.components import images

ROOT = Path(__file__).resolve().parents[1]
CHECKED_IN = ROOT / "pipelines" / "fusionrec_pipeline.yaml"

# executor -> (image key, GPU request)
EXPECTED_EXECUTORS = {
    "exec-ingest": ("base", False),
    "exec-encode-plan": ("base", False),
    "exec-encode": ("encode", True),
    "exec-merge-embeddings": ("base", False),
    "exec-align": ("gpu", True),
    "exec-train-fusion": ("gpu", True),
    "exec-export-onnx": ("gpu", True),      # treatment
    "exec-train-baseline": ("gpu", True),
    "exec-export-onnx-2": ("gpu", True),    # baseline control
    "exec-ab-evaluate": ("ab", False),      # control from the importer
    "exec-ab-evaluate-2": ("ab", False),    # control = baseline
    "exec-promote": ("base", False),
    "exec-promote-2": ("base", False),
}


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> tuple[dict, dict]:
    """The compiled pipeline (compiled in a clean subprocess: image names come from the defaults)."""
    out = tmp_path_factory.mktemp("ir") / "p.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONREC_IMAGE_")}
    subprocess.run([sys.executable, "-c", "from fusionrec.cli import main; main()", "pipeline", "compile", str(out)], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {}), out


def _all_dags(spec: dict):
    yield "root", spec["root"]["dag"]
    for name, comp in spec["components"].items():
        if "dag" in comp:
            yield name, comp["dag"]


def _component_of(spec: dict, comp_name: str) -> dict:
    return spec["root"] if comp_name == "root" else spec["components"][comp_name]


def test_checked_in_yaml_is_what_compile_writes(ir, tmp_path):
    _, _, compiled = ir
    assert compiled.read_bytes() == CHECKED_IN.read_bytes(), \
        "pipelines/fusionrec_pipeline.yaml is stale: run `fusionrec pipeline compile pipelines/fusionrec_pipeline.yaml`"
    # compiling twice gives identical bytes
    from fusionrec.pipelines import compile_pipeline

    if not any(k.startswith("FUSIONREC_IMAGE_") for k in os.environ):
        a, b = compile_pipeline(tmp_path / "a.yaml"), compile_pipeline(tmp_path / "b.yaml")
        assert a.read_bytes() == b.read_bytes() == CHECKED_IN.read_bytes()


def test_checked_in_component_specs_are_what_compile_writes(tmp_path):
    """components/<step>/component.yaml: every step as a reusable KFP spec, matching the code byte for byte."""
    from kfp import components as kfp_components

    from fusionrec.pipelines.fusionrec_pipeline import COMPONENTS

    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONREC_IMAGE_")}
    subprocess.run([sys.executable, "-c", "from fusionrec.cli import main; main()", "pipeline", "compile",
                    str(tmp_path / "p.yaml"), "--components", str(tmp_path / "components")],
                   env=env, check=True, capture_output=True, cwd=ROOT)
    checked_in = ROOT / "components"
    assert sorted(p.name for p in checked_in.iterdir() if p.is_dir()) == sorted(COMPONENTS)
    for name, component in COMPONENTS.items():
        spec = checked_in / name / "component.yaml"
        assert spec.read_bytes() == (tmp_path / "components" / name / "component.yaml").read_bytes(), \
            f"{spec.relative_to(ROOT)} is stale: run `fusionrec pipeline compile`"
        loaded = kfp_components.load_component_from_file(str(spec))
        assert loaded.name == component.name
        assert set(loaded.component_spec.inputs or {}) == set(component.component_spec.inputs or {})


def test_one_executor_per_step_with_its_image_and_gpu(ir):
    spec, platform, _ = ir
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == set(EXPECTED_EXECUTORS) | {"exec-importer"}
    tolerations = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, (image_key, gpu) in EXPECTED_EXECUTORS.items():
        container = executors[name]["container"]
        assert container["image"] == images.image(image_key), name
        # no pip install at run time: the image carries fusionrec and kfp
        assert "pip install" not in " ".join(container["command"]), name
        resources = container["resources"]
        assert resources["cpuRequest"] > 0 and resources["memoryRequest"] > 0, name
        accelerator = resources.get("accelerator")
        if gpu:
            assert accelerator and accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1", name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations[name]["tolerations"]
        else:
            assert accelerator is None, name
            assert name not in tolerations
    importer = executors["exec-importer"]["importer"]
    assert importer["typeSchema"]["schemaTitle"] == "system.Model"
    assert importer["artifactUri"] == {"runtimeParameter": "uri"}


def test_cpu_only_variant_requests_no_gpu(tmp_path):
    from fusionrec.pipelines import compile_pipeline

    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "cpu.yaml", gpu=False).read_text()))
    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert "accelerator" not in ex.get("container", {}).get("resources", {}), name


def test_artifact_types_on_every_edge(ir):
    spec, _, _ = ir
    io_types = {}
    for name, comp in spec["components"].items():
        for side in ("inputDefinitions", "outputDefinitions"):
            for art, d in comp.get(side, {}).get("artifacts", {}).items():
                io_types[(name, side, art)] = d["artifactType"]["schemaTitle"]
    edges = 0
    for dag_name, dag in _all_dags(spec):
        for task_name, task in dag["tasks"].items():
            consumer = task["componentRef"]["name"]
            for art, src in task.get("inputs", {}).get("artifacts", {}).items():
                if "taskOutputArtifact" not in src:
                    continue
                producer_task = dag["tasks"][src["taskOutputArtifact"]["producerTask"]]
                out_type = io_types[(producer_task["componentRef"]["name"], "outputDefinitions",
                                     src["taskOutputArtifact"]["outputArtifactKey"])]
                in_type = io_types[(consumer, "inputDefinitions", art)]
                assert out_type == in_type, f"{dag_name}/{task_name}.{art}: {out_type} -> {in_type}"
                edges += 1
    assert edges >= 8
    expect = {
        ("comp-ingest", "outputDefinitions", "dataset"): "system.Dataset",
        ("comp-ingest", "outputDefinitions", "stats"): "system.Metrics",
        ("comp-encode", "outputDefinitions", "embeddings"): "system.Dataset",
        ("comp-merge-embeddings", "inputDefinitions", "shards"): "system.Dataset",
        ("comp-align", "outputDefinitions", "aligned"): "system.Dataset",
        ("comp-train-fusion", "outputDefinitions", "model"): "system.Model",
        ("comp-train-fusion", "outputDefinitions", "metrics"): "system.Metrics",
        ("comp-train-baseline", "outputDefinitions", "model"): "system.Model",
        ("comp-export-onnx", "outputDefinitions", "repository"): "system.Model",
        ("comp-ab-evaluate", "inputDefinitions", "control"): "system.Model",
        ("comp-ab-evaluate", "inputDefinitions", "treatment"): "system.Model",
        ("comp-ab-evaluate", "outputDefinitions", "report"): "system.HTML",
        ("comp-ab-evaluate", "outputDefinitions", "summary"): "system.Markdown",
        ("comp-ab-evaluate", "outputDefinitions", "metrics"): "system.Metrics",
        ("comp-promote", "inputDefinitions", "repository"): "system.Model",
    }
    for key, schema in expect.items():
        assert io_types[key] == schema, key
    assert spec["components"]["comp-merge-embeddings"]["inputDefinitions"]["artifacts"]["shards"]["isArtifactList"]
    assert spec["components"]["comp-ab-evaluate"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "BOOLEAN"


def test_encoders_fan_out_in_parallel(ir):
    spec, _, _ = ir
    loops = [(n, t) for _, dag in _all_dags(spec) for n, t in dag["tasks"].items() if "parameterIterator" in t]
    assert len(loops) == 1
    name, loop = loops[0]
    assert loop["taskInfo"]["name"] == "encode-shards"
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("encode-plan-Output")
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert body["encode"]["inputs"]["parameters"]["modality"]["parameterExpressionSelector"] == 'parseJson(string_value)["modality"]'
    assert body["encode"]["retryPolicy"]["maxRetryCount"] == 3


def test_promotion_is_gated_on_the_ab_decision(ir):
    spec, _, _ = ir
    gates = {}
    for dag_name, dag in _all_dags(spec):
        for task_name, task in dag["tasks"].items():
            if task["taskInfo"]["name"] == "ab-says-promote":
                gates[dag_name] = task
    assert len(gates) == 2, "one gate per control branch (production model / baseline)"
    for dag_name, gate in gates.items():
        cond = gate["triggerPolicy"]["condition"]
        ab_task = next(t for t in gate["dependentTasks"] if t.startswith("ab-evaluate"))
        assert cond == f"inputs.parameter_values['pipelinechannel--{ab_task}-Output'] == true"
        # promote lives only under the gate, behind the serving-location check, never cached
        inner = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
        (loc,) = inner.values()
        assert "serving_location" in loc["triggerPolicy"]["condition"] and "!= ''" in loc["triggerPolicy"]["condition"]
        promote_tasks = spec["components"][loc["componentRef"]["name"]]["dag"]["tasks"]
        (promote,) = promote_tasks.values()
        assert promote["componentRef"]["name"].startswith("comp-promote")
        assert promote["cachingOptions"] == {}, "promotion must not be skipped by the cache"
    root_tasks = spec["root"]["dag"]["tasks"]
    assert not any(t["componentRef"]["name"].startswith("comp-promote") for t in root_tasks.values())


def test_control_comes_from_the_importer_or_the_baseline(ir):
    spec, _, _ = ir
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"] \
        if "comp-condition-branches-1" in spec["components"] else None
    if branches is None:
        branches = next(c["dag"]["tasks"] for n, c in spec["components"].items() if n.startswith("comp-condition-branches"))
    by_name = {t["taskInfo"]["name"]: t for t in branches.values()}
    prod, base = by_name["control-in-production"], by_name["control-is-baseline"]
    assert prod["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--control_model_uri'] != ''"
    prod_tasks = spec["components"][prod["componentRef"]["name"]]["dag"]["tasks"]
    base_tasks = spec["components"][base["componentRef"]["name"]]["dag"]["tasks"]
    assert "importer" in prod_tasks and not any(k.startswith("train-baseline") for k in prod_tasks)
    assert "train-baseline" in base_tasks and "importer" not in base_tasks
    ab = next(t for k, t in prod_tasks.items() if k.startswith("ab-evaluate"))
    assert ab["inputs"]["artifacts"]["control"]["taskOutputArtifact"]["producerTask"] == "importer"


def test_submit_unreachable_host_is_a_clear_error():
    result = CliRunner().invoke(app, ["pipeline", "submit", "--host", "http://127.0.0.1:9", "--param", "epochs=1"])
    assert result.exit_code != 0
    assert "cannot reach KFP at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unknown_parameter_is_rejected_with_the_list():
    result = CliRunner().invoke(app, ["pipeline", "run-local", "--param", "epoch=1"])
    assert result.exit_code == 2
    assert "unknown pipeline parameter(s) ['epoch']" in result.output and "epochs" in result.output


def test_config_file_sections_become_parameters(tmp_path):
    from fusionrec.pipelines.params import resolve_parameters

    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipeline:\n  epochs: 3\n  modalities: [text]\ntrain:\n  batch_size: 16\nab:\n  alpha: 0.01\n")
    args = resolve_parameters(["epochs=5", "alpha=1"], cfg)
    assert args == {"epochs": 5, "modalities": ["text"], "train_config": {"batch_size": 16}, "ab_config": {"alpha": 0.01},
                    "alpha": 1.0}
    with pytest.raises(ValueError, match="must be a list"):
        resolve_parameters(["modalities=text"])


def _fake_repo(path: Path, marker: str) -> Path:
    from fusionrec.artifacts import artifact_dir, atomic_write_text, write_manifest

    with artifact_dir(path) as tmp:
        atomic_write_text(tmp / "fusionrec" / "config.pbtxt", f'name: "fusionrec" # {marker}\n')
        atomic_write_text(tmp / "fusionrec" / "1" / "model.onnx", marker)
        write_manifest(tmp, step="export", kind="model_repository", models=["fusionrec"])
    return path


def _fake_report(path: Path, promote: bool) -> Path:
    from fusionrec.artifacts import artifact_dir, atomic_write_json, write_manifest

    with artifact_dir(path) as tmp:
        atomic_write_json(tmp / "decision.json", {"promote": promote, "decided_by": "primary_metric"})
        write_manifest(tmp, step="ab", kind="ab_report", promote=promote)
    return path


def test_promote_installs_atomically_keeps_previous_and_refuses_reject(tmp_path):
    from fusionrec.promote import PROMOTED, PromotionRefused, promote

    serving = tmp_path / "serving"
    promote(_fake_repo(tmp_path / "v1", "one"), _fake_report(tmp_path / "ab1", True), serving)
    assert (serving / "fusionrec" / "1" / "model.onnx").read_text() == "one"
    first = json.loads((serving / PROMOTED).read_text())
    assert first["decision"]["promote"] is True and first["replaced"] is None

    with pytest.raises(PromotionRefused, match="reject"):
        promote(_fake_repo(tmp_path / "v2", "two"), _fake_report(tmp_path / "ab2", False), serving)
    assert (serving / "fusionrec" / "1" / "model.onnx").read_text() == "one", "a rejected model replaced the control"

    promote(tmp_path / "v2", _fake_report(tmp_path / "ab3", True), serving)
    assert (serving / "fusionrec" / "1" / "model.onnx").read_text() == "two"
    assert json.loads((serving / PROMOTED).read_text())["replaced"] == first["content_hash"]
    assert (tmp_path / "serving.previous" / "fusionrec" / "1" / "model.onnx").read_text() == "one"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# The whole pipeline through kfp.local on a tiny demo catalog
TINY_DEMO = "demo://?n_items=60&n_users=40&events_per_user=12&seed=7"
TINY_ARGS = {
    "dataset_uri": TINY_DEMO,
    "epochs": 1,
    "align_config": {"epochs": 2},
    # 60 items: the exported graph returns top-60, so the A/B compares top-50. The decision is known in advance:
    # it is taken on the cold segment, where the ID-only control scores 0 on every case (it cannot rank an item
    # it never saw) and the content model ranks some cold targets, so the default alpha (0.05) promotes; the
    # coverage guardrail allows any drop (1.0; KFP parameters cannot carry null) because a 1-epoch model's list
    # diversity is not what this test is about.
    # Latency: the default relative rule (same replay, both arms), no absolute SLO.
    "ab_config": {"bootstrap_resamples": 200, "online_max_requests": 200, "k_max": 50, "primary_segment": "cold",
                  "coverage_drop_max": 1.0},
}


@pytest.mark.slow
def test_run_local_end_to_end(tmp_path):
    from fusionrec.artifacts import read_json, read_manifest
    from fusionrec.pipelines.local import format_summary, run_local

    summary = run_local(dict(TINY_ARGS), tmp_path / "work", cache=False)
    print(format_summary(summary))
    assert summary["status"] == "SUCCESS", summary["error"]
    assert json.loads((tmp_path / "work" / "run_summary.json").read_text())["status"] == "SUCCESS"
    steps = {s["step"]: s for s in summary["steps"]}
    expected = {"ingest", "encode-plan", "encode[text]", "encode[image]", "encode[audio]", "encode[tabular]",
                "merge-embeddings", "align", "train-fusion", "export-onnx", "train-baseline", "export-onnx-2", "ab-evaluate-2"}
    assert expected <= set(steps), sorted(steps)
    assert not any(s.startswith("ab-evaluate") and s != "ab-evaluate-2" for s in steps), "no production control was given"
    for s in summary["steps"]:
        assert s["status"] == "SUCCESS" and s["wall_s"] > 0, s

    out = lambda step, name: Path(steps[step]["outputs"][name])  # noqa: E731
    dataset = out("ingest", "dataset")
    assert read_manifest(dataset, kind="dataset")
    # each step's artifact is where the next one read it: the manifests record their inputs' paths
    for modality in ("text", "image", "audio", "tabular"):
        emb = out(f"encode[{modality}]", "embeddings")
        assert read_manifest(emb, kind="embeddings")["modality"] == modality
        assert Path(read_manifest(emb)["inputs"]["dataset"]["path"]) == dataset
    merged = out("merge-embeddings", "embeddings")
    assert sorted(read_manifest(merged, kind="embeddings_set")["modalities"]) == ["audio", "image", "tabular", "text"]
    aligned = out("align", "aligned")
    align_inputs = read_manifest(aligned, kind="aligned")["inputs"]
    assert Path(align_inputs["dataset"]["path"]) == dataset
    assert {Path(v["path"]).parent for k, v in align_inputs.items() if k != "dataset"} == {merged}
    fused = out("train-fusion", "model")
    assert Path(read_manifest(fused, kind="model")["inputs"]["aligned"]["path"]) == aligned
    treatment = out("export-onnx", "repository")
    assert Path(read_manifest(treatment, kind="model_repository")["inputs"]["model"]["path"]) == fused
    assert (treatment / "fusionrec" / "1" / "model.onnx").stat().st_size > 0
    baseline = out("train-baseline", "model")
    assert read_json(baseline / "config.json")["model"] == "id" and read_manifest(baseline, kind="model")["model"] == "id"
    control = out("export-onnx-2", "repository")
    assert Path(read_manifest(control, kind="model_repository")["inputs"]["model"]["path"]) == baseline

    report = out("ab-evaluate-2", "ab_report")
    ab_inputs = read_manifest(report, kind="ab_report")["inputs"]
    assert Path(ab_inputs["control"]["path"]) == control and Path(ab_inputs["treatment"]["path"]) == treatment
    assert out("ab-evaluate-2", "report").read_text().lstrip().lower().startswith("<!doctype html")
    assert out("ab-evaluate-2", "summary").read_text() == (report / "report.md").read_text()
    decision = read_json(report / "decision.json")
    assert steps["ab-evaluate-2"]["params"]["Output"] is decision["promote"]

    primary = decision["rules"][0]
    assert primary["segment"] == "cold" and primary["mean_control"] == 0.0 and primary["mean_treatment"] > 0
    assert decision["promote"] is True, decision["reason"]

    # promotion happened because the A/B step said so, from the treatment's repository
    serving = tmp_path / "work" / "serving"
    assert summary["promoted"] is True and "promote-2" in steps
    promoted = read_json(serving / "PROMOTED")
    assert Path(promoted["source"]) == treatment
    assert (serving / "fusionrec" / "1" / "model.onnx").read_bytes() == (treatment / "fusionrec" / "1" / "model.onnx").read_bytes()
