#!/usr/bin/env bash
# A local container engine for building and running the fusionrec images on a machine without
# systemd and without a reachable image registry (the project's CI and development machines).
#
#   docker/local-engine.sh start        # install Docker from Debian if missing, start dockerd if not running
#   docker/local-engine.sh base-image   # build the local Python base image (debootstrap) if it is missing
#   docker/local-engine.sh up           # start + base-image
#   docker/local-engine.sh status       # is dockerd answering? which base image?
#   docker/local-engine.sh stop         # stop the dockerd this script started (pid file)
#
# Idempotent: every command checks before it acts. The daemon's log and pid live in $ENGINE_STATE
# (default /var/lib/fusionrec-engine). The local base image stands in for python:3.11-slim-bookworm,
# which cannot be pulled here: Debian bookworm's own Python 3.11 from the machine's apt mirror,
# imported with `docker import` (no registry involved). Build the step images FROM it with
#   PYTHON_IMAGE=$(docker/local-engine.sh base-ref) docker/build.sh
# Prints which docker CLI it uses (BuildKit without the buildx plugin needs Debian's 20.10 CLI).
set -euo pipefail

ENGINE_STATE=${ENGINE_STATE:-/var/lib/fusionrec-engine}
DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
BASE_REF=${FUSIONREC_LOCAL_BASE:-fusionrec-local/python:3.11-bookworm}
SUITE=bookworm
# libpython3.11: nvidia-pytriton's Python backend stub links the shared libpython (the A/B and serving images)
BASE_PACKAGES=python3,python3-venv,libpython3.11,ca-certificates
LOG="$ENGINE_STATE/dockerd.log"
PIDFILE="$ENGINE_STATE/dockerd.pid"

die() { echo "local-engine: $*" >&2; exit 1; }
say() { echo "local-engine: $*" >&2; }

docker_cli() {
  # Debian's docker.io CLI (20.10) builds with BuildKit on its own; a newer CLI without the buildx
  # plugin refuses DOCKER_BUILDKIT=1, and the Dockerfiles need BuildKit (per-Dockerfile
  # .dockerignore, RUN --mount for the optional CA secret).
  if [[ -n "${DOCKER:-}" ]]; then echo "$DOCKER"; return; fi
  if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; return; fi
  command -v docker || true
}

engine_up() { local cli; cli=$(docker_cli); [[ -n "$cli" ]] && "$cli" info >/dev/null 2>&1; }

install_engine() {
  if command -v dockerd >/dev/null 2>&1 && [[ -x /usr/bin/docker ]] && command -v debootstrap >/dev/null 2>&1; then
    return
  fi
  [[ $(id -u) -eq 0 ]] || die "Docker is not installed and installing it needs root: apt-get install docker.io debootstrap iptables"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get here: install Docker (dockerd + CLI) and debootstrap yourself"
  say "installing docker.io, debootstrap, iptables from Debian"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap iptables; } \
    > "$ENGINE_STATE/apt.log" 2>&1 || die "apt-get install failed (log: $ENGINE_STATE/apt.log)"
}

start() {
  mkdir -p "$ENGINE_STATE"
  install_engine
  if engine_up; then say "dockerd already answering ($(docker_cli))"; return; fi
  [[ $(id -u) -eq 0 ]] || die "dockerd is not running and starting it needs root"
  say "starting dockerd (data root $DATA_ROOT, log $LOG)"
  # setsid: the daemon outlives this script's shell; it is stopped by `local-engine.sh stop`
  setsid dockerd --data-root "$DATA_ROOT" --host unix:///var/run/docker.sock >"$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 60); do
    if engine_up; then say "dockerd up (pid $(cat "$PIDFILE"))"; return; fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then tail -5 "$LOG" >&2; die "dockerd exited (log: $LOG)"; fi
    sleep 1
  done
  die "dockerd did not answer within 60 s (log: $LOG)"
}

stop() {
  if [[ ! -f "$PIDFILE" ]]; then say "no dockerd started by this script"; return; fi
  local pid; pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) did not stop within 30 s"
    say "dockerd (pid $pid) stopped"
  else
    say "dockerd (pid $pid) was not running"
  fi
  rm -f "$PIDFILE"
}

apt_mirror() {
  # the Debian mirror this machine's apt already uses (deb822 .sources or classic sources.list)
  local url
  url=$(grep -rhoE '^URIs:\s*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
  [[ -z "$url" ]] && url=$(grep -rhoE '^deb\s+(\[[^]]*\]\s+)?\S+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '{print $NF}' | grep -v security | head -1 || true)
  echo "${url:-http://deb.debian.org/debian}"
}

base_image() {
  engine_up || die "dockerd is not answering: run '$0 start' first"
  local cli; cli=$(docker_cli)
  if "$cli" image inspect "$BASE_REF" >/dev/null 2>&1; then say "base image $BASE_REF present"; return; fi
  [[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
  local rootfs; rootfs=$(mktemp -d "${TMPDIR:-/tmp}/fusionrec-rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' RETURN
  local mirror; mirror=$(apt_mirror)
  say "debootstrap $SUITE ($BASE_PACKAGES) from $mirror"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" \
    > "$ENGINE_STATE/debootstrap.log" 2>&1 || die "debootstrap failed (log: $ENGINE_STATE/debootstrap.log)"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$cli" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$BASE_REF" >/dev/null || die "docker import failed"
  say "base image $BASE_REF built ($("$cli" image inspect -f '{{.Size}}' "$BASE_REF" | awk '{printf "%.0f MB", $1/1e6}'))"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  base-image) base_image ;;
  up) start; base_image ;;
  base-ref) echo "$BASE_REF" ;;
  cli) docker_cli ;;
  status)
    if engine_up; then echo "dockerd: answering ($(docker_cli))"; else echo "dockerd: not answering"; fi
    if engine_up && "$(docker_cli)" image inspect "$BASE_REF" >/dev/null 2>&1; then echo "base image: $BASE_REF"; else echo "base image: missing"; fi ;;
  -h|--help|"") sed -n '2,17p' "$0" ;;
  *) die "unknown command '$1' (start | stop | base-image | up | status | base-ref | cli)" ;;
esac
