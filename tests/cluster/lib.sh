# Shared settings for build.sh, up.sh and down.sh; sourced, not executed.
# Keeping the cache key in one place lets up.sh find what build.sh produced.

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CLUSTER_DIR/../.." && pwd)

# Pinned tool versions; the Kubernetes release is whatever go.mod requires.
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
# Cluster add-ons from their own projects, built by `go install` into a cache of their own (addons_dir)
# so that bumping one does not rebuild the control plane.
COREDNS_VERSION=v1.15.0
LOCAL_PATH_VERSION=v0.0.37
# Karpenter with its kwok provider (sigs.k8s.io/karpenter/kwok): a real node autoscaler for the simulated
# GPU pools. v1.14.1 is the newest release whose go.mod our Go toolchain accepts (v1.14.3 asks for 1.26.10).
KARPENTER_VERSION=v1.14.1

# Go is not always on PATH for non-login shells.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"
fi

k8s_version() {
    # Matches both `require k8s.io/kubernetes vX` and the line inside a require block.
    awk '$1 == "require" { $1 = "" ; $0 = $0 } $1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 }' \
        "$CLUSTER_DIR/go.mod"
}

# The key changes whenever anything that affects the binaries changes, so a
# fresh clone reuses the cache and a version bump rebuilds into a new dir.
cache_key() {
    {
        cat "$CLUSTER_DIR/go.mod" "$CLUSTER_DIR/go.sum" "$CLUSTER_DIR"/*.go "$CLUSTER_DIR"/pause/*.go
        cat "$CLUSTER_DIR/tools/go.mod" "$CLUSTER_DIR/tools/go.sum"
        echo "kwok=$KWOK_VERSION helm=$HELM_VERSION"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16
}

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/nim-operator/cluster"
# NIM_CLUSTER_BIN points at hand-built binaries when debugging the control plane itself.
bin_dir() { echo "${NIM_CLUSTER_BIN:-$CACHE_ROOT/$(cache_key)/bin}"; }
addons_dir() {
    local key
    key=$(echo "coredns=$COREDNS_VERSION local-path=$LOCAL_PATH_VERSION $(go env GOVERSION GOOS GOARCH)" |
        sha256sum | cut -c1-16)
    echo "$CACHE_ROOT/addons-$key/bin"
}

# Karpenter's binary and the CRDs of its module (copied from the module cache at build time, never
# committed), keyed by its version and the toolchain like the add-ons.
karpenter_dir() {
    local key
    key=$(echo "karpenter=$KARPENTER_VERSION $(go env GOVERSION GOOS GOARCH)" | sha256sum | cut -c1-16)
    echo "$CACHE_ROOT/karpenter-$key"
}

# State of a running cluster lives in the repo so tests find it by path.
STATE="${NIM_CLUSTER_STATE:-$REPO/.cache/cluster}"
ETCD_PORT="${NIM_CLUSTER_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${NIM_CLUSTER_ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${NIM_CLUSTER_APISERVER_PORT:-16443}"
# Karpenter's metrics and health ports (it binds all addresses). By default they follow the apiserver
# port (like LWS's, which take +20 and +21), so light clusters side by side do not collide.
KARPENTER_METRICS_PORT="${NIM_CLUSTER_KARPENTER_METRICS_PORT:-$((APISERVER_PORT + 22))}"
KARPENTER_HEALTH_PORT="${NIM_CLUSTER_KARPENTER_HEALTH_PORT:-$((APISERVER_PORT + 23))}"

# Real nodes (real-nodes.sh): network, images every node needs before any pull, and the DNS address
# the kubelets hand to pods (the kube-dns Service, in front of CoreDNS on the host's bridge address).
# NIM_REAL_NODES=0 starts the control plane and kwok's pools only: no host network, no DNS or storage
# add-ons, nothing that a full cluster holds, so such a cluster can run beside one (with its own
# NIM_CLUSTER_STATE and NIM_CLUSTER_*_PORT). up.sh records the count, so down.sh tears down what was made.
REAL_NODE_COUNT="${NIM_REAL_NODES:-2}"
REAL_BRIDGE=nimbr0
REAL_HOST_IP=10.251.0.1
CLUSTER_DNS_IP=10.96.0.10
# Loopback ports of the add-ons' own health endpoints (up.sh waits on them).
COREDNS_READY_PORT=18181
LOCAL_PATH_HEALTH_PORT=18182
PAUSE_IMAGE=localhost/nim-pause:1
# Built by build.sh next to the binaries, imported into every node's containerd by up.sh.
# Keyed apart from the binaries: a new base package rebuilds the images, not the control plane.
node_images_dir() {
    local key
    key=$({
        cat "$CLUSTER_DIR"/pause/*.go "$CLUSTER_DIR/oci_image.py"
        echo "base=$BASE_PACKAGES"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16)
    echo "$CACHE_ROOT/node-base-$key"
}
# The Debian base image (bookworm's Python 3.11, the same minor as the project's): tini for PID 1,
# libgomp and libnuma for vLLM's CPU kernels (without libnuma its vllm._C fails to load and the engine's
# worker dies at start), ca-certificates for TLS.
# Real nodes that hold the runtime image (comma-separated indexes): e2e NIMServices pin to real-0.
RUNTIME_NODES="${NIM_RUNTIME_NODES:-0}"
# The e2e model hub (olah) runs on the last real node, so its downloads cross the node network.
HUB_NODES="${NIM_HUB_NODES:-$((REAL_NODE_COUNT - 1))}"
BASE_IMAGE=localhost/nim-base:bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates,libgomp1,libnuma1,tini

# --- LeaderWorkerSet (multi-node NIMServices) ---
# The LWS controller (sigs.k8s.io/lws, its own go.mod) and the CRD and webhook YAML that ship in its module,
# built by build.sh into a cache dir of its own (lws_dir), keyed by its version: bumping it rebuilds nothing else.
# The version is the one tests/cluster/lws/go.mod requires; the key covers that module's go.sum too.
LWS_VERSION=$(awk '$1 == "require" && $2 == "sigs.k8s.io/lws" { print $3 }' "$CLUSTER_DIR/lws/go.mod")
lws_dir() {
    local key
    key=$({
        cat "$CLUSTER_DIR/lws/go.mod" "$CLUSTER_DIR/lws/go.sum"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -c1-16)
    echo "$CACHE_ROOT/lws-$key"
}
# The controller serves its admission webhooks on the host (the apiserver calls them by URL, with a serving
# certificate signed by the cluster CA) and its health endpoint on loopback. Derived from the apiserver's port
# so that light clusters side by side (each with its own NIM_CLUSTER_APISERVER_PORT) do not collide.
LWS_WEBHOOK_PORT="${NIM_CLUSTER_LWS_WEBHOOK_PORT:-$((APISERVER_PORT + 20))}"
LWS_HEALTH_PORT="${NIM_CLUSTER_LWS_HEALTH_PORT:-$((APISERVER_PORT + 21))}"
