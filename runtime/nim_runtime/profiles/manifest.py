"""The model manifest: what a model is and the profiles it can run with.

A manifest is data shipped with the runtime (see ``catalog/``), handed to the operator in a ConfigMap,
or read from a NIM image (NVIDIA's formats, see :mod:`nim_runtime.profiles.nim_manifest`). Every
format ends up as :class:`Profile` objects in a :class:`ProfileSet`, which selection ranks the same
way. It must stay importable without vLLM: the operator uses it to place pods.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Device = Literal["gpu", "cpu"]
QosProfile = Literal["throughput", "latency"]
Task = Literal["chat", "embedding"]
#: Engines NIM manifests name (``llm_engine``); our runtime runs ``vllm`` profiles only.
Engine = Literal["vllm", "tensorrt_llm", "sglang"]
#: Precisions of our catalog and of NIM's ``precision`` tag. ``_awq`` / ``_wo`` (weight-only) keep
#: activations in 16 bits; they are ranked by their weights, which is what decides memory and speed.
Precision = Literal[
    "fp32", "bf16", "fp16", "fp8", "int8", "int4", "int8_wo", "int4_wo", "int4_awq", "w4a16", "nvfp4", "mxfp4", "fp4"
]

#: Bits per weight, for ranking: fewer bits serve more tokens per GPU at the same quality budget.
PRECISION_BITS: dict[str, int] = {
    "fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int8_wo": 8,
    "int4": 4, "int4_wo": 4, "int4_awq": 4, "w4a16": 4, "nvfp4": 4, "mxfp4": 4, "fp4": 4,
}  # fmt: skip


class Profile(BaseModel):
    """One way to run a model: engine, precision, parallelism and the hardware it is tuned for.

    Our catalog's ids are readable (``vllm-fp8-tp1-h100``). NIM's ids are opaque hashes; for those,
    ``name`` is the readable form and ``source_tags`` keeps the image's own tags, which status shows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Unique within the manifest, e.g. vllm-fp8-tp1-h100 or a NIM hash.")
    name: str | None = Field(default=None, description="Readable name when the id is not, e.g. vllm-bf16-tp1-pp1.")
    engine: Engine = "vllm"
    precision: Precision
    tp: int = Field(default=1, ge=1, description="Tensor-parallel size: GPUs per replica (with pp).")
    pp: int = Field(default=1, ge=1, description="Pipeline-parallel size.")
    mode: QosProfile = Field(default="throughput", description="NIM's `profile` tag.")
    gpu: str | None = Field(
        default=None,
        description="GPU product family the profile is tuned for (H100, L40S, A10G, H100_NVL); none means generic.",
    )
    gpu_device: str | None = Field(
        default=None, description="PCI device id the profile is built for (NIM's gpu_device without :10de)."
    )
    lora: bool = False
    buildable: bool = Field(default=False, description="A TensorRT-LLM profile that builds its engine at start.")
    min_gpu_memory_mib: int | None = Field(default=None, ge=0, description="Minimum memory per GPU.")
    device: Device = "gpu"
    vllm_args: tuple[str, ...] = Field(default=(), description="Engine arguments this profile implies.")
    source_tags: tuple[tuple[str, str], ...] = Field(
        default=(), description="The tags as the image's manifest states them (NIM profiles only)."
    )
    max_model_len: int | None = Field(
        default=None, ge=1, description="Context cap of this profile (tokens), below the model's; none = the model's."
    )

    @property
    def gpus(self) -> int:
        """GPUs one replica needs; zero for the CPU."""
        return 0 if self.device == "cpu" else self.tp * self.pp

    @property
    def label(self) -> str:
        """How messages name the profile: ``id`` alone when it is readable, else ``id (name)``."""
        return f"{self.id} ({self.name})" if self.name and self.name != self.id else self.id

    @property
    def tags(self) -> dict[str, str]:
        """NIM-style tags (all strings, as NIM reports them): the image's own for a NIM profile; for ours,
        NIM's keys plus device and minimum memory."""
        if self.source_tags:
            return dict(self.source_tags)
        tags = {
            "llm_engine": self.engine,
            "precision": self.precision,
            "tp": str(self.tp),
            "pp": str(self.pp),
            "profile": self.mode,
            "feat_lora": str(self.lora).lower(),
            "device": self.device,
        }
        if self.gpu is not None:
            tags["gpu"] = self.gpu
        if self.min_gpu_memory_mib is not None:
            tags["min_gpu_memory_mib"] = str(self.min_gpu_memory_mib)
        return tags


class ModelArchitecture(BaseModel):
    """The model's shape, from its config: enough to size weights and KV cache per GPU (placement)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters_billions: float = Field(gt=0)
    layers: int = Field(ge=1, description="num_hidden_layers")
    kv_heads: int = Field(ge=1, description="num_key_value_heads")
    head_dim: int = Field(ge=1, description="hidden_size / num_attention_heads")


class ProfileSet(BaseModel):
    """A model's profiles, whatever format they came from: what selection needs and nothing more.

    A NIM image's manifest states no architecture or context length: memory is then judged by the GPU
    each profile is built for, and only ``min_gpu_memory_mib`` counts where a profile states it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The model, or the image when the manifest names no model.")
    profiles: tuple[Profile, ...] = Field(min_length=1)
    task: Task = "chat"
    max_model_len: int | None = Field(default=None, ge=1, description="The model's context length, when known.")
    architecture: ModelArchitecture | None = Field(
        default=None, description="Model shape for memory sizing; without it only min_gpu_memory_mib counts."
    )

    @field_validator("profiles")
    @classmethod
    def _ids_unique(cls, profiles: tuple[Profile, ...]) -> tuple[Profile, ...]:
        seen: set[str] = set()
        for p in profiles:
            if p.id in seen:
                raise ValueError(f"profile id {p.id!r} appears twice; ids must be unique within a manifest")
            seen.add(p.id)
        return profiles

    def profile(self, id_or_name: str) -> Profile | None:
        """The profile with this id, else the one profile with this readable name, else None."""
        found = next((p for p in self.profiles if p.id == id_or_name), None)
        if found is not None:
            return found
        named = [p for p in self.profiles if p.name == id_or_name]
        return named[0] if len(named) == 1 else None

    @property
    def profile_ids(self) -> list[str]:
        return [p.id for p in self.profiles]

    @property
    def profile_labels(self) -> list[str]:
        """Every profile as messages name it (``id (name)`` for NIM's hashes)."""
        return [p.label for p in self.profiles]


class GenerationDefaults(BaseModel):
    """What a request that leaves sampling unset gets: the model's recommended settings.

    Quantised conversions (SmolLM2's GGUF) keep no generation config, so without these vLLM samples at
    temperature 1.0 up to the end of the context: minutes of text for "Say hi." on a CPU. A request's own
    values always win. ``max_tokens`` is a default, not a limit: a request may ask for more.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens generated when a request sets no max_tokens (NIM_DEFAULT_MAX_TOKENS overrides).",
    )

    def sampling(self) -> dict[str, float | int]:
        """The sampling settings that are set, as vLLM's generation config names them."""
        return {k: v for k, v in self.model_dump(exclude={"max_tokens"}).items() if v is not None}


class ModelManifest(ProfileSet):
    """A model our runtime can serve and its profiles, as `/v1/manifest` shows it."""

    name: str = Field(description="Catalog name, also the default served name.")
    served_name: str | None = Field(default=None, description="Name clients use; defaults to `name`.")
    description: str = ""
    multimodal: bool = False
    source: str = Field(description="embedded:<package>, hf://org/name, pvc://claim/path or a local path.")
    max_model_len: int = Field(ge=1)
    license: str
    license_url: str | None = None
    tool_parser: str | None = Field(
        default="hermes",
        description="vLLM tool-call parser for this model's chat template; none for embedding models.",
    )
    generation: GenerationDefaults = Field(
        default_factory=GenerationDefaults, description="Sampling defaults for requests that set none."
    )

    @property
    def model_name(self) -> str:
        """The name clients send in `model`."""
        return self.served_name or self.name
