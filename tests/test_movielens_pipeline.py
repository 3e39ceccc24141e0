"""configs/movielens.yaml drives every step and the pipeline; a real MovieLens slice runs through the steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusionrec.config import load_config, read_config_file

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "movielens.yaml"


def test_config_sections_are_valid_step_configs():
    from fusionrec.ab.config import ABConfig
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.models.align import AlignConfig
    from fusionrec.train import TrainConfig

    data = read_config_file(CONFIG)
    assert data["pipeline"]["modalities"] == ["text", "tabular"]  # MovieLens has no image/audio
    assert load_config(IngestConfig, CONFIG, "ingest").cold_item_share == pytest.approx(0.1)
    for m in data["pipeline"]["modalities"]:
        assert load_config(EncodeConfig, CONFIG, "encode", {"modality": m}).modality == m
    load_config(AlignConfig, CONFIG, "align")
    train = load_config(TrainConfig, CONFIG, "train")
    assert train.model == "fused" and train.max_len == 50 and train.use_id_embedding
    # the control is the in-run ID-only baseline, which scores 0 on cold cases: the decision is taken on warm ones
    assert data["pipeline"]["baseline"] == "id" and load_config(ABConfig, CONFIG, "ab").primary_segment == "warm"


def test_config_maps_onto_pipeline_parameters():
    from fusionrec.pipelines.params import resolve_parameters

    args = resolve_parameters(["dataset_uri=/data/ml"], CONFIG)
    assert args["dataset_uri"] == "/data/ml"
    assert args["modalities"] == ["text", "tabular"]
    assert args["ingest_config"]["cold_item_share"] == pytest.approx(0.1)
    assert args["train_config"]["max_len"] == 50
    assert args["ab_config"] == {"primary_segment": "warm"}
    # the pipeline's own `fusion`/`epochs` parameters agree with the train section
    assert args["fusion"] == args["train_config"]["fusion"] and args["epochs"] == args["train_config"]["epochs"]


def test_real_slice_runs_through_the_steps(tmp_path):
    """40 real users, tabular (IMDb + year) only: ingest -> encode -> align -> train fused -> cold items are scored."""
    from fusionrec.artifacts import read_json
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest
    from fusionrec.data.movielens import MovieLensConfig, convert
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.models import load_model
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    raw = convert(tmp_path / "raw", MovieLensConfig(max_users=40))
    ds = ingest(raw, tmp_path / "ds", load_config(IngestConfig, CONFIG, "ingest"))
    emb = encode(ds, tmp_path / "tab", load_config(EncodeConfig, CONFIG, "encode", {"modality": "tabular", "cache": False}))
    mask = np.load(emb / "mask.npy")
    assert mask[1:].mean() > 0.95  # year is known for almost every movie, so almost every item has a tabular vector
    aligned = align(ds, [emb], tmp_path / "aligned", load_config(AlignConfig, CONFIG, "align", {"epochs": 2}))
    cfg = load_config(TrainConfig, CONFIG, "train", {"epochs": 2, "valid_every": 1, "max_valid_cases": 200})
    model_dir = train(ds, aligned, tmp_path / "model", cfg)
    test = read_json(model_dir / "metrics.json")["test"]
    d = DatasetArtifact(ds)
    assert test["cold"]["n"] == int((d.split("test")["segment"] == "cold").sum()) > 0
    model = load_model(model_dir)
    # cold items have no ID channel but keep their content channel: they are scorable, and they get recommended
    assert model.scorable()[d.cold_items].all()
    cases, hist = d.eval_cases("test", cfg.max_len)
    top, _ = model.topk(hist[:64], 100)
    # cold items are not pushed down the list: their share of the top-100 lists is at least half their share of the
    # catalog's scorable items (a model that penalised missing ID channels would show ~0)
    share_in_lists = float(np.isin(top, d.cold_items).mean())
    share_in_catalog = len(d.cold_items) / int(model.scorable().sum())
    assert share_in_lists >= 0.5 * share_in_catalog, (share_in_lists, share_in_catalog)
