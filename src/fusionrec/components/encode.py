"""KFP components: encoding fan-out (plan -> encode one (modality, shard) -> merge per modality)."""


from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from fusionrec.components.images import step_image


@dsl.component(base_image=step_image("encode_plan"), install_kfp_package=False)
def encode_plan(modalities: list, num_shards: int) -> list:
    """The encoding work items: one ``{"modality", "shard"}`` per modality and shard (the ParallelFor items)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not modalities:
        raise ValueError("modalities is empty: name at least one of text, image, audio, tabular")
    return [{"modality": m, "shard": s} for m in modalities for s in range(num_shards)]


@dsl.component(base_image=step_image("encode"), install_kfp_package=False)
def encode(
    dataset: Input[Dataset],
    embeddings: Output[Dataset],
    modality: str,
    shard: int,
    num_shards: int,
    encoders: dict = {},
    config: dict = {},
):
    """Encode shard ``shard`` of ``num_shards`` of one modality with its pretrained encoder.

    ``encoders`` maps a modality to an encoder name from the registry (absent = the default);
    ``config`` is the ``encode`` section (batch size, device, cache folder...).
    """
    from pathlib import Path

    from fusionrec.components._util import config as make_config
    from fusionrec.encoders.encode import EncodeConfig, run

    cfg = make_config(EncodeConfig, config, modality=modality, encoder=encoders.get(modality),
                      shard=int(shard), num_shards=int(num_shards))
    run(Path(dataset.path), Path(embeddings.path), cfg)
    embeddings.metadata.update({"modality": modality, "shard": int(shard), "num_shards": int(num_shards)})


@dsl.component(base_image=step_image("merge_embeddings"), install_kfp_package=False)
def merge_embeddings(shards: Input[List[Dataset]], embeddings: Output[Dataset]):
    """Merge the shard artifacts of every modality into ``<embeddings>/<modality>/`` (one embeddings artifact each)."""
    import shutil
    from collections import defaultdict
    from pathlib import Path

    from fusionrec.artifacts import artifact_dir, read_manifest, write_manifest
    from fusionrec.encoders.encode import merge

    by_modality: dict = defaultdict(list)
    for shard in shards:
        path = Path(shard.path)
        by_modality[read_manifest(path)["modality"]].append(path)
    with artifact_dir(embeddings.path) as tmp:
        for modality, paths in by_modality.items():
            if len(paths) == 1 and read_manifest(paths[0]).get("kind") == "embeddings":
                shutil.copytree(paths[0], tmp / modality)  # num_shards == 1: already the full artifact
            else:
                merge(paths, tmp / modality)
        write_manifest(tmp, step="merge_embeddings", kind="embeddings_set", modalities=sorted(by_modality),
                       inputs={f"{m}_{i}": p for m, ps in by_modality.items() for i, p in enumerate(ps)})
    embeddings.metadata["modalities"] = sorted(by_modality)
