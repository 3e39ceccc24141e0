"""Step images: the one place that names them.

The components' ``base_image`` strings, ``docker/build.sh`` and the tests all derive the image
names from this module, so a build, a compile and a cluster run agree on them. Override the
registry and tag with ``FUSIONREC_IMAGE_REGISTRY`` / ``FUSIONREC_IMAGE_TAG`` (read when this
module is imported, i.e. before ``fusionrec pipeline compile`` builds the pipeline).

This file imports nothing but the standard library: ``docker/build.sh`` runs it directly
(``python3 src/fusionrec/components/images.py``) to list ``<key> <image> <dockerfile>`` lines.

Example:
    >>> image("encode")                                   # doctest: +SKIP
    'ghcr.io/fusionrec/fusionrec-encode:0.1.0'
"""

from __future__ import annotations

import os

REGISTRY_ENV = "FUSIONREC_IMAGE_REGISTRY"
TAG_ENV = "FUSIONREC_IMAGE_TAG"
DEFAULT_REGISTRY = "ghcr.io/fusionrec"
#: The library version the images are built from (== ``version`` in pyproject.toml; a test checks it).
DEFAULT_TAG = "0.1.0"

#: image key -> (repository name, Dockerfile relative to the repo root), in build order
#: (an image is built after the one it starts ``FROM``).
IMAGES: dict[str, tuple[str, str]] = {
    "base": ("fusionrec-base", "docker/base/Dockerfile"),      # CPU: library + kfp, no CUDA
    "gpu": ("fusionrec-gpu", "docker/gpu/Dockerfile"),         # CUDA PyTorch base + library
    "encode": ("fusionrec-encode", "docker/encode/Dockerfile"),  # gpu + musicnn checkpoints
    "ab": ("fusionrec-ab", "docker/ab/Dockerfile"),            # base + tritonserver runtime needs
}

#: pipeline step -> image key (the step's component uses that image as ``base_image``).
STEP_IMAGES: dict[str, str] = {
    "ingest": "base",
    "encode_plan": "base",
    "encode": "encode",
    "merge_embeddings": "base",
    "align": "gpu",
    "train_fusion": "gpu",
    "train_baseline": "gpu",
    "export_onnx": "gpu",
    "ab_evaluate": "ab",
    "promote": "base",
}

def registry() -> str:
    return os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY).rstrip("/")


def tag() -> str:
    return os.environ.get(TAG_ENV, DEFAULT_TAG)


def image(key: str) -> str:
    """Full image reference of an image key (``base``, ``gpu``, ``encode``, ``ab``)."""
    name, _ = IMAGES[key]
    return f"{registry()}/{name}:{tag()}"


def step_image(step: str) -> str:
    """Full image reference of a pipeline step's image."""
    return image(STEP_IMAGES[step])


if __name__ == "__main__":  # used by docker/build.sh
    for _key, (_name, _dockerfile) in IMAGES.items():
        print(_key, image(_key), _dockerfile)
