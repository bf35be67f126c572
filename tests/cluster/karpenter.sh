# Karpenter with its kwok provider beside the static kwok pools; sourced by up.sh (which defines start,
# wait_for, k, PKI and LOGS). Its CRDs come from its module (build.sh copied them next to the binary);
# the GPU NodePools start at zero nodes; the operator's GPU catalogue describes the instance types the
# pools name (tests/cluster/karpenter/).

# karpenter_up: CRDs, catalogue, NodePools, then Karpenter itself; returns once it is ready. up.sh runs it
# in the background while nodes register, and karpenter_wait collects it.
karpenter_up() {
    local t=$EPOCHREALTIME
    wait_for "Karpenter's CRDs" 30 k apply --server-side -f "$KARPENTER_DIR/crds/"
    wait_for "Karpenter's CRDs to be established" 30 \
        k wait --for=condition=Established --timeout=2s crd/nodepools.karpenter.sh crd/nodeclaims.karpenter.sh \
        crd/kwoknodeclasses.karpenter.kwok.sh
    python3 "$CLUSTER_DIR/karpenter/catalogue.py" configmap default | k apply -f - >/dev/null
    wait_for "NodePools" 30 k apply -f "$CLUSTER_DIR/karpenter/nodepools.yaml"
    KUBECONFIG="$PKI/admin.kubeconfig" \
        INSTANCE_TYPES_FILE_PATH="$CLUSTER_DIR/karpenter/instance-types.json" \
        METRICS_PORT="$KARPENTER_METRICS_PORT" HEALTH_PROBE_PORT="$KARPENTER_HEALTH_PORT" \
        DISABLE_LEADER_ELECTION=true LOG_LEVEL=info \
        start karpenter "$KARPENTER_DIR/bin/karpenter"
    wait_for "Karpenter ready" 60 curl -sf --max-time 2 "http://127.0.0.1:$KARPENTER_HEALTH_PORT/readyz"
    awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN { printf "Karpenter up in %.1fs (in the background)\n", b - a }'
}

# karpenter_wait PID: fail the start with karpenter_up's output if it failed, else print it.
karpenter_wait() {
    if ! wait "$1"; then
        echo "starting Karpenter failed:" >&2
        cat "$LOGS/karpenter-up.log" >&2
        exit 1
    fi
    cat "$LOGS/karpenter-up.log"
}
