"""Static checks of the step images (no Docker engine here): the Dockerfiles are correct by construction.

Every COPY source exists and survives the Dockerfile's .dockerignore, every CMD/ENTRYPOINT
command resolves, pinned versions equal pyproject.toml's, and every component's base_image is
an image that docker/build.sh builds from a Dockerfile here.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from fusionrec.components import images

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = sorted(ROOT.glob("docker/*/Dockerfile"))
STEP_DOCKERFILES = [ROOT / dockerfile for _, dockerfile in images.IMAGES.values()]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def args_of(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in instructions(path) if k == "ARG" and "=" in a)


def pin(requirement_name: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(requirement_name)}==([\w.]+)", dep)
        if m:
            return m.group(1)
    raise AssertionError(f"{requirement_name} is not pinned with == in pyproject.toml")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics for a top-level path (last matching pattern wins; '!' re-includes)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            result = not negate
    return result


def test_every_step_image_has_a_dockerfile():
    assert set(images.STEP_IMAGES.values()) <= set(images.IMAGES)
    for key, (name, dockerfile) in images.IMAGES.items():
        assert (ROOT / dockerfile).is_file(), f"image {key} ({name}) has no {dockerfile}"
    assert set(STEP_DOCKERFILES) <= set(DOCKERFILES)


def test_every_component_base_image_is_built_here():
    import fusionrec.components as comps

    built = {images.image(key) for key in images.IMAGES}
    seen = set()
    for name in comps.__all__:
        image = getattr(comps, name).component_spec.implementation.container.image
        assert image in built, f"component {name} uses {image}, which docker/build.sh does not build"
        assert image == images.step_image(name), f"component {name}: {image} != images.step_image({name!r})"
        seen.add(image)
    assert seen == built, f"images built but used by no component: {built - seen}"


@pytest.mark.parametrize("dockerfile", STEP_DOCKERFILES, ids=lambda p: p.parent.name)
def test_copy_sources_exist_and_are_not_dockerignored(dockerfile):
    ignore_file = dockerfile.with_name("Dockerfile.dockerignore")
    patterns = [ln.strip() for ln in ignore_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")] \
        if ignore_file.exists() else []
    for kind, arguments in instructions(dockerfile):
        if kind not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(arguments) if not p.startswith("--")]
        assert not any(p.startswith("--from") for p in shlex.split(arguments)), "multi-stage COPY not expected"
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile}: COPY source {src} does not exist"
            assert not ignored(src.rstrip("/"), patterns), f"{dockerfile}: COPY source {src} is excluded by {ignore_file.name}"
    if any(k == "COPY" for k, _ in instructions(dockerfile)):
        assert ignore_file.exists(), f"{dockerfile} copies from the repo root but has no {ignore_file.name} (.venv is GBs)"
        assert ignored(".venv", patterns) and ignored("artifacts", patterns)


@pytest.mark.parametrize("dockerfile", STEP_DOCKERFILES, ids=lambda p: p.parent.name)
def test_cmd_and_entrypoint_resolve(dockerfile):
    scripts = PYPROJECT["project"]["scripts"]
    found = False
    for kind, arguments in instructions(dockerfile):
        if kind not in ("CMD", "ENTRYPOINT"):
            continue
        found = True
        argv = __import__("json").loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        if argv[0] in scripts:
            module, _, attr = scripts[argv[0]].partition(":")
            assert callable(getattr(importlib.import_module(module), attr))
        elif argv[0].startswith("python") and argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"{dockerfile}: module {argv[2]} not importable"
        else:
            raise AssertionError(f"{dockerfile}: unexpected command {argv}")
    assert found, f"{dockerfile} has no CMD/ENTRYPOINT"


def test_pinned_versions_match_pyproject():
    version = PYPROJECT["project"]["version"]
    assert images.DEFAULT_TAG == version, "components/images.py DEFAULT_TAG must be the library version"
    base = args_of(ROOT / "docker/base/Dockerfile")
    assert base["FUSIONREC_VERSION"] == version
    assert base["TORCH_VERSION"] == pin("torch")
    assert base["TORCHVISION_VERSION"] == pin("torchvision")
    assert base["TORCHAUDIO_VERSION"] == pin("torchaudio")
    gpu = args_of(ROOT / "docker/gpu/Dockerfile")
    assert gpu["FUSIONREC_VERSION"] == version
    assert gpu["TORCH_VERSION"] == pin("torch")
    # the CUDA PyTorch base carries the pinned torch built for CUDA 12 (onnxruntime-gpu 1.23 links CUDA 12)
    m = re.fullmatch(r"pytorch/pytorch:([\d.]+)-cuda(\d+)\.\d+-cudnn9-runtime", gpu["CUDA_BASE_IMAGE"])
    assert m and m.group(1) == pin("torch") and m.group(2) == "12", gpu["CUDA_BASE_IMAGE"]
    assert pin("onnxruntime-gpu").startswith("1.23.")
    musicnn = re.search(r"musicnn==([\w.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert args_of(ROOT / "docker/encode/Dockerfile")["MUSICNN_VERSION"] == musicnn


def test_derived_images_start_from_the_images_build_sh_tags():
    # docker/build.sh passes these build args; the defaults must name the same images for a plain build
    assert args_of(ROOT / "docker/encode/Dockerfile")["FUSIONREC_GPU_IMAGE"] == f"{images.DEFAULT_REGISTRY}/fusionrec-gpu:{images.DEFAULT_TAG}"
    assert args_of(ROOT / "docker/ab/Dockerfile")["FUSIONREC_BASE_IMAGE"] == f"{images.DEFAULT_REGISTRY}/fusionrec-base:{images.DEFAULT_TAG}"
    order = list(images.IMAGES)
    assert order.index("gpu") < order.index("encode") and order.index("base") < order.index("ab")


def test_build_script_tags_match_components(monkeypatch):
    env = {"PATH": "/usr/bin:/bin", "FUSIONREC_IMAGE_REGISTRY": "registry.example.com/ml", "FUSIONREC_IMAGE_TAG": "9.9.9",
           "PYTHON": __import__("sys").executable}
    assert subprocess.run(["bash", "-n", str(ROOT / "docker/build.sh")]).returncode == 0
    out = subprocess.run(["bash", str(ROOT / "docker/build.sh"), "--dry-run"], env=env, capture_output=True, text=True, check=True).stdout
    tags = set(re.findall(r" -t (\S+)", out))
    expected = {f"registry.example.com/ml/{name}:9.9.9" for name, _ in images.IMAGES.values()}
    assert expected <= tags, out
    for key, (name, dockerfile) in images.IMAGES.items():
        assert f"-f {dockerfile} -t registry.example.com/ml/{name}:9.9.9" in out
    if (ROOT / "docker/triton/Dockerfile").exists():  # the serving image (docker/triton/) is built alongside
        assert "-f docker/triton/Dockerfile -t registry.example.com/ml/fusionrec-triton:9.9.9" in out
