# Sourced by up.sh and down.sh (it uses their start, wait_for, sign and kubeconfig helpers).
# Real worker nodes beside the kwok pools: each is a network namespace with its
# own containerd (Debian's, with runc), kubelet and kube-proxy (nftables), so
# pods run for real, Services route between nodes and `kubectl logs/exec` work.
#
#   network_up   bridge + one netns per node (before the apiserver, which advertises on it)
#   nodes_up     certificates, containerd, kubelet, kube-proxy
#   nodes_down   stops them, removes pods, mounts and network state, restores host sysctls
#
# Layout: the host is 10.251.0.1 on bridge nimbr0 (the apiserver's advertise address, so the
# `kubernetes` Service reaches it); node N is 10.251.0.(11+N) in netns nim-real-N with pods in
# 10.245.N.0/24. Routes between the pod ranges are static (host-gw style): no overlay, no iptables.
# Images persist across clusters under the cache (containerd roots); everything else is cluster state.
NODES_STATE=$STATE/nodes
IMAGES_CACHE=$CACHE_ROOT/node-images
# What the kubelet and kube-proxy set on the host; saved before the first start, restored by `down`.
HOST_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

node_name() { echo "real-$1"; }
node_ip() { echo "10.251.0.$((11 + $1))"; }
pod_cidr() { echo "10.245.$1.0/24"; }
netns() { echo "nim-real-$1"; }
node_dir() { echo "$NODES_STATE/real-$1"; }
sock() { echo "$(node_dir "$1")/containerd.sock"; }

network_up() {
    if ! ip link show "$REAL_BRIDGE" >/dev/null 2>&1; then
        ip link add "$REAL_BRIDGE" type bridge
        ip addr add "$REAL_HOST_IP/24" dev "$REAL_BRIDGE"
        ip link set "$REAL_BRIDGE" up
    fi
    local i j ns
    for ((i = 0; i < REAL_NODE_COUNT; i++)); do
        ns=$(netns "$i")
        [[ -e /run/netns/$ns ]] && continue
        ip netns add "$ns"
        ip link add "nimveth$i" type veth peer name eth0 netns "$ns"
        ip link set "nimveth$i" master "$REAL_BRIDGE" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add default via "$REAL_HOST_IP"
        # Both are per network namespace: nothing on the host changes.
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
        ip netns exec "$ns" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
        ip route replace "$(pod_cidr "$i")" via "$(node_ip "$i")" dev "$REAL_BRIDGE"
    done
    for ((i = 0; i < REAL_NODE_COUNT; i++)); do
        for ((j = 0; j < REAL_NODE_COUNT; j++)); do
            ((i == j)) || ip -n "$(netns "$i")" route replace "$(pod_cidr "$j")" via "$(node_ip "$j")"
        done
    done
}

save_host_sysctls() {
    [[ -f $STATE/host-sysctls ]] && return
    local key
    for key in "${HOST_SYSCTLS[@]}"; do echo "$key=$(sysctl -n "$key")"; done >"$STATE/host-sysctls"
}

restore_host_sysctls() {
    [[ -f $STATE/host-sysctls ]] || return 0
    local line
    while read -r line; do sysctl -qw "$line" || true; done <"$STATE/host-sysctls"
    rm -f "$STATE/host-sysctls"
}

# sign_node_certs I: the kubelet's client identity (the Node authorizer keys on system:node:NAME).
sign_node_certs() {
    local i=$1 name dir
    name=$(node_name "$i")
    dir=$(node_dir "$i")
    sign "$name" "/O=system:nodes/CN=system:node:$name" "extendedKeyUsage=clientAuth"
    kubeconfig "$name" "$dir/kubelet.kubeconfig" "https://$REAL_HOST_IP:$APISERVER_PORT"
    # kube-proxy as the identity the bootstrap policy binds system:node-proxier to.
    [[ -f $PKI/kube-proxy.crt ]] || sign kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
    kubeconfig kube-proxy "$dir/kube-proxy.kubeconfig" "https://$REAL_HOST_IP:$APISERVER_PORT"
}

write_configs() {
    local i=$1 dir root
    dir=$(node_dir "$i")
    root=$IMAGES_CACHE/$(node_name "$i")
    mkdir -p "$dir/cni" "$dir/kubelet" "$root"
    cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$root/containerd"
state = "$dir/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$(sock "$i")"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE every sandbox would fail to lower its oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.internal.v1.opt"]
  path = "$root/opt"
EOF
    cat >"$dir/cni/10-bridge.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "$(node_name "$i")", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/ipam",
            "ranges": [[{"subnet": "$(pod_cidr "$i")"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
]}
EOF
    cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host has hybrid cgroup v1 and no systemd: kubelet 1.36 refuses v1 unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
address: $(node_ip "$i")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: cluster.local
registerWithTaints:
- {key: nimoperator.dev/real-node, value: "true", effect: NoSchedule}
# The disk is shared with everything else on the machine: never evict or collect images over it. Under
# disk pressure the kubelet deletes every image no container uses (the pause and base images too, which
# no registry can give back), so the disk signals are off ("0%" disables a threshold); a full disk then
# fails loudly instead of quietly emptying the nodes.
evictionHard: {memory.available: 100Mi, nodefs.available: "0%", nodefs.inodesFree: "0%",
  imagefs.available: "0%", imagefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# One directory per node: in the shared default (/var/log/pods) each kubelet's log GC deletes the other
# node's pod logs as those of pods it does not know, and kubectl logs comes back empty.
podLogsDir: $dir/pod-logs
nodeStatusReportFrequency: 10s
EOF
    cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $(node_name "$i")
bindAddress: $(node_ip "$i")
clusterCIDR: 10.245.0.0/16
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
# Zeros leave the host's conntrack settings as they are (kube-proxy would raise them).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
}

import_images() {
    local i=$1 archive
    for archive in "$NODE_IMAGES_DIR"/*.tar; do
        [[ -e $archive ]] || continue
        ctr --address "$(sock "$i")" -n k8s.io images import "$archive" >/dev/null
    done
}

nodes_up() {
    local i dir name
    save_host_sysctls
    # up.sh creates its keys under umask 077; containerd and the kubelet must not inherit it, or
    # every image's root directory and every volume would be closed to non-root containers.
    umask 022
    for ((i = 0; i < REAL_NODE_COUNT; i++)); do
        dir=$(node_dir "$i")
        name=$(node_name "$i")
        mkdir -p "$dir"
        sign_node_certs "$i"
        write_configs "$i"
        start "containerd-$name" nsenter --net="/run/netns/$(netns "$i")" containerd --config "$dir/containerd.toml"
    done
    for ((i = 0; i < REAL_NODE_COUNT; i++)); do
        wait_for "containerd of $(node_name "$i")" 30 ctr --address "$(sock "$i")" version
        import_images "$i"
    done
    for ((i = 0; i < REAL_NODE_COUNT; i++)); do
        dir=$(node_dir "$i")
        name=$(node_name "$i")
        start "kubelet-$name" nsenter --net="/run/netns/$(netns "$i")" "$CP" kubelet \
            --config="$dir/kubelet.yaml" \
            --kubeconfig="$dir/kubelet.kubeconfig" \
            --container-runtime-endpoint="unix://$(sock "$i")" \
            --root-dir="$dir/kubelet" \
            --cert-dir="$dir/kubelet/pki" \
            --node-ip="$(node_ip "$i")" \
            --hostname-override="$name" \
            --node-labels="nimoperator.dev/real-node=true"
        start "kube-proxy-$name" nsenter --net="/run/netns/$(netns "$i")" "$CP" kube-proxy --config="$dir/kube-proxy.yaml"
    done
}

# Pods first (their shims hold mounts and netns), then the daemons, then what they left behind.
nodes_down() {
    local i name dir ns c
    for ((i = 0; i < REAL_NODE_COUNT; i++)); do
        name=$(node_name "$i")
        for c in "kube-proxy-$name" "kubelet-$name"; do stop_pid "$c"; done
        if [[ -S $(sock "$i") ]]; then
            for c in $(ctr --address "$(sock "$i")" -n k8s.io tasks list -q 2>/dev/null); do
                ctr --address "$(sock "$i")" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
            done
            for c in $(ctr --address "$(sock "$i")" -n k8s.io containers list -q 2>/dev/null); do
                for _ in 1 2 3 4 5; do
                    ctr --address "$(sock "$i")" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
                    ctr --address "$(sock "$i")" -n k8s.io containers delete "$c" >/dev/null 2>&1 && break
                    sleep 0.2
                done
            done
        fi
        stop_pid "containerd-$name"
    done
    # The kubelets' links in /var/log/containers (a fixed path) to the pod logs under the state dir.
    find /var/log/containers -maxdepth 1 -type l -lname "$NODES_STATE/*" -delete 2>/dev/null || true
    # Mounts the kubelet (volumes) and containerd (rootfs, shm) made under the state dirs.
    for dir in "$NODES_STATE" "$IMAGES_CACHE"; do
        findmnt -rn -o TARGET | awk -v p="$dir/" 'index($0, p) == 1' | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done
    done
    # Pod network namespaces: only these nodes' containerd makes cni-* namespaces on this machine.
    if [[ -d $NODES_STATE ]]; then
        for ns in /run/netns/cni-*; do [[ -e $ns ]] && ip netns delete "${ns##*/}" 2>/dev/null || true; done
    fi
    for ((i = 0; i < REAL_NODE_COUNT; i++)); do
        ip route del "$(pod_cidr "$i")" 2>/dev/null || true
        ip link del "nimveth$i" 2>/dev/null || true
        [[ -e /run/netns/$(netns "$i") ]] && ip netns delete "$(netns "$i")"
    done
    ip link del "$REAL_BRIDGE" 2>/dev/null || true
    restore_host_sysctls
}
