#!/usr/bin/env bash
# Smoke test of the CPU image on a machine without a Docker engine (docs/deployment.md):
#   1. a Debian bookworm base made with debootstrap, imported with podman (once; reused);
#   2. `buildah bud` of docker/Dockerfile (chroot isolation, vfs storage, docker format so
#      that HEALTHCHECK is kept) with BASE_IMAGE set to that base;
#   3. the image's own ENTRYPOINT + CMD run with `buildah run` (chroot isolation shares the
#      host network: ANYTIME_HOST/ANYTIME_PORT move it to a free loopback port);
#   4. 200 from /readyz, a generated sample from /generate, /metrics, the image's
#      HEALTHCHECK command, then SIGTERM and a clean drain (exit 0);
#   5. image sizes (`buildah images`).
#
# Environment: SMOKE_WORK (storage and base rootfs; default /var/tmp/anytime-smoke), SMOKE_PORT,
# SMOKE_MODEL_ZOO (a zoo folder inside the repo; default models/zoo, or a tiny random-weight
# model when the zoo has no model yet), SMOKE_TORCH_VARIANT=1 (also build WITH_TORCH=true and
# generate with the TorchScript backend), SMOKE_SKIP_BUILD=1 (reuse an existing image),
# SMOKE_LOG (also write the output there), DEBIAN_MIRROR. Needs root, buildah, podman,
# debootstrap (`make docker-tools`). Heavy steps run under `nice -n 19`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${SMOKE_WORK:-/var/tmp/anytime-smoke}
BASE=${SMOKE_BASE:-localhost/bookworm-base}
IMAGE=${SMOKE_IMAGE:-localhost/anytime:cpu}
PORT=${SMOKE_PORT:-18080}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_VARIANT=${SMOKE_TORCH_VARIANT:-0}
PY=${PYTHON:-$REPO/.venv/bin/python}
NICE=(nice -n 19)

if [ -n "${SMOKE_LOG:-}" ]; then  # everything below also goes to this file
    mkdir -p "$(dirname "$SMOKE_LOG")"
    exec > >(tee "$SMOKE_LOG") 2>&1
fi

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "FAIL: $*"; exit 1; }

for tool in buildah podman debootstrap curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (make docker-tools)"
done
mkdir -p "$WORK"
# Private storage configuration: vfs works without overlay support or fuse.
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf
cat > "$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "vfs"
runroot = "$WORK/run"
graphroot = "$WORK/storage"
EOF

server_pid=""
container=""
smoke_zoo=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid" 2>/dev/null || true; fi
    if [ -n "$container" ]; then buildah rm "$container" >/dev/null 2>&1 || true; fi
    if [ -n "$smoke_zoo" ]; then rm -rf "$smoke_zoo"; fi
}
trap cleanup EXIT

log "host: $(uname -sm), $(nproc) cores; $(buildah --version); $(podman --version)"
log "repo: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"

# ---- 1. base image ---------------------------------------------------------------------------
if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    log "base $BASE exists"
else
    log "debootstrap --variant=minbase bookworm ($MIRROR)"
    rm -rf "$WORK/rootfs"
    "${NICE[@]}" debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $WORK/debootstrap.log"
    # as Debian's own container images do: no package lists or .deb cache in the base
    rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/*
    tar -C "$WORK/rootfs" -c . | "${NICE[@]}" podman import - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
    log "base $BASE imported"
fi

# ---- 2. build --------------------------------------------------------------------------------
zoo=${SMOKE_MODEL_ZOO:-}
if [ -z "$zoo" ]; then
    if ls "$REPO"/models/zoo/*/manifest.json >/dev/null 2>&1; then
        zoo=models/zoo
    else
        log "models/zoo has no model yet: using a tiny random-weight model (tests/utils/tiny_model.py)"
        smoke_zoo=$REPO/docker/.smoke-zoo
        rm -rf "$smoke_zoo"
        (cd "$REPO" && "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, '.'); \
from tests.utils.tiny_model import build_model_dir; build_model_dir(Path(sys.argv[1]), 'tiny')" "$smoke_zoo/build") \
            > "$WORK/tiny-model.log" 2>&1 || die "could not build the tiny model; see $WORK/tiny-model.log"
        mkdir -p "$smoke_zoo/zoo"
        mv "$smoke_zoo/build/tiny" "$smoke_zoo/zoo/tiny"
        rm -rf "$smoke_zoo/build"
        zoo=docker/.smoke-zoo/zoo
    fi
fi
log "model zoo in the image: $zoo ($(find "$REPO/$zoo" -mindepth 2 -maxdepth 2 -name manifest.json -printf '%h ' | xargs -n1 basename | tr '\n' ' '))"

# pip inside RUN steps needs the host's CA bundle and pip settings (find-links for the torch
# wheel on disk); mounted for the build only, nothing of it lands in the image.
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
wheels=${PIP_FIND_LINKS:-/opt/wheels}
mounts=(-v "$host_ca:/run/host-ca.crt:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro")
{ echo "[global]"; echo "cert = /run/host-ca.crt"; } > "$WORK/pip.conf"
if [ -d "$wheels" ]; then
    echo "find-links = $wheels" >> "$WORK/pip.conf"
    mounts+=(-v "$wheels:$wheels:ro")
fi

build() {  # build TAG [extra build args...]
    local tag=$1; shift
    local t0=$SECONDS
    log "buildah bud -f docker/Dockerfile -t $tag $*"
    "${NICE[@]}" buildah bud --isolation chroot --format docker --pull=false --layers=false \
        -f "$REPO/docker/Dockerfile" --build-arg "BASE_IMAGE=$BASE" --build-arg "MODEL_ZOO=$zoo" "$@" \
        "${mounts[@]}" -t "$tag" "$REPO" > "$WORK/build-${tag##*:}.log" 2>&1 \
        || { tail -40 "$WORK/build-${tag##*:}.log"; die "build of $tag failed; see $WORK/build-${tag##*:}.log"; }
    grep -E '^model ' "$WORK/build-${tag##*:}.log" | sed 's/^/    build-time check: /'
    log "built $tag in $((SECONDS - t0)) s"
}

# ---- 3-4. run and check ------------------------------------------------------------------------
smoke() {  # smoke TAG [extra env for the server...]
    local tag=$1; shift
    container=$(buildah from -q --pull-never "containers-storage:$tag")
    buildah inspect --type container "$container" > "$WORK/inspect.json"
    cfg() { "$PY" -c 'import json, sys; c = json.load(open(sys.argv[1]))["Docker"]["config"]; exec(sys.argv[2])' \
        "$WORK/inspect.json" "$1"; }
    local argv health
    mapfile -t argv < <(cfg 'print("\n".join((c.get("Entrypoint") or []) + (c.get("Cmd") or [])))')
    log "image config: user=$(cfg 'print(c.get("User"))') entrypoint+cmd=${argv[*]} workdir=$(cfg 'print(c.get("WorkingDir"))')"
    log "image env: $(cfg 'print(" ".join(c.get("Env") or []))')"
    health=$(cfg 'print(json.dumps(c.get("Healthcheck")))')
    log "healthcheck: $health"
    # shellcheck disable=SC2016  # expanded inside the container
    log "inside: $(buildah run --isolation chroot "$container" -- sh -c \
        'echo "id=$(id -u):$(id -g)"; echo "torch=$(python3 -c "import torch" 2>/dev/null && echo yes || echo no)"; \
         echo "pip=$(command -v pip pip3 || echo none)"; echo "gcc=$(command -v gcc cc || echo none)"; \
         du -sh /opt/venv /app 2>/dev/null | tr "\t\n" ": "' | tr '\n' ' ')"

    log "start: buildah run $tag -- ${argv[*]} (ANYTIME_HOST=127.0.0.1 ANYTIME_PORT=$PORT $*)"
    local envs=(--env ANYTIME_HOST=127.0.0.1 --env "ANYTIME_PORT=$PORT")
    for e in "$@"; do envs+=(--env "$e"); done
    "${NICE[@]}" buildah run --isolation chroot "${envs[@]}" "$container" -- "${argv[@]}" \
        > "$WORK/serve-${tag##*:}.log" 2>&1 &
    local runner=$!
    local base=http://127.0.0.1:$PORT t0=$SECONDS code=000
    while [ $((SECONDS - t0)) -lt 300 ]; do
        code=$(curl -s -o "$WORK/readyz.json" -w '%{http_code}' "$base/readyz" || true)
        [ "$code" = 200 ] && break
        kill -0 "$runner" 2>/dev/null || { cat "$WORK/serve-${tag##*:}.log"; die "server exited before ready"; }
        sleep 1
    done
    [ "$code" = 200 ] || { tail -20 "$WORK/serve-${tag##*:}.log"; die "/readyz gave $code after 300 s"; }
    log "GET /readyz -> $code $(cat "$WORK/readyz.json") after $((SECONDS - t0)) s"
    # the port is held by a frontend worker; its parent is the supervisor (`anytime serve`),
    # which an orchestrator signals as the container's main process
    server_pid=$(ss -ltnpH "sport = :$PORT" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    server_pid=$(ps -o ppid= -p "$server_pid" | tr -d ' ')

    code=$(curl -s -o "$WORK/generate.json" -w '%{http_code}' -X POST "$base/generate" \
        -H 'content-type: application/json' -d '{"deadline_ms": 2000, "seed": 7, "n": 2}')
    [ "$code" = 200 ] || { cat "$WORK/generate.json"; die "/generate gave $code"; }
    "$PY" - "$WORK/generate.json" "$WORK/sample-${tag##*:}.png" <<'EOF' | sed 's/^/    /'
import base64, json, sys
r = json.load(open(sys.argv[1]))
s = r["samples"]
assert s and all(x["data"] for x in s), "no samples"
data = base64.b64decode(s[0]["data"])
open(sys.argv[2], "wb").write(data)
meta = {k: v for k, v in r.items() if k != "samples"}
print("response:", json.dumps(meta))
png = data[:8] == b"\x89PNG\r\n\x1a\n"
print(f"samples: {len(s)} x {s[0]['media_type']}, first {len(data)} bytes, PNG signature: {png}")
EOF
    log "POST /generate -> $code"
    curl -s "$base/models" | "$PY" -c 'import json, sys
for m in json.load(sys.stdin)["models"]:
    print("    GET /models:", m["name"], "D=%s backend=%s device=%s" % (m["D"], m["backend"], m["device"]))'
    code=$(curl -s -o "$WORK/metrics.txt" -w '%{http_code}' "$base/metrics")
    log "GET /metrics -> $code: $(grep -c '^anytime_' "$WORK/metrics.txt") anytime_* samples, e.g."
    grep -E '^anytime_(requests_total|tokens_per_sample_count|ready) ' "$WORK/metrics.txt" | sed 's/^/    /' || true
    grep -E '^anytime_(requests_total|tokens_per_sample_count)\{' "$WORK/metrics.txt" | sed 's/^/    /' || true

    local hc
    mapfile -t hc < <(echo "$health" | "$PY" -c 'import json, sys; [print(a) for a in json.load(sys.stdin)["Test"][1:]]')
    if buildah run --isolation chroot --env "ANYTIME_PORT=$PORT" "$container" -- "${hc[@]}"; then
        log "HEALTHCHECK command -> healthy"
    else
        die "HEALTHCHECK command failed"
    fi

    log "SIGTERM to the server (pid $server_pid): drain and exit"
    kill -TERM "$server_pid"
    local rc=0
    wait "$runner" || rc=$?
    server_pid=""
    log "server exited with $rc"
    [ "$rc" = 0 ] || die "unclean exit $rc"
    grep -E 'draining|Shutting down|Finished server' "$WORK/serve-${tag##*:}.log" | head -3 | sed 's/^/    /' || true
    buildah rm "$container" >/dev/null
    container=""
}

if [ "${SMOKE_SKIP_BUILD:-0}" = 1 ] && buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    log "SMOKE_SKIP_BUILD=1: reusing $IMAGE"
else
    build "$IMAGE"
fi
smoke "$IMAGE"
if [ "$TORCH_VARIANT" = 1 ]; then
    # The on-disk CPU wheel (find-links) stands in for the PyTorch CPU index here.
    build "${IMAGE}-torch" --build-arg WITH_TORCH=true --build-arg TORCH_INDEX_URL=
    smoke "${IMAGE}-torch" ANYTIME_BACKEND=torchscript
fi

# ---- 5. sizes -------------------------------------------------------------------------------------
log "buildah images:"
buildah images | sed 's/^/    /'
log "PASS"
