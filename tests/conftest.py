"""Shared fixtures: a tiny demo catalog (real files) and its ingested dataset artifact, made once per session.

Fixtures stay tiny (tens of items) so the suite fits CI's 2 cores; the default 2,000-item
catalog belongs to benchmarks/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FUSIONREC_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = dict(items=60, users=40, events_per_user=12, seed=7)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A raw dataset folder in the data contract, from the demo generator (with corrupt media on purpose)."""
    from fusionrec.data.demo import DemoConfig, generate

    out = tmp_path_factory.mktemp("raw") / "demo"
    generate(out, DemoConfig(n_items=TINY["items"], n_users=TINY["users"], events_per_user=TINY["events_per_user"], seed=TINY["seed"]))
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tiny_raw, tmp_path_factory) -> Path:
    """The ingested dataset artifact of ``tiny_raw``."""
    from fusionrec.data.ingest import IngestConfig, run

    out = tmp_path_factory.mktemp("artifacts") / "dataset"
    run(tiny_raw, out, IngestConfig(cold_item_share=0.1, seed=0))
    return out


# ------------------------------------------------------------------------------------------------
# Container tests (tests marked ``containers``) need a Docker engine and the built step images:
# `make test-containers` sets both up and runs them with --containers. `make test` deselects them.
def pytest_addoption(parser):
    parser.addoption("--containers", action="store_true", default=False,
                     help="run only the tests marked 'containers' (Docker engine + images: make test-containers)")


def pytest_collection_modifyitems(config, items):
    want = config.getoption("--containers")
    # the marker itself, not item.keywords (which also holds folder names: a checkout named "containers")
    keep = [item for item in items if (item.get_closest_marker("containers") is not None) == want]
    drop = [item for item in items if (item.get_closest_marker("containers") is not None) != want]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
@pytest.fixture(scope="session")
def tiny_text_image_model(tiny_dataset, tmp_path_factory):
    """(model dir, aligned dir, text embeddings dir, image-only aligned dir) of a tiny fused text+image model."""
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    root = tmp_path_factory.mktemp("query")
    cache = str(root / "cache")
    text = encode(tiny_dataset, root / "emb_text", EncodeConfig(modality="text", device="cpu", cache_dir=cache))
    image = encode(tiny_dataset, root / "emb_image", EncodeConfig(modality="image", device="cpu", cache_dir=cache))
    aligned = align(tiny_dataset, [text, image], root / "aligned", AlignConfig(dim=32, epochs=5, device="cpu"))
    model = train(tiny_dataset, aligned, root / "model", TrainConfig(model="fused", dim=32, layers=1, heads=2, max_len=20,
                                                                     epochs=2, device="cpu"))
    image_only = align(tiny_dataset, [image], root / "aligned_image", AlignConfig(dim=32, epochs=2, device="cpu"))
    return model, aligned, text, image_only
