#!/usr/bin/env bash
# `make test-containers`: from a machine with only the project's .venv to the container tests.
#   1. a local Docker engine (docker/local-engine.sh start: installs docker.io if missing, starts dockerd)
#   2. the local Python base image (debootstrap; no registry is needed)
#   3. the step images and the serving image (docker/build.sh --local, versions pinned to $VENV)
#   4. pytest --containers tests/test_containers.py: image checks, the pipeline through kfp.local's
#      DockerRunner (compared with the subprocess runner), the serving container over gRPC
# Every phase is timed; the times, the image sizes and how they were made go to $REPORT (JSON).
# A dockerd this script started is stopped at the end (images stay in the engine's data root).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PY:-$VENV/bin/python}
REPORT=${REPORT:-artifacts/containers/test-containers.json}
PYTEST_ARGS=${PYTEST_ARGS:-}
mkdir -p "$(dirname "$REPORT")"
PHASES=$(mktemp)
trap 'rm -f "$PHASES"' EXIT

phase() {  # phase NAME COMMAND...: run it, record its wall time
  local name=$1; shift
  local start; start=$(date +%s%N)
  echo "== $name: $*"
  local rc=0
  "$@" || rc=$?
  printf '%s %s %s\n' "$name" "$(( ($(date +%s%N) - start) / 1000000 ))" "$rc" >> "$PHASES"
  return $rc
}

ENGINE_WAS_UP=0
docker/local-engine.sh status 2>/dev/null | grep -q '^dockerd: answering' && ENGINE_WAS_UP=1
DOCKER_INSTALLED=0
command -v dockerd >/dev/null 2>&1 && DOCKER_INSTALLED=1

stop_engine() { if [[ $ENGINE_WAS_UP -eq 0 ]]; then docker/local-engine.sh stop || true; fi; rm -f "$PHASES"; }
trap stop_engine EXIT

phase engine docker/local-engine.sh start
BASE_PRESENT=0
"$(docker/local-engine.sh cli)" image inspect "$(docker/local-engine.sh base-ref)" >/dev/null 2>&1 && BASE_PRESENT=1
phase base_image docker/local-engine.sh base-image
for key in $("$PY" src/fusionrec/components/images.py | awk '{print $1}'); do
  phase "build_$key" docker/build.sh --local --constraints-from "$VENV" --only "$key"
done
rc=0
export FUSIONREC_CONTAINERS_COMPARISON
FUSIONREC_CONTAINERS_COMPARISON=$(realpath "$(dirname "$REPORT")")/comparison.json
rm -f "$FUSIONREC_CONTAINERS_COMPARISON"
phase pytest "$PY" -m pytest --containers tests/test_containers.py -q --durations=0 -p no:cacheprovider \
  --junitxml "$(dirname "$REPORT")/junit.xml" $PYTEST_ARGS || rc=$?

"$PY" - "$PHASES" "$REPORT" "$DOCKER_INSTALLED" "$ENGINE_WAS_UP" "$BASE_PRESENT" "$(docker/local-engine.sh cli)" <<'EOF'
import json, os, platform, subprocess, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

phases_file, report, docker_installed, engine_was_up, base_present, cli = sys.argv[1:7]
sys.path.insert(0, "src/fusionrec/components")
import images  # noqa: E402  (stdlib-only module, as docker/build.sh reads it)

def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()

phases = {}
for line in Path(phases_file).read_text().splitlines():
    name, millis, rc = line.split()
    phases[name] = {"wall_s": round(int(millis) / 1000, 1), "rc": int(rc)}
sizes = {}
for key in [*images.IMAGES, *images.SERVING_IMAGES]:
    ref = images.image(key)
    size = sh(cli, "image", "inspect", "-f", "{{.Size}}", ref)
    layers = [l.split("\t") for l in sh(cli, "image", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", ref).splitlines()]
    sizes[key] = {"image": ref, "size_mb": round(int(size) / 1e6) if size else None, "layers": len(layers)}
base_ref = sh("docker/local-engine.sh", "base-ref")
base_size = sh(cli, "image", "inspect", "-f", "{{.Size}}", base_ref)
tests = {}
junit = Path(report).parent / "junit.xml"
if junit.exists():
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = any(child.tag in ("failure", "error") for child in case)
        tests[case.get("name")] = {"time_s": round(float(case.get("time", 0)), 1), "passed": not failed and not any(c.tag == "skipped" for c in case)}
data = {
    "what": "make test-containers: engine, base image, image builds, pytest --containers (pipeline via DockerRunner vs subprocess runner, serving container over gRPC)",
    "commit": sh("git", "rev-parse", "HEAD") or None,
    "dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
    "started_from": {"docker_installed": docker_installed == "1", "engine_running": engine_was_up == "1",
                     "base_image_present": base_present == "1"},
    "docker": {"client": sh(cli, "version", "-f", "{{.Client.Version}}"), "server": sh(cli, "version", "-f", "{{.Server.Version}}"),
               "storage_driver": sh(cli, "info", "-f", "{{.Driver}}")},
    "base_image": {"image": base_ref, "size_mb": round(int(base_size) / 1e6) if base_size else None},
    "phases": phases,
    "total_s": round(sum(p["wall_s"] for p in phases.values()), 1),
    "images": sizes,
    "engine_disk_usage": sh(cli, "system", "df", "--format", "{{.Type}}: {{.Size}} ({{.Reclaimable}} reclaimable)").splitlines(),
    "tests": tests,
    "docker_vs_subprocess": json.loads(Path(os.environ["FUSIONREC_CONTAINERS_COMPARISON"]).read_text())
        if Path(os.environ["FUSIONREC_CONTAINERS_COMPARISON"]).exists() else None,
}
Path(report).write_text(json.dumps(data, indent=2) + "\n")
print(f"timings and sizes: {report} (total {data['total_s']} s)")
EOF
exit $rc
