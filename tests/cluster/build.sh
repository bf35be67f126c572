#!/usr/bin/env bash
# Builds the local control plane and the real nodes' kubelet and kube-proxy
# (etcd + kube-apiserver + controller-manager + scheduler + kubelet + kube-proxy
# in one multi-call binary), kwok, helm and the add-ons (CoreDNS, local-path-provisioner) from Go
# modules, and the images every real node needs, into a per-user cache keyed by their versions. Re-running is a no-op when the
# binaries for the current versions exist.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_DIR/lws.sh"

"$CLUSTER_DIR/host-deps.sh"

BIN=$(bin_dir)
if [[ -x $BIN/k8s-control-plane && -x $BIN/kwok && -x $BIN/helm && -x $BIN/buildkitd ]]; then
    echo "cluster binaries cached in $BIN"
else
    K8S_VERSION=$(k8s_version)
    echo "building Kubernetes $K8S_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION into $BIN"
    start=$(date +%s)
    # Build into a scratch dir and rename, so an interrupted build never looks cached.
    TMP="$BIN.tmp.$$"
    rm -rf "$TMP"
    mkdir -p "$TMP"
    trap 'rm -rf "$TMP"' EXIT
    # -trimpath and -s -w shrink the binaries; -mod is left at its default
    # because `go install pkg@version` rejects it.
    export GOFLAGS=-trimpath CGO_ENABLED=0
    minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    # Without these the apiserver reports v0.0.0-master, which breaks kubeVersion checks in charts.
    kv=k8s.io/component-base/version
    cv=k8s.io/client-go/pkg/version
    k8s_ldflags="-s -w -X $kv.gitVersion=$K8S_VERSION -X $kv.gitMajor=1 -X $kv.gitMinor=$minor"
    k8s_ldflags+=" -X $kv.gitTreeState=clean -X $cv.gitVersion=$K8S_VERSION -X $cv.gitMajor=1"
    k8s_ldflags+=" -X $cv.gitMinor=$minor -X $cv.gitTreeState=clean"
    (cd "$CLUSTER_DIR" && go build -ldflags="$k8s_ldflags" -o "$TMP/k8s-control-plane" .)
    (cd "$CLUSTER_DIR" && go build -ldflags="-s -w" -o "$TMP/pause" ./pause)
    (cd "$CLUSTER_DIR/tools" && go build -ldflags="-s -w" -o "$TMP/" \
        github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl)
    # kwok and helm keep their own go.mod (their k8s.io versions differ from ours).
    GOBIN="$TMP" go install -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    GOBIN="$TMP" go install \
        -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    rm -rf "$BIN"
    mv "$TMP" "$BIN"
    trap - EXIT
    echo "cold build took $(( $(date +%s) - start ))s"
fi

# CoreDNS and rancher's local-path-provisioner, each from its own module (their own go.mod pins
# their k8s.io versions), built side by side: they share no packages worth waiting on each other for.
ADDONS=$(addons_dir)
if [[ -x $ADDONS/coredns && -x $ADDONS/local-path-provisioner ]]; then
    echo "cluster add-ons cached in $ADDONS"
else
    start=$(date +%s)
    TMP="$ADDONS.tmp.$$"
    rm -rf "$TMP"
    mkdir -p "$TMP"
    trap 'rm -rf "$TMP"' EXIT
    export GOFLAGS=-trimpath CGO_ENABLED=0
    GOBIN="$TMP" go install -ldflags="-s -w" "github.com/coredns/coredns@$COREDNS_VERSION" &
    dns=$!
    GOBIN="$TMP" go install -ldflags="-s -w" "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION" &
    lpp=$!
    wait "$dns"
    wait "$lpp"
    rm -rf "$ADDONS"
    mv "$TMP" "$ADDONS"
    trap - EXIT
    echo "cluster add-ons built in $(( $(date +%s) - start ))s"
fi

# The LeaderWorkerSet controller (multi-node NIMServices), in a cache dir of its own keyed by its version.
lws_build

# Karpenter with its kwok provider, from its own module (its go.mod pins its k8s.io versions), and the
# CRDs that module ships, copied beside the binary so up.sh needs nothing else from the module cache.
KARPENTER=$(karpenter_dir)
if [[ -x $KARPENTER/bin/karpenter && -d $KARPENTER/crds ]]; then
    echo "Karpenter $KARPENTER_VERSION cached in $KARPENTER"
else
    start=$(date +%s)
    TMP="$KARPENTER.tmp.$$"
    rm -rf "$TMP"
    mkdir -p "$TMP/bin" "$TMP/crds"
    trap 'rm -rf "$TMP"' EXIT
    export GOFLAGS=-trimpath CGO_ENABLED=0
    # The kwok provider's main package is named after its directory; it is Karpenter itself.
    GOBIN="$TMP/bin" go install -ldflags="-s -w -X sigs.k8s.io/karpenter/pkg/operator.Version=$KARPENTER_VERSION" \
        "sigs.k8s.io/karpenter/kwok@$KARPENTER_VERSION"
    mv "$TMP/bin/kwok" "$TMP/bin/karpenter"
    module=$(go env GOMODCACHE)/sigs.k8s.io/karpenter@$KARPENTER_VERSION
    cp "$module"/pkg/apis/crds/*.yaml "$module"/kwok/apis/crds/*.yaml "$TMP/crds/"
    chmod -R u+w "$TMP/crds"
    rm -rf "$KARPENTER"
    mv "$TMP" "$KARPENTER"
    trap - EXIT
    echo "Karpenter built in $(( $(date +%s) - start ))s"
fi

# Images the real nodes need before they can run anything: the pod sandbox (pause) and a Debian
# base made from Debian's packages by mmdebstrap (no registry serves images here).
IMAGES=$(node_images_dir)
if [[ -f $IMAGES/nim-pause.tar && -f $IMAGES/nim-base.tar ]]; then
    echo "node images cached in $IMAGES"
else
    start=$(date +%s)
    TMP="$IMAGES.tmp.$$"
    rm -rf "$TMP"
    mkdir -p "$TMP"
    trap 'rm -rf "$TMP"' EXIT
    python3 "$CLUSTER_DIR/oci_image.py" --name "$PAUSE_IMAGE" --file "pause=$BIN/pause" \
        --entrypoint /pause -o "$TMP/nim-pause.tar"
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" --skip=output/dev \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/var/cache/apt/*' \
        bookworm "$TMP/base-rootfs.tar"
    python3 "$CLUSTER_DIR/oci_image.py" --name "$BASE_IMAGE" --rootfs "$TMP/base-rootfs.tar" \
        --cmd /bin/bash -o "$TMP/nim-base.tar"
    rm -f "$TMP/base-rootfs.tar"
    rm -rf "$IMAGES"
    mv "$TMP" "$IMAGES"
    trap - EXIT
    echo "node images built in $(( $(date +%s) - start ))s"
fi

# The CRDs of the router's and KServe's objects and the reference endpoint picker, from their projects'
# Go modules (router.sh).
source "$CLUSTER_DIR/router.sh"
router_build

# The Makefile runs this after creating the venv; tests and the demo call helm from there.
if [[ -d $REPO/.venv/bin ]]; then
    ln -sfn "$BIN/helm" "$REPO/.venv/bin/helm"
fi
