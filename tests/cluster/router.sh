# The CRDs of the projects whose objects a NIMService's router and KServe platform create: the Gateway API
# (sigs.k8s.io/gateway-api, standard channel), its Inference Extension (InferencePool) and KServe
# (InferenceService). Read from each project's own Go module, as it ships them, by `go mod download` into
# the Go module cache, and copied into a small cache of our own keyed by the versions (nothing committed).
# Beside them, the Inference Extension's reference endpoint picker (lwepp), built from the same module:
# tests run it against the InferencePool a NIMService makes, with the picker's own ServiceAccount.
# Sourced by build.sh (router_build) and up.sh (router_crds_install); needs lib.sh first.

GATEWAY_API_VERSION=v1.6.3 # v1.7.0 needs Go 1.27
INFERENCE_EXTENSION_VERSION=v1.6.2
KSERVE_VERSION=v0.17.0
GATEWAY_API_CRDS="gatewayclasses gateways httproutes grpcroutes referencegrants"

router_dir() {
    local key
    key=$(echo "gateway-api=$GATEWAY_API_VERSION inference=$INFERENCE_EXTENSION_VERSION kserve=$KSERVE_VERSION" \
        "$GATEWAY_API_CRDS $(go env GOVERSION GOOS GOARCH)" | sha256sum | cut -c1-16)
    echo "$CACHE_ROOT/router-$key"
}

# module_dir MODULE@VERSION: where the module cache holds it (downloaded first when it does not).
_module_dir() {
    # Outside any go.mod, so no module of ours is consulted or changed; GOTOOLCHAIN=local so a module's
    # go directive never fetches another toolchain.
    (cd / && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$1") |
        python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(d["Error"]) if "Error" in d else print(d["Dir"])'
}

router_build() {
    local dir tmp start gateway inference kserve name
    dir=$(router_dir)
    if [[ -f $dir/.complete ]]; then
        echo "router and KServe CRDs and lwepp cached in $dir"
        return
    fi
    start=$(date +%s)
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/gateway" "$tmp/kserve"
    gateway=$(_module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
    inference=$(_module_dir "sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_VERSION")
    kserve=$(_module_dir "github.com/kserve/kserve@$KSERVE_VERSION")
    for name in $GATEWAY_API_CRDS; do
        cp "$gateway/config/crd/standard/gateway.networking.k8s.io_$name.yaml" "$tmp/gateway/"
    done
    cp "$inference/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "$tmp/gateway/"
    cp "$kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml" "$tmp/kserve/"
    chmod -R u+w "$tmp"
    echo "router and KServe CRDs fetched in $(( $(date +%s) - start ))s"
    (cd / && GOTOOLCHAIN=local GOFLAGS=-trimpath CGO_ENABLED=0 GOBIN="$tmp/bin" go install -ldflags="-s -w" \
        "sigs.k8s.io/gateway-api-inference-extension/cmd/lwepp@$INFERENCE_EXTENSION_VERSION")
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    echo "router CRDs and lwepp ready in $(( $(date +%s) - start ))s in $dir"
}

# router_crds_install KUBECTL-FUNCTION: the Gateway API and InferencePool CRDs into the cluster, as a cluster
# with a Gateway implementation has them. KServe's are not: tests install them to show a NIMService that
# waited for them recover (tests/operator/test_kserve.py), from $STATE/router/kserve.
router_crds_install() {
    local dir
    dir=$(router_dir)
    [[ -f $dir/.complete ]] || router_build
    ln -sfn "$dir" "$STATE/router"
    "$1" apply --server-side --force-conflicts -f "$dir/gateway/" >/dev/null
    "$1" wait --for=condition=Established --timeout=30s -f "$dir/gateway/" >/dev/null
}
