#!/usr/bin/env bash
# Builds the local control plane (etcd + kube-apiserver + controller-manager +
# scheduler in one multi-call binary), kwok and helm from Go modules into a
# per-user cache keyed by their versions. Re-running is a no-op when the
# binaries for the current versions exist.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN=$(bin_dir)
if [[ -x $BIN/k8s-control-plane && -x $BIN/kwok && -x $BIN/helm ]]; then
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

# The Makefile runs this after creating the venv; tests and the demo call helm from there.
if [[ -d $REPO/.venv/bin ]]; then
    ln -sfn "$BIN/helm" "$REPO/.venv/bin/helm"
fi
