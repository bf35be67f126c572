"""The NIMService API as typed models: the one source of truth for the CRD schema.

Field names follow NVIDIA's NIM operator so its manifests work after changing ``apiVersion``.
Kubernetes objects we only pass through (affinity, tolerations, probes ...) stay free-form here and are
validated by the API server where they land, in the Deployment.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from nim_operator import constants as c
from nim_operator.api.common import (
    CONTAINER_RULES,
    ContainerSpec,
    Image,
    extra_containers,
    k8s_object,
    k8s_objects,
    quantities,
    quantity,
    rules,
)
from nim_operator.api.common import Model as _Model
from nim_operator.api.dra import DRAResource
from nim_operator.api.expose import SPEC_RULES as ROUTER_RULES
from nim_operator.api.expose import Expose, Router
from nim_operator.api.kserve import SPEC_RULES as KSERVE_RULES
from nim_operator.api.multinode import MultiNode
from nim_runtime.profiles.manifest import Engine, Precision

PlatformType = Literal["standalone", "kserve"]


class Resources(_Model):
    limits: dict[str, int | str] | None = quantities("Limits by resource name.")
    requests: dict[str, int | str] | None = quantities("Requests by resource name.")
    claims: list[dict[str, Any]] | None = Field(
        default=None,
        description="Dynamic resource claims (core/v1 ResourceClaim references).",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


class NIMCacheRef(_Model):
    name: str = Field(min_length=1, description="NIMCache whose claim (its status.pvc) holds the model.")
    profile: str | None = Field(
        default=None,
        description="The profile to serve, one the cache holds (its status.profiles); pins it like spec.profile "
        "and sets NIM_MODEL_PROFILE. Empty: chosen as without a cache.",
    )


class PVC(_Model):
    model_config = rules(
        (
            "!has(self.create) || !self.create || has(self.size)",
            "spec.storage.pvc.create needs spec.storage.pvc.size",
        )
    )

    create: bool = Field(default=False, description="Create the PVC (named <NIMService>-pvc unless name is set).")
    name: str | None = Field(default=None, description="Existing PVC to use, or the name of the one to create.")
    storage_class: str | None = Field(default=None, description="Storage class of a created PVC.")
    size: str | None = Field(default=None, description="Size of a created PVC, e.g. 50Gi.")
    volume_access_mode: str | None = Field(default=None, description="Access mode of a created PVC.")
    sub_path: str | None = Field(default=None, description="Sub-path of the volume mounted at /model-store.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of a created PVC.")


class EmptyDir(_Model):
    size_limit: int | str | None = quantity("Size limit of the emptyDir model store, e.g. 50Gi.")


class Storage(_Model):
    model_config = rules(
        (
            "[has(self.nimCache), has(self.pvc), has(self.hostPath), has(self.emptyDir)].filter(x, x).size() <= 1",
            "spec.storage takes one source: nimCache, pvc, hostPath or emptyDir",
        )
    )

    nim_cache: NIMCacheRef | None = Field(default=None, description="Use a NIMCache's volume.")
    pvc: PVC | None = Field(default=None, description="Use (or create) a PersistentVolumeClaim.")
    host_path: str | None = Field(default=None, description="Use a node path (single-node setups only).")
    empty_dir: EmptyDir | None = Field(default=None, description="Use a scratch volume (downloads on every start).")
    shared_memory_size_limit: int | str | None = quantity("Size limit of /dev/shm, e.g. 16Gi.")
    read_only: bool = Field(default=False, description="Mount the model store read-only.")


class HPA(_Model):
    model_config = rules(
        (
            "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            "spec.scale.hpa.minReplicas must not exceed maxReplicas",
        )
    )

    min_replicas: int = Field(default=1, ge=1, description="Lower bound of replicas.")
    max_replicas: int = Field(ge=1, description="Upper bound of replicas.")
    metrics: list[dict[str, Any]] = k8s_objects(
        f"autoscaling/v2 metrics; default: pods metric {c.DEFAULT_HPA_METRIC} averaging "
        f"{c.DEFAULT_HPA_QUEUE_TARGET} waiting requests."
    )
    behavior: dict[str, Any] | None = k8s_object("autoscaling/v2 scaling behavior.")


_INT_OR_PERCENT = "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')"


class RollingUpdate(_Model):
    max_surge: int | str | None = Field(
        default=None,
        description="Pods above the replica count during a rollout (a number or a percentage).",
        json_schema_extra={
            "maxLength": 8,
            "x-kubernetes-validations": [{"rule": _INT_OR_PERCENT, "message": "a number >= 0 or a percentage"}],
        },
    )
    max_unavailable: int | str | None = Field(
        default=None,
        description="Pods below the replica count during a rollout (a number or a percentage).",
        json_schema_extra={
            "maxLength": 8,
            "x-kubernetes-validations": [{"rule": _INT_OR_PERCENT, "message": "a number >= 0 or a percentage"}],
        },
    )


class Strategy(_Model):
    """How a change rolls out; the Deployment's own strategy fields."""

    model_config = rules(
        (
            "!has(self.type) || self.type != 'Recreate' || !has(self.rollingUpdate)",
            "spec.strategy.rollingUpdate is only for type RollingUpdate",
        )
    )

    type: Literal["RollingUpdate", "Recreate"] = Field(
        default="RollingUpdate", description="RollingUpdate (default) or Recreate (all pods down, then up)."
    )
    rolling_update: RollingUpdate | None = Field(default=None, description="Surge and unavailability bounds.")


class Scale(_Model):
    model_config = rules(
        (
            "!has(self.enabled) || !self.enabled || (has(self.hpa) && has(self.hpa.maxReplicas))",
            "spec.scale.enabled needs spec.scale.hpa.maxReplicas",
        )
    )

    enabled: bool = Field(
        default=False,
        description="Create a HorizontalPodAutoscaler; it owns the replica count, and spec.replicas is ignored "
        "(the FieldsIgnored condition says so).",
    )
    hpa: HPA | None = Field(default=None, description="Autoscaler bounds and metrics.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the autoscaler.")


class ServiceMonitorSpec(_Model):
    additional_labels: dict[str, str] = Field(default_factory=dict, description="Labels for Prometheus to select it.")
    annotations: dict[str, str] = Field(default_factory=dict, description="ServiceMonitor annotations.")
    interval: str | None = Field(default=None, description="Scrape interval, e.g. 30s.")
    scrape_timeout: str | None = Field(default=None, description="Scrape timeout, e.g. 10s.")


class Metrics(_Model):
    enabled: bool = Field(default=False, description="Create a ServiceMonitor scraping /v1/metrics.")
    service_monitor: ServiceMonitorSpec = Field(
        default_factory=ServiceMonitorSpec, description="ServiceMonitor settings."
    )


class NetworkPolicySpec(_Model):
    enabled: bool = Field(default=False, description="Create a NetworkPolicy admitting only the api port.")
    from_: list[dict[str, Any]] = Field(
        default_factory=list,
        alias="from",
        description="networking.k8s.io/v1 NetworkPolicyPeers allowed in (default: any source, api port only). "
        "Metrics are scraped on the api port, so a Prometheus peer needs no extra rule.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


class ProbeSpec(_Model):
    enabled: bool = Field(default=True, description="false removes the probe.")
    probe: dict[str, Any] | None = k8s_object("A core/v1 Probe replacing the default.")


class Model(_Model):
    model_config = rules(
        ("has(self.name) || has(self.uri)", "spec.model needs name (a catalog model) or uri (hf://, pvc:// or a path)")
    )

    name: str | None = Field(
        default=None, description="Catalog name, also the served name, e.g. meta/llama-3.1-8b-instruct."
    )
    uri: str | None = Field(
        default=None, description="Where the weights are: hf://org/name, pvc://claim/path or a path."
    )


class GpuProduct(_Model):
    product: str = Field(min_length=1, description="GFD product (NVIDIA-H100-80GB-HBM3) or family (H100).")


class ProfileSelectorSpec(_Model):
    engine: Engine | None = Field(
        default=None, description="Inference engine: vllm (our runtime), or tensorrt_llm / sglang in NIM images."
    )
    precision: Precision | None = Field(default=None, description="Precision, e.g. fp8, bf16 or NIM's int4_awq.")
    tensor_parallelism: int | None = Field(default=None, ge=1, description="GPUs per replica.")
    qos_profile: Literal["throughput", "latency"] | None = Field(default=None, description="Optimisation target.")
    lora: bool | None = Field(default=None, description="Whether the profile supports LoRA adapters.")
    gpus: list[GpuProduct] = Field(default_factory=list, description="Acceptable GPU products (any of them).")


class Proxy(_Model):
    http_proxy: str | None = Field(default=None, description="HTTP_PROXY of the containers.")
    https_proxy: str | None = Field(default=None, description="HTTPS_PROXY of the containers.")
    no_proxy: str | None = Field(default=None, description="NO_PROXY of the containers.")
    cert_config_map: str | None = Field(
        default=None,
        description="ConfigMap whose *.crt and *.pem keys (PEM CA certificates, e.g. the proxy's) are added to "
        "the image's trusted bundle by an init container at each pod start; SSL_CERT_FILE and "
        "REQUESTS_CA_BUNDLE point at the result.",
    )


class NIMServiceSpec(_Model):
    """Desired state of a NIMService: every field of NVIDIA's, and ours for profiles and placement.

    Where NVIDIA is lenient we are too: ``replicas`` beside autoscaling is accepted and reported as ignored.
    Fields without effect in a given spec are named in a FieldsIgnored condition (see ``api.coverage``).
    """

    model_config = rules(
        (
            "!(has(self.profile) && has(self.profileSelector))",
            "set spec.profile (one profile) or spec.profileSelector (constraints), not both",
        ),
        (
            "!(has(self.multiNode) && has(self.scale) && has(self.scale.enabled) && self.scale.enabled)",
            "spec.multiNode cannot autoscale: disable spec.scale.enabled or remove multiNode",
        ),
        (
            "!(has(self.router) && has(self.expose) && has(self.expose.router))",
            "set spec.expose.router or spec.router (the same router), not both",
        ),
        (
            "!(has(self.profile) && has(self.storage) && has(self.storage.nimCache) && "
            "has(self.storage.nimCache.profile) && self.storage.nimCache.profile != '' && "
            "self.storage.nimCache.profile != self.profile)",
            "spec.profile and spec.storage.nimCache.profile name different profiles: set one of them",
        ),
        *ROUTER_RULES,
        *KSERVE_RULES,
        *CONTAINER_RULES,
    )

    image: Image = Field(description="The runtime image.")
    auth_secret: str | None = Field(
        default=None, description="Secret with NGC_API_KEY and/or HF_TOKEN, injected by reference."
    )
    storage: Storage | None = Field(default=None, description="The model store mounted at /model-store.")
    model: Model | None = Field(default=None, description="What to serve when the image is not model-specific.")
    model_manifest: str | None = Field(default=None, description="ConfigMap with a model manifest under manifest.yaml.")
    profile: str | None = Field(default=None, description="Run exactly this profile id.")
    profile_selector: ProfileSelectorSpec | None = Field(
        default=None, description="Constraints for choosing a profile."
    )
    env: list[dict[str, Any]] = k8s_objects("Extra container env (core/v1 EnvVar); wins over the operator's.")
    command: list[str] = Field(default_factory=list, description="Container command override.")
    args: list[str] = Field(default_factory=list, description="Container args override.")
    resources: Resources | None = Field(
        default=None, description="Container resources; nvidia.com/gpu defaults to the profile's."
    )
    dra_resources: list[DRAResource] = Field(
        default_factory=list,
        max_length=32,  # bounds the cost estimate of the per-item CEL rules
        description="Dynamic Resource Allocation claims of the pods (resource.k8s.io).",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels for the pods and children.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations for the pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod node selector.")
    tolerations: list[dict[str, Any]] = k8s_objects(
        "Pod tolerations; the GPU taint is tolerated automatically for GPU pods."
    )
    affinity: dict[str, Any] | None = k8s_object("core/v1 Affinity, merged with the profile's node affinity.")
    pod_affinity: dict[str, Any] | None = k8s_object(
        "core/v1 PodAffinity, NVIDIA's deprecated spelling of affinity.podAffinity (which wins when both are set)."
    )
    runtime_class_name: str | None = Field(default=None, description="Pod runtimeClassName.")
    priority_class_name: str | None = Field(default=None, description="Pod priorityClassName.")
    scheduler_name: str | None = Field(default=None, description="Pod schedulerName.")
    termination_grace_period_seconds: int = Field(
        default=c.DEFAULT_TERMINATION_GRACE_SECONDS,
        ge=1,
        description=f"Pod terminationGracePeriodSeconds (default {c.DEFAULT_TERMINATION_GRACE_SECONDS}): how long "
        f"a stopping pod may take before it is killed. It covers a preStop sleep (up to {c.PRE_STOP_SLEEP_SECONDS} "
        "s, so endpoints drop the pod before it refuses requests), the runtime's drain of in-flight requests and "
        f"streams ({c.ENV_DRAIN_TIMEOUT}, set to what is left after a margin of up to {c.SHUTDOWN_MARGIN_SECONDS} s "
        "unless env sets it) and its exit. Kubernetes' default of 30 s would cut long streams during a rollout.",
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        description=f"Replicas (default {c.DEFAULT_REPLICAS}); ignored while spec.scale.enabled is true "
        "(the FieldsIgnored condition says so).",
    )
    scale: Scale | None = Field(default=None, description="Horizontal autoscaling.")
    strategy: Strategy | None = Field(
        default=None,
        description="The rollout strategy of the Deployment. Default: one replica is replaced with a surge pod "
        "(maxSurge 1, maxUnavailable 0), so it serves throughout when the cluster has room for a second pod; when "
        "the surge pod cannot be scheduled, it is replaced in place (status says so). Several replicas, or "
        "autoscaling, are replaced one at a time without a surge (maxSurge 0, maxUnavailable 1), so a rollout "
        "needs no spare GPU.",
    )
    expose: Expose = Field(default_factory=Expose, description="Service, Ingress and router.")
    router: Router | None = Field(
        default=None,
        description="The router where some of NVIDIA's samples put it, beside expose: read as spec.expose.router.",
    )
    metrics: Metrics | None = Field(default=None, description="Prometheus ServiceMonitor.")
    network_policy: NetworkPolicySpec | None = Field(default=None, description="Optional ingress NetworkPolicy.")
    liveness_probe: ProbeSpec | None = Field(default=None, description=f"Default: GET {c.LIVE_PATH}.")
    readiness_probe: ProbeSpec | None = Field(default=None, description=f"Default: GET {c.READY_PATH}.")
    startup_probe: ProbeSpec | None = Field(default=None, description=f"Default: GET {c.READY_PATH}, up to 20 minutes.")
    user_id: int = Field(default=c.DEFAULT_USER_ID, ge=1, alias="userID", description="Pod runAsUser (non-root).")
    group_id: int = Field(default=c.DEFAULT_GROUP_ID, ge=0, alias="groupID", description="Pod runAsGroup and fsGroup.")
    proxy: Proxy | None = Field(
        default=None,
        description="HTTP(S) proxy of the containers (HTTP_PROXY, HTTPS_PROXY, NO_PROXY, upper and lower case) and "
        "a ConfigMap of CA certificates (*.crt, *.pem keys) added to the trusted bundle at /etc/ssl.",
    )
    multi_node: MultiNode | None = Field(default=None, description="Serve each replica across several nodes.")
    inference_platform: PlatformType = Field(
        default="standalone",
        description="standalone (a Deployment; the default) or kserve (a KServe InferenceService).",
    )
    init_containers: list[ContainerSpec] = extra_containers(
        "Containers run in order before the NIM (after the CA bundle's, with proxy.certConfigMap). They get the "
        "NIM's env (their own wins), the model store, /scratch shared with the pod, and the restricted security "
        "context unless they set one."
    )
    sidecar_containers: list[ContainerSpec] = extra_containers(
        "Containers run beside the NIM, with its env (their own wins) and volume mounts, /scratch shared with "
        "the pod, and the restricted security context unless they set one."
    )

    @property
    def autoscaling(self) -> bool:
        return bool(self.scale and self.scale.enabled)

    @property
    def desired_replicas(self) -> int:
        return c.DEFAULT_REPLICAS if self.replicas is None else self.replicas

    @property
    def pinned_profile(self) -> tuple[str | None, str]:
        """(the profile to run, the field that pins it): spec.profile, else the NIMCache's profile."""
        cached = self.storage.nim_cache.profile if self.storage and self.storage.nim_cache else None
        if self.profile or not cached:
            return self.profile, "spec.profile"
        return cached, "spec.storage.nimCache.profile"

    @property
    def effective_router(self) -> Router | None:
        """The router, wherever the manifest put it (admission refuses both places at once)."""
        return self.expose.router or self.router


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class Rejected(_Model):
    id: str
    why: str


class ProfileStatus(_Model):
    id: str | None = Field(default=None, description="Chosen profile; empty when the runtime chooses.")
    name: str | None = Field(default=None, description="Its readable name, when the id is a NIM hash.")
    tags: dict[str, str] = Field(default_factory=dict)
    gpu_products: list[str] = Field(default_factory=list)
    gpu_count: int = 0
    reason: str = ""
    placement: Literal["Now", "AfterScaleUp", "WhenGPUsFree", "Waiting"] | None = Field(
        default=None,
        description="Where the profile runs: on free GPUs now, after an autoscaler adds a node, once GPUs "
        "other pods hold free up, or waiting for a product only profileSelector.gpus names.",
    )
    node_pools: list[str] = Field(
        default_factory=list,
        description="Autoscaler pools (Karpenter NodePools, node groups) whose nodes can run the profile.",
    )
    rejected: list[Rejected] = Field(default_factory=list)
    moved: str | None = Field(
        default=None, description="Why the service last moved from another profile; kept until it moves again."
    )
    inputs: str | None = Field(
        default=None,
        description="Hash of the spec fields the decision was made from: while they stay the same, the decision "
        "sticks (edits of replicas, env, labels, probes or scaling never move a running service).",
    )


class ModelStatus(_Model):
    name: str | None = None
    cluster_endpoint: str | None = None
    external_endpoint: str | None = None


class NIMServiceStatus(_Model):
    """Observed state, written by the operator."""

    state: Literal["Pending", "NotReady", "Ready", "ScaledToZero", "Failed"] = Field(
        default="Pending",
        description="Pending (no replica available yet), NotReady (some), Ready, ScaledToZero (replicas is 0, "
        "nothing to be ready), Failed (the spec cannot be reconciled: the Failed condition says why).",
    )
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    available_replicas: int = 0
    replicas: int = Field(default=0, description="Pods of the current revision (scale subresource).")
    selector: str | None = Field(default=None, description="Pod label selector (scale subresource).")
    model: ModelStatus | None = None
    profile: ProfileStatus | None = None
