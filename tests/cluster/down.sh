#!/usr/bin/env bash
# Stops the processes up.sh started (by their pid files, consumers first so
# nothing logs errors about a vanished apiserver), tears down the real nodes'
# pods, mounts and network, restores the host settings they changed, and
# removes the state dir.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_DIR/real-nodes.sh"

PIDS=$STATE/pids
# What up.sh made, not what the caller's environment says now.
if [[ -f $STATE/real-nodes ]]; then
    REAL_NODE_COUNT=$(cat "$STATE/real-nodes")
fi

# ours PID: true if PID still runs one of our binaries; guards against a
# recycled pid belonging to something else.
ours() {
    local argv0
    argv0=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | head -n1) || return 1
    [[ $argv0 == */k8s-control-plane || $argv0 == */kwok || $argv0 == */lws-controller || $argv0 == */karpenter || $argv0 == */coredns || $argv0 == */local-path-provisioner || $argv0 == */buildkitd || $argv0 == containerd || $argv0 == */containerd ]]
}

stopped=()
# stop_pid NAME: TERM, up to 10 s for a clean exit, then KILL.
stop_pid() {
    local f=$PIDS/$1.pid pid
    [[ -f $f ]] || return 0
    pid=$(cat "$f")
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do ours "$pid" || break; sleep 0.2; done
        if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        stopped+=("$1")
    fi
    rm -f "$f"
}

stop_pid buildkitd
# Karpenter first: it would react to the nodes and pods that the teardown below makes disappear.
stop_pid karpenter
stop_pid lws-controller
stop_pid local-path-provisioner
stop_pid coredns
# A cluster without real nodes made no host network, mounts or sysctl changes: a full cluster running
# beside it keeps its own.
if ((REAL_NODE_COUNT > 0)); then
    nodes_down
fi
for c in kwok scheduler controller-manager apiserver etcd; do stop_pid "$c"; done

rm -rf "$STATE"
echo "cluster down${stopped:+ (stopped ${stopped[*]})}"
