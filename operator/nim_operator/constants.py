"""Names and defaults that more than one module needs, defined once."""

from __future__ import annotations

GROUP = "apps.nimoperator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NIMService"
PLURAL = "nimservices"
SINGULAR = "nimservice"
SHORT_NAMES = ("nimsvc",)
CACHE_KIND = "NIMCache"
CACHE_PLURAL = "nimcaches"
CACHE_SINGULAR = "nimcache"
CACHE_SHORT_NAMES = ("nimc",)

FIELD_MANAGER = "nim-operator"
#: Owns fields the operator hands to another controller (replicas, to an HPA) for the moment of the handover.
HANDOVER_FIELD_MANAGER = "nim-operator-handover"

# Labels put on every child; the first two form the (immutable) pod selector.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "nim-operator"
#: On every child: the hash of the desired body applied, so a restart knows what it applied without re-applying.
HASH_ANNOTATION = "nimoperator.dev/desired-hash"
#: On the pods of a multi-node group: leader or worker (the Service selects leaders only).
LABEL_ROLE = "nimoperator.dev/role"
#: On a NIMCache's claim, Job and pods: which NIMCache they belong to.
LABEL_NIMCACHE = "nimoperator.dev/nimcache"
#: On a NIMCache's Job: the hash of its (immutable) spec, so a changed source replaces the Job.
ANNOTATION_JOB_HASH = "nimoperator.dev/job-hash"

# GPU Feature Discovery labels and the device plugin's resource.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_FAMILY_LABEL = "nvidia.com/gpu.family"
GPU_TAINT_KEY = "nvidia.com/gpu"
#: What every GPU pod tolerates (unless the user tolerates the GPU taint in their own words).
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
GPU_COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
GPU_COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
#: Time-slicing: how many pods share each GPU (allocatable nvidia.com/gpu counts the shares).
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
#: MIG: "single" makes each nvidia.com/gpu a MIG slice (its product label names the slice).
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
#: Karpenter: a pod with this annotation keeps its node from voluntary disruption (consolidation, drift);
#: GPU pods get it (a moved replica reloads its model for minutes).
DO_NOT_DISRUPT_ANNOTATION = "karpenter.sh/do-not-disrupt"
#: The runtime's context cap, which sizes the KV cache a profile needs.
ENV_MAX_MODEL_LEN = "NIM_MAX_MODEL_LEN"
#: The operator's own namespace (the chart sets it): GPU catalogue ConfigMaps are read there only.
ENV_OPERATOR_NAMESPACE = "NIM_OPERATOR_NAMESPACE"
#: Label of the ConfigMaps that hold the GPU catalogue (instance types, node groups) for placement.
GPU_CATALOG_LABEL = "nimoperator.dev/gpu-catalog"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"

# The runtime contract.
#: The NIM container of a NIMService's pods (init and sidecar containers may not take its name).
NIM_CONTAINER = "nim"
API_PORT_NAME = "api"
#: NVIDIA's names for the optional ports of spec.expose.service (gRPC, a separate metrics endpoint).
GRPC_PORT_NAME = "grpc"
METRICS_PORT_NAME = "metrics"
DEFAULT_PORT = 8000
MODEL_STORE = "/model-store"
LIVE_PATH = "/v1/health/live"
READY_PATH = "/v1/health/ready"
METRICS_PATH = "/v1/metrics"

ENV_CACHE_PATH = "NIM_CACHE_PATH"
ENV_SERVER_PORT = "NIM_SERVER_PORT"
ENV_MODEL_PROFILE = "NIM_MODEL_PROFILE"
ENV_MODEL_NAME = "NIM_MODEL_NAME"
ENV_MODEL_PATH = "NIM_MODEL_PATH"
ENV_SERVED_MODEL_NAME = "NIM_SERVED_MODEL_NAME"
ENV_JSONL_LOGGING = "NIM_JSONL_LOGGING"
#: Seconds the runtime lets in-flight requests (streams included) finish after SIGTERM (its default: 30).
ENV_DRAIN_TIMEOUT = "NIM_DRAIN_TIMEOUT"
SECRET_KEYS = ("NGC_API_KEY", "HF_TOKEN")
#: The image of NIMCache download Jobs for hub and catalog sources (the chart sets it to its runtime image).
ENV_RUNTIME_IMAGE = "NIM_OPERATOR_RUNTIME_IMAGE"
ENV_RUNTIME_PULL_SECRETS = "NIM_OPERATOR_RUNTIME_PULL_SECRETS"
DEFAULT_RUNTIME_IMAGE = "ghcr.io/nim-operator/nim-runtime:0.1.0"
#: Seconds between reads of a running download's progress (a bounded tail of its pod's log).
ENV_PROGRESS_INTERVAL = "NIM_OPERATOR_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL_S = 5.0

DEFAULT_REPLICAS = 1
#: Requests of a GPU pod per GPU when the spec gives none (a 1-GPU A10G node has 4 vCPUs and 16 GiB).
CPU_PER_GPU = 2
MEMORY_GIB_PER_GPU = 8
DEFAULT_USER_ID = 1000
DEFAULT_GROUP_ID = 2000

# Pod shutdown: preStop sleep, then SIGTERM starts the runtime's drain, then a margin for uvicorn to close
# connections and the engine to exit, all inside the pod's terminationGracePeriodSeconds.
DEFAULT_TERMINATION_GRACE_SECONDS = 120
#: The pod keeps serving this long after deletion while endpoints, kube-proxy and ingresses drop it.
PRE_STOP_SLEEP_SECONDS = 10
#: Kept free after the drain for connection close and engine teardown before the kubelet's SIGKILL.
SHUTDOWN_MARGIN_SECONDS = 15

# Default probes: (path, initialDelaySeconds, periodSeconds, timeoutSeconds, failureThreshold).
LIVENESS_PROBE = (LIVE_PATH, 15, 10, 1, 3)
READINESS_PROBE = (READY_PATH, 15, 10, 1, 3)
STARTUP_PROBE = (READY_PATH, 30, 10, 1, 120)
#: A Deployment's rollout may take this long before Kubernetes calls it stuck (ProgressDeadlineExceeded):
#: a GPU node's boot by an autoscaler (up to 10 min), a multi-GB image pull (up to 15 min) and the startup
#: probe's budget for the load (30 s + 120 x 10 s), rounded up. Kubernetes' default is 600 s.
PROGRESS_DEADLINE_SECONDS = 3600

# The runtime's queue metric, for the default HPA target (served through a metrics adapter).
DEFAULT_HPA_METRIC = "nim_runtime_queue_depth"
DEFAULT_HPA_QUEUE_TARGET = "4"
