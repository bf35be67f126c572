"""Publish the simulated GPUs of the kwok pools through DRA, as NVIDIA's DRA driver would on real nodes.

Reads ``kubectl get nodes -o json`` on stdin and prints a List that ``kubectl apply --server-side`` takes:

- the DeviceClass ``gpu.nvidia.com`` with the selector NVIDIA's chart gives it (its driver, type gpu);
- one ResourceSlice per kwok GPU node (driver ``gpu.nvidia.com``, pool = node), owned by its Node so it
  goes with it, with one device per GPU (``gpu-0`` ...) carrying the attributes the driver's kubelet plugin
  publishes: type, uuid, productName (NVML's name: GPU Feature Discovery's label with spaces), brand,
  architecture, cudaComputeCapability, driverVersion, cudaDriverVersion, and the ``memory`` capacity.

The values come from each node's GFD labels (product, memory in MiB, family, compute capability), so the
slices describe the same GPUs the labels do. The real scheduler allocates from these slices; kwok runs
the pods (no kubelet plugin prepares anything). Standard library only.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

DRIVER = "gpu.nvidia.com"
RESOURCE_API = "resource.k8s.io/v1"
#: What NVML reports for the simulated GPUs' driver, as the DRA driver publishes it (semver).
DRIVER_VERSION = "580.95.5"
CUDA_DRIVER_VERSION = "13.0.0"
#: GFD's family label -> NVML's architecture name.
ARCHITECTURES = {"hopper": "Hopper", "ada-lovelace": "Ada Lovelace", "ampere": "Ampere", "blackwell": "Blackwell"}


def device_class() -> dict[str, Any]:
    return {
        "apiVersion": RESOURCE_API,
        "kind": "DeviceClass",
        "metadata": {"name": DRIVER},
        "spec": {
            "selectors": [
                {"cel": {"expression": f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'"}}
            ]
        },
    }


def _string(value: str) -> dict[str, str]:
    return {"string": value}


def _version(value: str) -> dict[str, str]:
    return {"version": value}


def gpu_devices(node: dict[str, Any]) -> list[dict[str, Any]]:
    labels = node["metadata"].get("labels") or {}
    count = int(labels.get("nvidia.com/gpu.count", "0"))
    product = labels["nvidia.com/gpu.product"].replace("-", " ")
    family = labels.get("nvidia.com/gpu.family", "")
    major = labels.get("nvidia.com/gpu.compute.major", "0")
    minor = labels.get("nvidia.com/gpu.compute.minor", "0")
    devices = []
    name = node["metadata"]["name"]
    for index in range(count):
        # Stable per node and index, so re-publishing changes nothing.
        gpu_uuid = f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}/{index}')}"
        devices.append(
            {
                "name": f"gpu-{index}",
                "attributes": {
                    "type": _string("gpu"),
                    "uuid": _string(gpu_uuid),
                    "productName": _string(product),
                    "brand": _string("Nvidia"),
                    "architecture": _string(ARCHITECTURES.get(family, family.title())),
                    "cudaComputeCapability": _version(f"{major}.{minor}.0"),
                    "driverVersion": _version(DRIVER_VERSION),
                    "cudaDriverVersion": _version(CUDA_DRIVER_VERSION),
                },
                "capacity": {"memory": {"value": f"{labels.get('nvidia.com/gpu.memory', '0')}Mi"}},
            }
        )
    return devices


def resource_slice(node: dict[str, Any]) -> dict[str, Any]:
    name = node["metadata"]["name"]
    return {
        "apiVersion": RESOURCE_API,
        "kind": "ResourceSlice",
        "metadata": {
            "name": f"{name}-{DRIVER}",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}],
        },
        "spec": {
            "driver": DRIVER,
            "nodeName": name,
            "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
            "devices": gpu_devices(node),
        },
    }


def main() -> None:
    nodes = json.load(sys.stdin)["items"]
    gpu_nodes = [
        n
        for n in nodes
        if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"
        and (n["metadata"].get("labels") or {}).get("nvidia.com/gpu.product")
    ]
    items = [device_class()] + [resource_slice(n) for n in gpu_nodes]
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout)


if __name__ == "__main__":
    main()
