"""The model manifest: what a model is and the profiles it can run with.

A manifest is data shipped with the runtime (see ``catalog/``) or handed to the operator in a
ConfigMap. It must stay importable without vLLM: the operator uses it to place pods.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Precision = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]
Device = Literal["gpu", "cpu"]
QosProfile = Literal["throughput", "latency"]
Task = Literal["chat", "embedding"]

#: Bits per weight, for ranking: fewer bits serve more tokens per GPU at the same quality budget.
PRECISION_BITS: dict[str, int] = {"int4": 4, "fp8": 8, "int8": 8, "fp16": 16, "bf16": 16, "fp32": 32}


class Profile(BaseModel):
    """One way to run a model: engine, precision, parallelism and the hardware it is tuned for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Human-readable, unique within the manifest, e.g. vllm-fp8-tp1-h100.")
    engine: Literal["vllm"] = "vllm"
    precision: Precision
    tp: int = Field(default=1, ge=1, description="Tensor-parallel size: GPUs per replica (with pp).")
    pp: int = Field(default=1, ge=1, description="Pipeline-parallel size.")
    mode: QosProfile = Field(default="throughput", description="NIM's `profile` tag.")
    gpu: str | None = Field(
        default=None,
        description="GPU product family the profile is tuned for (H100, L40S, A10G); none means generic.",
    )
    lora: bool = False
    min_gpu_memory_mib: int | None = Field(default=None, ge=0, description="Minimum memory per GPU.")
    device: Device = "gpu"
    vllm_args: tuple[str, ...] = Field(default=(), description="Engine arguments this profile implies.")
    max_model_len: int | None = Field(
        default=None, ge=1, description="Context cap of this profile (tokens), below the model's; none = the model's."
    )

    @property
    def gpus(self) -> int:
        """GPUs one replica needs; zero for the CPU."""
        return 0 if self.device == "cpu" else self.tp * self.pp

    @property
    def tags(self) -> dict[str, str]:
        """NIM-style tags (all strings, as NIM reports them), plus ours: device and minimum memory."""
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


class ModelManifest(BaseModel):
    """A model and its profiles, as `/v1/manifest` shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Catalog name, also the default served name.")
    served_name: str | None = Field(default=None, description="Name clients use; defaults to `name`.")
    description: str = ""
    task: Task = "chat"
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
    architecture: ModelArchitecture | None = Field(
        default=None, description="Model shape for memory sizing; without it only min_gpu_memory_mib counts."
    )
    images: tuple[str, ...] = Field(
        default=(), description="Image repositories that serve exactly this model (for the operator)."
    )
    profiles: tuple[Profile, ...] = Field(min_length=1)

    @field_validator("profiles")
    @classmethod
    def _ids_unique(cls, profiles: tuple[Profile, ...]) -> tuple[Profile, ...]:
        seen: set[str] = set()
        for p in profiles:
            if p.id in seen:
                raise ValueError(f"profile id {p.id!r} appears twice; ids must be unique within a manifest")
            seen.add(p.id)
        return profiles

    @property
    def model_name(self) -> str:
        """The name clients send in `model`."""
        return self.served_name or self.name

    def profile(self, id_: str) -> Profile | None:
        """The profile with this id, or None."""
        return next((p for p in self.profiles if p.id == id_), None)

    @property
    def profile_ids(self) -> list[str]:
        return [p.id for p in self.profiles]
