"""NVIDIA NIM's model manifests, read into our :class:`Profile` objects.

Two formats exist (NIM images carry one at ``/opt/nim/etc/default/model_manifest.yaml``):

- schema v1: a mapping of profile id (a 64-hex hash) to ``{model, release, tags, container_url,
  workspace}``. The YAML uses application tags (``!workspace``, ``!name``) that only NIM's own loader
  knows; they describe files to download and are read here as plain data.
- schema 2.0.0: ``{schema_version, profile_selection_criteria, profiles: [{id, tags, workspace}]}``.

Tags are strings: ``llm_engine`` (tensorrt_llm, vllm, sglang; older and non-LLM NIMs say ``backend``),
``precision``, ``tp``, ``pp``, ``profile`` (throughput or latency), ``gpu`` (H100, H100_NVL, L40S ...),
``gpu_device`` (PCI id, ``2330:10de``), ``feat_lora``, ``trtllm_buildable``. A profile whose tags name
something selection cannot reason about (an unknown precision or engine) is not dropped in silence:
it is kept in ``skipped`` with the reason, so status can say why it was never a candidate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field

from nim_runtime.profiles.hardware import device_id
from nim_runtime.profiles.manifest import Engine, Precision, Profile, ProfileSet, QosProfile

NimSchema = Literal["nim-v1", "nim-v2"]
#: Where NIM images keep their manifest; NVIDIA's operator reads the first that exists.
IMAGE_MANIFEST_PATHS = ("/opt/nim/etc/default/model_manifest.yaml", "/etc/nim/config/model_manifest.yaml")

_ENGINES: dict[str, str] = {"tensorrt_llm": "tensorrt_llm", "tensorrt": "tensorrt_llm", "trtllm": "tensorrt_llm"}
_ENGINES.update({e: e for e in get_args(Engine)})
_HASH = re.compile(r"^[0-9a-f]{32,}$")


class ManifestFormatError(ValueError):
    """The text is no manifest format we know; the message says what was found."""


class SkippedProfile(BaseModel):
    """A profile of the image that selection cannot consider, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    why: str


class ImageManifest(ProfileSet):
    """The profiles a NIM image's own manifest lists, in the shared profile model."""

    nim_schema: NimSchema = Field(description="Which of NIM's formats the image's manifest uses.")
    models: tuple[str, ...] = Field(default=(), description="Model names the v1 entries state.")
    release: str | None = None
    selection_criteria: str | None = Field(default=None, description="v2 profile_selection_criteria.")
    skipped: tuple[SkippedProfile, ...] = ()


class _TolerantLoader(yaml.SafeLoader):
    """A safe loader that reads NIM's application tags (``!workspace``, ``!name``) as the plain node."""


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_TolerantLoader.add_multi_constructor("!", _untagged)


def load_yaml(text: str) -> Any:
    """YAML (or JSON) as data, tolerating NIM's application tags."""
    return yaml.load(text, Loader=_TolerantLoader)


def readable_name(tags: Mapping[str, str]) -> str:
    """NIM's readable profile name: ``tensorrt_llm-h100-fp8-tp2-pp1-latency``, ``vllm-bf16-tp1-pp1``,
    with ``-lora`` for LoRA-capable profiles. Built only from tags, so it is stable for an image."""
    engine = _ENGINES.get(_engine_tag(tags), _engine_tag(tags) or "unknown")
    parts = [engine]
    if tags.get("gpu"):
        parts.append(tags["gpu"].lower())
    parts += [tags.get("precision", "").lower() or "unknown", f"tp{tags.get('tp') or 1}", f"pp{tags.get('pp') or 1}"]
    if engine == "tensorrt_llm" and tags.get("profile"):
        parts.append(tags["profile"].lower())
    if str(tags.get("feat_lora", "")).lower() == "true":
        parts.append("lora")
    return "-".join(parts)


def _engine_tag(tags: Mapping[str, str]) -> str:
    return str(tags.get("llm_engine") or tags.get("backend") or "").lower()


def _int_tag(tags: Mapping[str, str], key: str) -> int:
    value = str(tags.get(key) or "1").strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"tag {key}={value!r} is not a positive integer")
    return int(value)


def _profile(id_: str, raw_tags: Mapping[str, Any], name: str | None = None) -> Profile:
    """One NIM profile as ours; ``ValueError`` names the tag selection cannot use."""
    tags = {str(k): "" if v is None else str(v) for k, v in raw_tags.items()}
    engine = _ENGINES.get(_engine_tag(tags))
    if engine is None:
        raise ValueError(f"engine {_engine_tag(tags) or '(none)'!r} is not one of {', '.join(get_args(Engine))}")
    precision = tags.get("precision", "").lower()
    if precision not in get_args(Precision):
        raise ValueError(f"precision {precision or '(none)'!r} is not one the operator can rank")
    mode = (tags.get("profile") or "throughput").lower()
    if mode not in get_args(QosProfile):
        raise ValueError(f"profile {mode!r} is neither throughput nor latency")
    return Profile(
        id=id_,
        name=name or readable_name(tags),
        engine=engine,
        precision=precision,
        tp=_int_tag(tags, "tp"),
        pp=_int_tag(tags, "pp"),
        mode=mode,
        gpu=tags.get("gpu") or None,
        gpu_device=device_id(tags.get("gpu_device")),
        lora=tags.get("feat_lora", "").lower() == "true",
        buildable=tags.get("trtllm_buildable", "").lower() == "true",
        source_tags=tuple(sorted(tags.items())),
    )


def _entries(data: Mapping[str, Any]) -> tuple[NimSchema, list[tuple[str, Mapping[str, Any], str | None]]]:
    """(schema, [(id, tags, stated name)]) of a parsed NIM manifest."""
    version = str(data.get("schema_version") or "").strip()
    if version.startswith("2"):
        profiles = data.get("profiles")
        if not isinstance(profiles, list):
            raise ManifestFormatError("a schema 2 NIM manifest needs a `profiles` list")
        entries = []
        for i, p in enumerate(profiles):
            if not isinstance(p, Mapping) or not p.get("id"):
                raise ManifestFormatError(f"profiles[{i}] of the NIM manifest has no id")
            entries.append((str(p["id"]), p.get("tags") or {}, p.get("name") or (p.get("tags") or {}).get("name")))
        return "nim-v2", entries
    if version:
        raise ManifestFormatError(f"NIM manifest schema_version {version!r} is not 1 or 2.x")
    bad = [k for k, v in data.items() if not isinstance(v, Mapping) or not isinstance(v.get("tags"), Mapping)]
    if bad:
        raise ManifestFormatError(f"a v1 NIM manifest maps profile ids to entries with tags; {bad[0]!r} has none")
    return "nim-v1", [(str(k), v["tags"], None) for k, v in data.items()]


def is_nim_manifest(data: Any) -> bool:
    """Whether parsed YAML looks like one of NIM's formats (not ours, which has `name` and `source`)."""
    if not isinstance(data, Mapping) or not data:
        return False
    if str(data.get("schema_version") or "").startswith("2"):
        return True
    return all(isinstance(v, Mapping) and isinstance(v.get("tags"), Mapping) for v in data.values())


def nim_manifest_from_data(data: Mapping[str, Any], *, fallback_name: str = "unknown") -> ImageManifest:
    """An :class:`ImageManifest` from a parsed NIM manifest; raises ``ManifestFormatError`` when no
    profile can be used (the message lists why for each)."""
    schema, entries = _entries(data)
    profiles: list[Profile] = []
    skipped: list[SkippedProfile] = []
    for id_, tags, stated in entries:
        try:
            profiles.append(_profile(id_, tags, stated))
        except ValueError as err:
            skipped.append(SkippedProfile(id=id_, why=str(err)))
    if not profiles:
        reasons = "; ".join(f"{s.id}: {s.why}" for s in skipped) or "it lists no profiles"
        raise ManifestFormatError(f"no profile of the NIM manifest can be used ({reasons})")
    profiles = _unique_names(profiles)
    v1 = [v for v in data.values() if isinstance(v, Mapping)] if schema == "nim-v1" else []
    models = tuple(sorted({str(v["model"]) for v in v1 if v.get("model")}))
    releases = sorted({str(v["release"]) for v in v1 if v.get("release")})
    return ImageManifest(
        name=models[0] if len(models) == 1 else fallback_name,
        profiles=tuple(profiles),
        nim_schema=schema,
        models=models,
        release=releases[0] if len(releases) == 1 else None,
        selection_criteria=data.get("profile_selection_criteria") if schema == "nim-v2" else None,
        skipped=tuple(skipped),
    )


def _unique_names(profiles: list[Profile]) -> list[Profile]:
    """Readable names made unique: two profiles differing only in a tag the name leaves out (a LoRA
    rank, a device) get the start of their id appended, so a name never picks one of them by chance."""
    counts: dict[str | None, int] = {}
    for p in profiles:
        counts[p.name] = counts.get(p.name, 0) + 1
    out = []
    for p in profiles:
        if counts[p.name] > 1:
            short = p.id[:8] if _HASH.match(p.id) else p.id
            p = p.model_copy(update={"name": f"{p.name}-{short}"})
        out.append(p)
    return out


def parse_nim_manifest(text: str, *, fallback_name: str = "unknown") -> ImageManifest:
    """Parse a NIM manifest (v1 or v2) from YAML text."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ManifestFormatError(f"the NIM manifest is not valid YAML: {err}") from err
    if not isinstance(data, Mapping) or not is_nim_manifest(data):
        raise ManifestFormatError("not a NIM manifest: expected a v1 map of profile ids or schema_version 2.x")
    return nim_manifest_from_data(data, fallback_name=fallback_name)
