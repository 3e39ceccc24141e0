#!/usr/bin/env bash
# Build (and optionally push) the fusionrec step images, tagged exactly as the pipeline's components
# name them: the names come from src/fusionrec/components/images.py, the same module the components use.
#
#   docker/build.sh                      # build every step image
#   docker/build.sh --push               # build and push
#   docker/build.sh --only base,ab       # some images only
#   docker/build.sh --dry-run            # print the commands
#   FUSIONREC_IMAGE_REGISTRY=registry.example.com/ml FUSIONREC_IMAGE_TAG=0.1.0 docker/build.sh --push
#
# Compile the pipeline with the same two variables set so its base_image names match:
#   FUSIONREC_IMAGE_REGISTRY=registry.example.com/ml fusionrec pipeline compile pipeline.yaml
# The Triton serving image (docker/triton/, the serving part of the project) is built too when present.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PUSH=0
DRY=0
ONLY=""
EXTRA_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --push) PUSH=1 ;;
    --dry-run) DRY=1 ;;
    --only) ONLY="$2"; shift ;;
    --only=*) ONLY="${1#--only=}" ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

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

for line in "${LINES[@]}"; do
  read -r key ref dockerfile <<<"$line"
  if [[ -n "$ONLY" && ",$ONLY," != *",$key,"* ]]; then continue; fi
  run env DOCKER_BUILDKIT=1 docker build -f "$dockerfile" -t "$ref" \
    --build-arg "FUSIONREC_BASE_IMAGE=${REF[base]}" \
    --build-arg "FUSIONREC_GPU_IMAGE=${REF[gpu]}" \
    "${EXTRA_ARGS[@]}" .
  if [[ $PUSH -eq 1 ]]; then run docker push "$ref"; fi
done

if [[ -f docker/triton/Dockerfile && ( -z "$ONLY" || ",$ONLY," == *",triton,"* ) ]]; then
  triton_ref="${registry_tag}/fusionrec-triton:${tag}"
  run env DOCKER_BUILDKIT=1 docker build -f docker/triton/Dockerfile -t "$triton_ref" "${EXTRA_ARGS[@]}" .
  if [[ $PUSH -eq 1 ]]; then run docker push "$triton_ref"; fi
fi
