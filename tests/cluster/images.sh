#!/usr/bin/env bash
# Builds localhost/nim-operator:dev and localhost/nim-runtime:dev (the CPU build) from the project's own
# Dockerfiles with BuildKit (buildkitd's OCI worker on runc, no Docker daemon), on the Debian base that
# build.sh made, and streams them into the real nodes' containerd.
#
# Cached by content: the key of an image is a hash of the files its build context holds (tracked files
# under the paths below, with their working-tree content) and of the base image. An unchanged tree
# builds nothing and imports nothing; a changed one rebuilds only the layers that changed (BuildKit's
# cache lives in the per-user cache, beside uv's download cache mount, so it survives cluster-down).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_DIR/real-nodes.sh"

BIN=$(bin_dir)
IMAGES=$(node_images_dir)
BUILDKIT_ROOT=$CACHE_ROOT/buildkit
BUILDKIT_SOCK=$STATE/buildkitd.sock
# What BuildKit's cache may keep after a build (MB, least recently used goes first): the last runtime
# build (its layers, its uv downloads) fits; older bases and trees do not pile up on a shared disk.
BUILDKIT_KEEP_MB=20000
LOGS=$STATE/logs
PIDS=$STATE/pids
mkdir -p "$LOGS" "$PIDS" "$BUILDKIT_ROOT"

if ! [[ -S $(sock 0) ]]; then
    echo "the real nodes are not running: make cluster-up first" >&2
    exit 1
fi

start_buildkitd() {
    if [[ -S $BUILDKIT_SOCK ]] && "$BIN/buildctl" --addr "unix://$BUILDKIT_SOCK" debug workers >/dev/null 2>&1; then
        return
    fi
    # Host networking for RUN steps: the package registries are reached as from the host.
    setsid "$BIN/buildkitd" --root "$BUILDKIT_ROOT" --addr "unix://$BUILDKIT_SOCK" \
        --oci-worker=true --containerd-worker=false --oci-worker-net=host \
        --oci-worker-snapshotter=overlayfs >"$LOGS/buildkitd.log" 2>&1 </dev/null &
    echo $! >"$PIDS/buildkitd.pid"
    for _ in $(seq 100); do
        "$BIN/buildctl" --addr "unix://$BUILDKIT_SOCK" debug workers >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "buildkitd did not start; see $LOGS/buildkitd.log" >&2
    tail -n 20 "$LOGS/buildkitd.log" >&2
    exit 1
}

# The base as an OCI layout directory, which BuildKit takes as a named build context.
base_layout() {
    local dir=$IMAGES/nim-base.layout
    if [[ ! -f $dir/index.json ]]; then
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        tar -xf "$IMAGES/nim-base.tar" -C "$dir.tmp"
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

content_key() {
    local dockerfile=$1 base_digest=$2
    shift 2
    {
        echo "$base_digest"
        (cd "$REPO" && git ls-files -z -- "$@" | xargs -0 sha256sum)
        # From stdin: the path of the checkout must not enter the key (a fresh clone reuses the images).
        sha256sum <"$REPO/$dockerfile"
    } | sha256sum | cut -c1-16
}

# prune_stale_ids I: the CRI plugin also lists every image under its id (sha256:<config digest>); once
# a name points at a newer build, the old id alone pins the old image's layers. Remove ids that no named
# image has; --sync waits for containerd's garbage collection. Run before any import, never between
# two: a collection running beside an import's unpack removed a parent snapshot the unpack had found.
prune_stale_ids() {
    local address ref live=" " manifest
    address=$(sock "$1")
    for manifest in $(ctr --address "$address" -n k8s.io images ls | awk 'NR > 1 && $1 !~ /^sha256:/ { print $3 }'); do
        live+="$(ctr --address "$address" -n k8s.io content get "$manifest" |
            python3 -c 'import json, sys; print(json.load(sys.stdin).get("config", {}).get("digest", ""))') "
    done
    for ref in $(ctr --address "$address" -n k8s.io images ls -q | grep '^sha256:'); do
        [[ $live == *" $ref "* ]] || ctr --address "$address" -n k8s.io images rm --sync "$ref" >/dev/null
    done
}

# A build and its import need room for about twice the image (BuildKit's layers, the node's content
# and snapshots): say so plainly instead of failing halfway with ENOSPC from inside containerd. The
# runtime image is 7 GB; the others are small.
require_free_space() {
    local name=$1 need_gb=4 free_gb
    [[ $name == localhost/nim-runtime:* ]] && need_gb=20
    free_gb=$(($(df --output=avail -k "$CACHE_ROOT" | tail -n 1) / 1024 / 1024))
    if ((free_gb < need_gb)); then
        echo "only ${free_gb} GB free on the disk of $CACHE_ROOT; building $name needs ${need_gb} GB." >&2
        echo "What the cluster caches hold (after make cluster-down, removing $CACHE_ROOT/node-images and $CACHE_ROOT/buildkit starts the images over):" >&2
        du -sh "$CACHE_ROOT"/* 2>/dev/null >&2 || true
        exit 1
    fi
}

# build NAME DOCKERFILE NODES PATHS...: build from the repository, keyed by PATHS (see build_image).
build() {
    local name=$1 dockerfile=$2 nodes=$3
    shift 3
    build_image "$name" "$REPO" "$REPO/$dockerfile" "$nodes" "$(content_key "$dockerfile" "$(base_digest)" "$@")"
}

base_digest() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' \
        "$(base_layout)/index.json"
}

# build_image NAME CONTEXT DOCKERFILE NODES KEY: build unless each of NODES (comma-separated indexes)
# has this key already. The OCI archive streams from buildctl into the node's containerd: a 7 GB
# image never lands on the disk a third time (BuildKit's cache and the node's store hold it already).
build_image() {
    local name=$1 context=$2 dockerfile=$3 nodes=$4 key=$5
    local layout digest i missing=()
    layout=$(base_layout)
    digest=$(base_digest)
    for i in ${nodes//,/ }; do
        if [[ $(cat "$IMAGES_CACHE/real-$i/${name//[\/:]/_}.key" 2>/dev/null) != "$key" ]] ||
            ! ctr --address "$(sock "$i")" -n k8s.io images ls -q 2>/dev/null | grep -qxF "$name"; then
            missing+=("$i")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "$name: up to date ($key)"
        return
    fi
    require_free_space "$name"
    start_buildkitd
    local secret=() log=$LOGS/build-${name//[\/:]/_}.log t0
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && secret=(--secret "id=cacert,src=/etc/ssl/certs/ca-certificates.crt")
    for i in "${missing[@]}"; do
        t0=$(date +%s)
        # Once per node: the second build is all cache hits and only exports.
        if ! "$BIN/buildctl" --addr "unix://$BUILDKIT_SOCK" build \
            --frontend dockerfile.v0 \
            --local context="$context" \
            --local dockerfile="$(dirname "$dockerfile")" \
            --opt filename="$(basename "$dockerfile")" \
            --opt build-arg:BASE_IMAGE="$BASE_IMAGE" \
            --opt build-arg:VARIANT=cpu \
            --opt "context:$BASE_IMAGE=oci-layout://nimbase@$digest" \
            --oci-layout "nimbase=$layout" \
            "${secret[@]}" \
            --progress plain \
            --output "type=oci,dest=-,name=$name,compression=uncompressed" \
            2>"$log" | ctr --address "$(sock "$i")" -n k8s.io images import - >/dev/null; then
            echo "building $name for real-$i failed; last lines of $log:" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        mkdir -p "$IMAGES_CACHE/real-$i"
        echo "$key" >"$IMAGES_CACHE/real-$i/${name//[\/:]/_}.key"
        echo "$name: built and imported into real-$i in $(($(date +%s) - t0))s" \
            "($(ctr --address "$(sock "$i")" -n k8s.io images ls | awk -v n="$name" '$1 == n { print $4, $5 }'))"
    done
    "$BIN/buildctl" --addr "unix://$BUILDKIT_SOCK" prune --keep-storage "$BUILDKIT_KEEP_MB" >/dev/null
}

# The e2e tests' model hub (olah, tests/cluster/hub): its context is the Dockerfile, its config and
# the embedded SmolLM2 as `make models` converted it, keyed by all three.
build_hub() {
    local nodes=$1 model context key
    model=$("$REPO/.venv/bin/python" -c 'import sys
from nim_runtime.config import RuntimeConfig
from nim_runtime.sources import smollm2_folder
import os
print(smollm2_folder(RuntimeConfig.from_env(os.environ).cache_path))')
    if [[ ! -f $model/config.json ]]; then
        echo "the converted SmolLM2 is missing at $model: run make models" >&2
        exit 1
    fi
    context=$STATE/hub-context
    rm -rf "$context"
    mkdir -p "$context"
    cp "$CLUSTER_DIR/hub/Dockerfile" "$CLUSTER_DIR/hub/olah.toml" "$context/"
    cp -r "$model" "$context/model"
    key=$({
        base_digest
        (cd "$context" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-16)
    build_image localhost/nim-hub:dev "$context" "$context/Dockerfile" "$nodes" "$key"
}

# The operator may run on any real node; the runtime image (about 7 GB unpacked, twice that on disk
# per node) goes only where e2e NIMServices are pinned (RUNTIME_NODES in lib.sh).
all_nodes=$(seq -s, 0 $((REAL_NODE_COUNT - 1)))
for i in ${all_nodes//,/ }; do
    prune_stale_ids "$i"
done
build localhost/nim-operator:dev operator/Dockerfile "$all_nodes" pyproject.toml uv.lock README.md operator runtime
build localhost/nim-runtime:dev runtime/Dockerfile "$RUNTIME_NODES" pyproject.toml uv.lock README.md operator runtime
build_hub "$HUB_NODES"
# A stand-in for an NVIDIA NIM image (the base plus a NIM-format manifest) for the manifest probe's e2e test.
build localhost/nim-manifest-fixture:dev tests/e2e/nim-image/Dockerfile "$RUNTIME_NODES" tests/e2e/nim-image
