# The LeaderWorkerSet controller in the local cluster: built from its Go module (sigs.k8s.io/lws) by
# build.sh, started by up.sh on the host, stopped by down.sh. Sourced after lib.sh; defines functions only.
#
# The controller runs outside the cluster, so its admission webhooks (which label a group's pods with
# their group and worker index, and check LeaderWorkerSets) are served on loopback with a certificate
# signed by the cluster CA, and registered by URL. The CRDs and webhook definitions are the ones that
# ship in the module, read from the module cache at build time.

# lws_build: the controller binary and its module's YAML into lws_dir, once per version.
lws_build() {
    local dir tmp start moddir
    dir=$(lws_dir)
    if [[ -x $dir/bin/lws-controller && -d $dir/config ]]; then
        echo "LeaderWorkerSet controller cached in $dir"
        return 0
    fi
    start=$(date +%s)
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/bin" "$tmp/config"
    # Built from tests/cluster/lws (a module that pins it), not `go install pkg@version`: see tools.go there.
    (
        cd "$CLUSTER_DIR/lws"
        export GOFLAGS=-trimpath CGO_ENABLED=0
        go build -ldflags="-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION" \
            -o "$tmp/bin/lws-controller" sigs.k8s.io/lws/cmd
    ) || { rm -rf "$tmp"; return 1; }
    moddir=$(cd "$CLUSTER_DIR/lws" && go list -m -f '{{.Dir}}' sigs.k8s.io/lws)
    cp "$moddir"/config/crd/bases/*.yaml "$tmp/config/"
    cp "$moddir/config/webhook/manifests.yaml" "$tmp/config/webhooks.yaml"
    chmod -R u+w "$tmp"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    echo "LeaderWorkerSet controller $LWS_VERSION built in $(($(date +%s) - start))s into $dir"
}

# lws_crds_start: apply the module's CRDs in the background, as soon as the API serves. They hold 2.8 MB of
# schema (pod templates inlined), which the apiserver takes seconds to apply and establish: that overlaps
# with the nodes coming up instead of adding to the start. Needs up.sh's k and $LOGS.
lws_crds_start() {
    local dir
    dir=$(lws_dir)
    [[ -x $dir/bin/lws-controller ]] || lws_build
    k apply --server-side -f "$dir/config/leaderworkerset.x-k8s.io_leaderworkersets.yaml" \
        -f "$dir/config/disaggregatedset.x-k8s.io_disaggregatedsets.yaml" >"$LOGS/lws-crds.log" 2>&1 &
    LWS_CRDS_PID=$!
}

# lws_up: the controller (webhook server on loopback) once its CRDs are established, and its webhook
# registrations. Needs up.sh's start, wait_for, sign, k and $PKI/$STATE, and lws_crds_start before.
# up.sh runs it in the background and collects it with lws_wait.
lws_up() {
    local dir t0 certs
    dir=$(lws_dir)
    t0=$EPOCHREALTIME
    wait_for "LeaderWorkerSet CRDs established" 120 k wait --for=condition=Established --timeout=5s \
        crd/leaderworkersets.leaderworkerset.x-k8s.io crd/disaggregatedsets.disaggregatedset.x-k8s.io
    certs=$PKI/lws-webhook
    mkdir -p "$certs"
    sign lws-webhook "/CN=lws-webhook" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
    # controller-runtime's webhook server reads tls.crt/tls.key from its cert dir.
    cp "$PKI/lws-webhook.crt" "$certs/tls.crt"
    cp "$PKI/lws-webhook.key" "$certs/tls.key"
    cat >"$STATE/lws-config.yaml" <<EOF
apiVersion: config.lws.x-k8s.io/v1alpha1
kind: Configuration
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
webhook:
  host: 127.0.0.1
  port: $LWS_WEBHOOK_PORT
  certDir: $certs
health:
  healthProbeBindAddress: 127.0.0.1:$LWS_HEALTH_PORT
metrics:
  bindAddress: "0"
EOF
    start lws-controller "$dir/bin/lws-controller" --config="$STATE/lws-config.yaml" \
        --kubeconfig="$PKI/admin.kubeconfig" --zap-log-level=info
    wait_for "LeaderWorkerSet controller healthy" 60 curl -sf --max-time 2 "http://127.0.0.1:$LWS_HEALTH_PORT/readyz"
    # Any HTTP answer over TLS verified against the cluster CA will do: the server is up with our cert.
    wait_for "LeaderWorkerSet webhook serving" 30 curl -s --max-time 2 --cacert "$PKI/ca.crt" -o /dev/null \
        "https://127.0.0.1:$LWS_WEBHOOK_PORT/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset"
    k create --dry-run=client -o json -f "$dir/config/webhooks.yaml" |
        python3 "$CLUSTER_DIR/lws_webhooks.py" --ca "$PKI/ca.crt" --url "https://127.0.0.1:$LWS_WEBHOOK_PORT" \
            >"$STATE/lws-webhooks.json"
    k apply --server-side -f "$STATE/lws-webhooks.json" >/dev/null
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "LeaderWorkerSet controller up in %.1fs\n", b - a }'
}

# lws_wait PID: the CRD apply and the background lws_up (PID) both succeeded; else their logs and exit 1.
lws_wait() {
    if ! wait "$LWS_CRDS_PID"; then
        echo "applying the LeaderWorkerSet CRDs failed:" >&2
        cat "$LOGS/lws-crds.log" >&2
        exit 1
    fi
    if ! wait "$1"; then
        echo "starting the LeaderWorkerSet controller failed:" >&2
        cat "$LOGS/lws-up.log" >&2
        exit 1
    fi
    cat "$LOGS/lws-up.log"
}
