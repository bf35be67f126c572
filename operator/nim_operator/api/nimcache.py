"""The NIMCache API as typed models: the source of truth for its CRD schema.

Field names follow NVIDIA's NIMCache, so their manifests work after changing ``apiVersion``. Where
NVIDIA requires a field that only their puller images use (``modelPuller`` of an ``hf`` source), ours
accepts and documents it: hub and catalog sources are fetched by our runtime image's own downloader.
Ours on top: a ``catalog`` source (a model of the runtime's catalog, embedded ones included), a
retention policy for the created claim, and progress and size in status.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from nim_operator.api.common import ContainerSpec, Model, k8s_objects, quantity, rules

_NGC_PULLER = "The NIM image whose `download-to-cache` command fetches the model (an NGC source needs it)."
_HUB_PULLER = (
    "Accepted for compatibility with NVIDIA's NIMCache; hub sources are downloaded by the operator's runtime "
    "image instead (its `nim-runtime download`)."
)


class GpuSelector(Model):
    product: str | None = Field(default=None, description="GPU product, e.g. h100 or NVIDIA-H100-80GB-HBM3.")
    ids: list[str] = Field(default_factory=list, description="PCI device ids.")


class ModelSelector(Model):
    """Which of an NGC model's profiles to cache (NVIDIA's ``model``); all of them match when empty."""

    profiles: list[str] = Field(default_factory=list, description="Profile ids or names to cache.")
    precision: str | None = Field(default=None, description="Precision, e.g. fp8.")
    engine: str | None = Field(default=None, description="Engine, e.g. tensorrt_llm or vllm.")
    tensor_parallelism: str | None = Field(default=None, description='Tensor parallelism, e.g. "1".')
    qos_profile: str | None = Field(default=None, description="throughput or latency.")
    gpus: list[GpuSelector] = Field(default_factory=list, description="GPUs the profiles must suit.")
    lora: bool | None = Field(default=None, description="Profiles with LoRA support.")
    buildable: bool | None = Field(default=None, description="Buildable (model-free) profiles.")


class NGCSource(Model):
    model_config = rules(
        ("!(has(self.model) && has(self.modelEndpoint))", "set source.ngc.model or source.ngc.modelEndpoint, not both"),
    )

    auth_secret: str = Field(min_length=1, description="Secret with NGC_API_KEY, passed to the puller by reference.")
    model_puller: str = Field(min_length=1, description=_NGC_PULLER)
    pull_secret: str | None = Field(default=None, description="Image pull Secret of the puller image.")
    model: ModelSelector | None = Field(default=None, description="Which profiles to cache.")
    model_endpoint: str | None = Field(default=None, description="A model-free NIM's model endpoint.")


class HubSource(Model):
    """A Hugging Face-compatible hub (``hf``) or a NeMo Data Store (``dataStore``), which speaks the same API."""

    model_config = rules(
        (
            "(has(self.modelName) ? 1 : 0) + (has(self.datasetName) ? 1 : 0) == 1",
            "set exactly one of modelName or datasetName",
        ),
    )

    endpoint: str = Field(pattern=r"^https?://", description="The hub's base URL (HF_ENDPOINT).")
    namespace: str = Field(default="default", min_length=1, description="Organisation or user of the repository.")
    model_name: str | None = Field(default=None, min_length=1, description="Model repository name.")
    dataset_name: str | None = Field(default=None, min_length=1, description="Dataset repository name.")
    auth_secret: str | None = Field(default=None, description="Secret with HF_TOKEN, passed by reference.")
    model_puller: str | None = Field(default=None, description=_HUB_PULLER)
    pull_secret: str | None = Field(default=None, description="Image pull Secret (for the puller image).")
    revision: str | None = Field(default=None, description="Branch, tag or commit (default main).")

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.model_name or self.dataset_name}"

    @property
    def repo_type(self) -> str:
        return "model" if self.model_name else "dataset"


class CatalogSource(Model):
    model: str = Field(
        min_length=1, description="A model of the runtime's catalog, e.g. HuggingFaceTB/SmolLM2-135M-Instruct."
    )


class NIMCacheSource(Model):
    model_config = rules(
        (
            "[has(self.ngc), has(self.hf), has(self.dataStore), has(self.catalog)].filter(x, x).size() == 1",
            "spec.source takes exactly one of ngc, hf, dataStore or catalog",
        ),
    )

    ngc: NGCSource | None = Field(default=None, description="NGC, through the model's own NIM image.")
    hf: HubSource | None = Field(default=None, description="A Hugging Face-compatible hub.")
    data_store: HubSource | None = Field(default=None, description="A NeMo Data Store (the hub API under /v1/hf).")
    catalog: CatalogSource | None = Field(default=None, description="A model of the runtime's own catalog.")


class CachePVC(Model):
    model_config = rules(
        ("!has(self.create) || !self.create || has(self.size)", "spec.storage.pvc.create needs spec.storage.pvc.size"),
        ("(has(self.create) && self.create) || has(self.name)", "an existing claim needs spec.storage.pvc.name"),
    )

    create: bool | None = Field(default=None, description="Create the claim (named <NIMCache>-pvc unless name is set).")
    name: str | None = Field(default=None, description="The claim to use, or the name of the one to create.")
    storage_class: str | None = Field(
        default=None, description="Storage class of a created claim ('' for the default)."
    )
    size: str | None = quantity("Size of a created claim, e.g. 50Gi; the download is refused if it does not fit.")
    volume_access_mode: str | None = Field(
        default=None, description="Access mode of a created claim; ReadWriteMany lets replicas on many nodes share it."
    )
    sub_path: str | None = Field(default=None, description="Folder of the volume that holds the cache.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of a created claim.")
    retention_policy: Literal["Retain", "Delete"] | None = Field(
        default=None,
        description="What deleting the NIMCache does to a claim it created: Retain (default) keeps the weights, "
        "Delete removes them with it.",
    )


class NIMCacheStorage(Model):
    pvc: CachePVC | None = Field(default=None, description="The claim that holds the cache.")
    host_path: str | None = Field(default=None, description="Not supported: a cache must be a claim.")


class CacheResources(Model):
    cpu: int | str | None = quantity("CPU of the download Job (request and limit).")
    memory: int | str | None = quantity("Memory of the download Job (request and limit).")


class CertConfig(Model):
    name: str = Field(min_length=1, description="ConfigMap with CA certificates.")
    mount_path: str = Field(min_length=1, description="Where the certificates are mounted.")


class Proxy(Model):
    http_proxy: str | None = Field(default=None, description="HTTP_PROXY of the download Job.")
    https_proxy: str | None = Field(default=None, description="HTTPS_PROXY of the download Job.")
    no_proxy: str | None = Field(default=None, description="NO_PROXY of the download Job.")
    cert_config_map: str | None = Field(default=None, description="ConfigMap with the proxy's CA bundle.")


class NIMCacheSpec(Model):
    """Desired state of a NIMCache: a model's weights, fetched once into a claim that services mount."""

    source: NIMCacheSource = Field(description="Where the model comes from.")
    storage: NIMCacheStorage = Field(description="Where the cache lives.")
    resources: CacheResources | None = Field(default=None, description="Resources of the download Job.")
    tolerations: list[dict[str, Any]] = k8s_objects("Tolerations of the download Job (core/v1 Toleration).")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector of the download Job (none by default: it needs no GPU)."
    )
    user_id: int | None = Field(default=None, ge=1, alias="userID", description="runAsUser of the Job (default 1000).")
    group_id: int | None = Field(default=None, ge=0, alias="groupID", description="runAsGroup and fsGroup (2000).")
    cert_config: CertConfig | None = Field(default=None, description="Extra CA certificates for the download.")
    env: list[dict[str, Any]] = k8s_objects("Extra env of the download Job (core/v1 EnvVar).")
    runtime_class_name: str | None = Field(default=None, description="runtimeClassName of the Job's pod.")
    proxy: Proxy | None = Field(default=None, description="Proxy settings of the download Job.")
    init_containers: list[ContainerSpec] = Field(default_factory=list, description="Init containers of the Job.")


class CacheCondition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class CachedProfile(Model):
    name: str = Field(description="The profile id (NIM's hash), as download-to-cache takes it.")
    model: str | None = None
    release: str | None = None
    config: dict[str, str] = Field(default_factory=dict, description="The profile's tags in the image's manifest.")
    reason: str | None = Field(default=None, description="Why the operator caches it (ours).")


class CacheProgress(Model):
    """Bytes done / total, read from the downloader while it runs and from its completion report at the end.

    Published in steps (see ``cache_status``), not for every byte: a status write per reading would cost an
    API write every few seconds per cache for nothing a reader needs.
    """

    files: int = Field(default=0, description="Files complete.")
    total_files: int | None = Field(default=None, description="Files to download; unknown for NGC sources.")
    bytes: int = Field(default=0, description="Bytes written to the claim.")
    total_bytes: int | None = Field(default=None, description="Bytes to download; unknown for NGC sources.")
    percent: int | None = Field(default=None, ge=0, le=100, description="bytes / totalBytes, rounded down.")
    summary: str | None = Field(default=None, description="For `kubectl get`, e.g. 42% of 257.5 MiB.")


class NIMCacheStatus(Model):
    """Observed state, written by the operator."""

    state: Literal["Pending", "InProgress", "Ready", "Failed"] = "Pending"
    pvc: str | None = Field(default=None, description="The claim that holds the cache.")
    profiles: list[CachedProfile] = Field(default_factory=list)
    conditions: list[CacheCondition] = Field(default_factory=list)
    observed_generation: int | None = None
    progress: CacheProgress | None = Field(default=None, description="What the download wrote so far.")
    size: str | None = Field(default=None, description="Size of the cached model, e.g. 258.4 MiB.")
    access_modes: list[str] = Field(
        default_factory=list,
        description="The claim's access modes: ReadWriteOnce keeps the NIMServices that mount it on one node.",
    )
