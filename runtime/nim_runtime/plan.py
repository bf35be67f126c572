"""What to serve: the configuration resolved into a manifest, a profile and vLLM's arguments.

Pure apart from reading the catalog and ``nvidia-smi`` (through profile selection), so start-up
decisions are unit-tested without an engine. An unknown profile fails here, before anything heavy
is imported, so a typo in NIM_MODEL_PROFILE stops the process at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nim_runtime.config import DEFAULT_MODEL_NAME, RuntimeConfig
from nim_runtime.profiles import ModelManifest, Profile, find_manifest, load_catalog, select_local_profile
from nim_runtime.sources import SourceError, custom_manifest, resolve_source


class PlanError(ValueError):
    """The configuration names something that does not exist; the message lists what does."""


@dataclass(frozen=True, kw_only=True)
class ServingPlan:
    """The model, profile and names the runtime will serve with."""

    manifest: ModelManifest
    profile: Profile
    #: Every name clients may send as ``model``; answers carry the first.
    served_names: tuple[str, ...]
    source: str

    @property
    def served_name(self) -> str:
        return self.served_names[0]

    @property
    def on_cpu(self) -> bool:
        return self.profile.device == "cpu"


def make_plan(config: RuntimeConfig) -> ServingPlan:
    """Pick the manifest (catalog name, or a custom one for NIM_MODEL_PATH) and the profile.

    With NIM_MODEL_PATH and a catalog NIM_MODEL_NAME, the catalog manifest describes the model and the
    path only replaces where the weights come from (the usual case of a pre-loaded model store).
    """
    if config.model_path is None:
        name = config.model_name or DEFAULT_MODEL_NAME
        manifest = find_manifest(name)
        if manifest is None:
            raise PlanError(
                f"NIM_MODEL_NAME={name!r} is not in the catalog; known models: "
                f"{', '.join(load_catalog())} (or set NIM_MODEL_PATH to a model folder)"
            )
        source = manifest.source
    else:
        source, path = _model_location(config)
        manifest = find_manifest(config.model_name) if config.model_name else None
        if manifest is None:
            name = next(iter(_names(config.served_model_name)), None) or config.model_name or path.name
            manifest = custom_manifest(path, name, max_model_len=config.max_model_len)
    # ProfileError (a ValueError) lists the valid ids; the caller reports it and exits.
    profile = select_local_profile(manifest, config.profile)
    return ServingPlan(manifest=manifest, profile=profile, served_names=served_names(config, manifest), source=source)


#: Schemes NIM_MODEL_PATH may use beside a plain folder (see :mod:`nim_runtime.sources`).
URI_SCHEMES = ("hf://", "pvc://")


def _model_location(config: RuntimeConfig) -> tuple[str, Path]:
    """NIM_MODEL_PATH as a source string and the folder it names.

    The scheme is read before any path handling: ``Path("hf://org/name")`` would collapse the ``//``
    and turn a hub reference into a local path that does not exist.
    """
    value = str(config.model_path)
    if "://" not in value:
        path = Path(value).expanduser()
        return str(path), path
    if not value.startswith(URI_SCHEMES):
        raise PlanError(
            f"NIM_MODEL_PATH={value!r} has an unknown scheme; use hf://org/name[@revision], "
            "pvc://claim/sub/path or a local folder"
        )
    try:
        resolved = resolve_source(value, config.cache_path, prepared_cache=config.prepared_cache)
    except SourceError as exc:
        raise PlanError(str(exc)) from None
    return value, resolved.path


def served_names(config: RuntimeConfig, manifest: ModelManifest) -> tuple[str, ...]:
    """NIM_SERVED_MODEL_NAME split at commas, as NIM does (any of them may be sent), else the manifest's."""
    return _names(config.served_model_name) or (manifest.model_name,)


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


def default_max_tokens(plan: ServingPlan, config: RuntimeConfig) -> int | None:
    """Tokens generated for a request that sets no max_tokens; None leaves vLLM's (the rest of the context).

    NIM_DEFAULT_MAX_TOKENS wins over the manifest; 0 there turns the default off.
    """
    if config.default_max_tokens is not None:
        return config.default_max_tokens or None
    return plan.manifest.generation.max_tokens if plan.manifest.task == "chat" else None


def engine_argv(plan: ServingPlan, config: RuntimeConfig, model_dir: Path) -> list[str]:
    """``vllm serve`` arguments: ours first, then the profile's, then NIM_PASSTHROUGH_ARGS (last wins)."""
    argv = [
        "--model", str(model_dir),
        "--served-model-name", *plan.served_names,
        "--max-model-len", str(config.max_model_len or plan.profile.max_model_len or plan.manifest.max_model_len),
        "--tensor-parallel-size", str(plan.profile.tp),
        "--pipeline-parallel-size", str(plan.profile.pp),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if plan.manifest.task == "embedding":
        argv += ["--runner", "pooling"]
    else:
        if plan.manifest.tool_parser:
            # vLLM wants a parser even for a named tool_choice (see VLLM_ENFORCE_STRICT_TOOL_CALLING in config).
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", plan.manifest.tool_parser]
        if sampling := plan.manifest.generation.sampling():
            # Merged over the model's own generation_config.json; requests' values still win. The default
            # max_tokens is not passed this way: vLLM takes an overridden max_new_tokens as a hard limit
            # for every request (see default_max_tokens and Engine.start).
            argv += ["--override-generation-config", json.dumps(sampling)]
    if plan.on_cpu:
        # Compiled mode costs 100+ s of start-up on the CPU for ~20% more throughput.
        argv += ["--enforce-eager"]
    argv += list(plan.profile.vllm_args)
    argv += list(config.passthrough_args)
    return argv


def model_source_path(plan: ServingPlan, config: RuntimeConfig) -> tuple[Path, bool]:
    """The model folder and whether it still needs the one-time conversion."""
    resolved = resolve_source(plan.source, config.cache_path, prepared_cache=config.prepared_cache)
    return resolved.path, resolved.needs_conversion
