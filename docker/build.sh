#!/usr/bin/env bash
# Build (and optionally push) the fusionrec images, tagged exactly as the pipeline's components
# name them: the names come from src/fusionrec/components/images.py, the same module the components use.
#
#   docker/build.sh                      # build every image (step images, serving image, NGC Triton image)
#   docker/build.sh --push               # build and push
#   docker/build.sh --only base,ab       # some images only
#   docker/build.sh --dry-run            # print the commands
#   docker/build.sh --local              # build here, without a registry (see below)
#   docker/build.sh --ca FILE            # give pip FILE as CA bundle (BuildKit secret, never in a layer)
#   docker/build.sh --constraints-from .venv   # pin every package to that venv's versions
#   FUSIONREC_IMAGE_REGISTRY=registry.example.com/ml FUSIONREC_IMAGE_TAG=0.1.0 docker/build.sh --push
#
# --local builds on a machine that reaches PyPI but no image registry (docker/local-engine.sh up
# makes the engine and the base image): FROM the local Debian Python base, torch from PyPI, the
# GPU image FROM the base image (same Python stack), the host's CA bundle for pip, the versions of
# .venv, and no NGC Triton image. Compile the pipeline with the same two variables set so its
# base_image names match:  FUSIONREC_IMAGE_REGISTRY=registry.example.com/ml fusionrec pipeline compile pipeline.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PUSH=0
DRY=0
LOCAL=0
ONLY=""
CA=""
CONSTRAINTS_FROM=""
EXTRA_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --push) PUSH=1 ;;
    --dry-run) DRY=1 ;;
    --local) LOCAL=1 ;;
    --only) ONLY="$2"; shift ;;
    --only=*) ONLY="${1#--only=}" ;;
    --ca) CA="$2"; shift ;;
    --constraints-from) CONSTRAINTS_FROM="$2"; shift ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

DOCKER=${DOCKER:-docker}
BUILD_ARGS=()
if [[ $LOCAL -eq 1 ]]; then
  DOCKER=$(docker/local-engine.sh cli)
  BUILD_ARGS+=(--build-arg "PYTHON_IMAGE=$(docker/local-engine.sh base-ref)" --build-arg "TORCH_INDEX_URL=")
  if [[ -z "$CA" && -s /etc/ssl/certs/ca-certificates.crt ]]; then CA=/etc/ssl/certs/ca-certificates.crt; fi
  if [[ -z "$CONSTRAINTS_FROM" && -x .venv/bin/python ]]; then CONSTRAINTS_FROM=.venv; fi
fi
if [[ -n "$CA" ]]; then
  [[ -s "$CA" ]] || { echo "build.sh: CA bundle $CA is missing or empty" >&2; exit 2; }
  BUILD_ARGS+=(--secret "id=pip_ca,src=$CA")
fi
if [[ -n "$CONSTRAINTS_FROM" ]]; then
  [[ -x "$CONSTRAINTS_FROM/bin/python" ]] || { echo "build.sh: $CONSTRAINTS_FROM is not a virtual environment" >&2; exit 2; }
  # every installed distribution but the project itself (editable) and pip's own tools
  "$CONSTRAINTS_FROM/bin/python" -m pip freeze --exclude-editable --exclude fusionrec > docker/constraints.txt
  echo "+ docker/constraints.txt: $(wc -l < docker/constraints.txt) pins from $CONSTRAINTS_FROM"
fi

run() {
  echo "+ $*"
  if [[ $DRY -eq 0 ]]; then "$@"; fi
}

# "<key> <image> <dockerfile>" lines, in build order (an image after the one it starts FROM).
mapfile -t LINES < <("$PYTHON" src/fusionrec/components/images.py)
declare -A REF
for line in "${LINES[@]}"; do
  read -r key ref dockerfile <<<"$line"
  REF[$key]=$ref
done
registry_tag=${REF[base]%/*}
tag=${REF[base]##*:}
if [[ $LOCAL -eq 1 ]]; then BUILD_ARGS+=(--build-arg "CUDA_BASE_IMAGE=${REF[base]}"); fi

for line in "${LINES[@]}"; do
  read -r key ref dockerfile <<<"$line"
  if [[ -n "$ONLY" && ",$ONLY," != *",$key,"* ]]; then continue; fi
  start=$(date +%s)
  run env DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain -f "$dockerfile" -t "$ref" \
    --build-arg "FUSIONREC_BASE_IMAGE=${REF[base]}" \
    --build-arg "FUSIONREC_GPU_IMAGE=${REF[gpu]}" \
    --build-arg "FUSIONREC_AB_IMAGE=${REF[ab]}" \
    "${BUILD_ARGS[@]}" "${EXTRA_ARGS[@]}" .
  [[ $DRY -eq 0 ]] && echo "built $ref in $(( $(date +%s) - start )) s"
  if [[ $PUSH -eq 1 ]]; then run "$DOCKER" push "$ref"; fi
done

if [[ -f docker/triton/Dockerfile && ( -z "$ONLY" || ",$ONLY," == *",triton,"* ) ]]; then
  if [[ $LOCAL -eq 1 ]]; then
    echo "skipping the NGC Triton image (docker/triton/): nvcr.io cannot be pulled here; fusionrec-serve serves instead"
  else
    triton_ref="${registry_tag}/fusionrec-triton:${tag}"
    run env DOCKER_BUILDKIT=1 "$DOCKER" build -f docker/triton/Dockerfile -t "$triton_ref" "${EXTRA_ARGS[@]}" .
    if [[ $PUSH -eq 1 ]]; then run "$DOCKER" push "$triton_ref"; fi
  fi
fi
