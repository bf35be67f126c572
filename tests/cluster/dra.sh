# Dynamic Resource Allocation in the local cluster: the DeviceClass of NVIDIA's GPU driver and one
# ResourceSlice per kwok GPU node (dra_slices.py), so the real scheduler allocates the simulated GPUs to
# claims. Sourced by up.sh after lib.sh; defines functions only. Slices are owned by their Node.
# DynamicResourceAllocation and DRAPrioritizedList (firstAvailable) are GA in Kubernetes 1.36: no gates.

# dra_up: publish the DeviceClass and the slices. Needs up.sh's k and $STATE.
dra_up() {
    k get nodes -o json | python3 "$CLUSTER_DIR/dra_slices.py" >"$STATE/dra.json"
    k apply --server-side -f "$STATE/dra.json" >/dev/null
}
