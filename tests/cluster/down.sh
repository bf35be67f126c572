#!/usr/bin/env bash
# Stops the processes up.sh started (by their pid files, consumers first so
# nothing logs errors about a vanished apiserver) and removes the state dir.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PIDS=$STATE/pids

# ours PID: true if PID still runs one of our binaries; guards against a
# recycled pid belonging to something else.
ours() {
    local argv0
    argv0=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | head -n1) || return 1
    [[ $argv0 == */k8s-control-plane || $argv0 == */kwok ]]
}

stopped=()
for c in kwok scheduler controller-manager apiserver etcd; do
    f=$PIDS/$c.pid
    [[ -f $f ]] || continue
    pid=$(cat "$f")
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        # Up to 10 s for a clean exit, then force it.
        for _ in $(seq 50); do ours "$pid" || break; sleep 0.2; done
        if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        stopped+=("$c")
    fi
done

rm -rf "$STATE"
echo "cluster down${stopped:+ (stopped ${stopped[*]})}"
