"""Generation defaults and served names: from the manifest and NIM_* variables to vLLM's arguments (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nim_runtime.config import ConfigError, RuntimeConfig
from nim_runtime.plan import default_max_tokens, engine_argv, make_plan
from nim_runtime.profiles import find_manifest

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_smollm2_gets_the_model_cards_sampling_but_no_hard_token_limit(tmp_path: Path) -> None:
    config = RuntimeConfig(profile="vllm-cpu-bf16")
    argv = engine_argv(make_plan(config), config, tmp_path)
    override = json.loads(argv[argv.index("--override-generation-config") + 1])
    assert override == {"temperature": 0.2, "top_p": 0.9}
    # vLLM turns an overridden max_new_tokens into a limit no request can exceed.
    assert "max_new_tokens" not in override


def test_the_manifest_default_applies_when_nothing_is_set() -> None:
    config = RuntimeConfig(profile="vllm-cpu-bf16")
    assert default_max_tokens(make_plan(config), config) == 256


@pytest.mark.parametrize(("value", "expected"), [("64", 64), ("0", None), ("", 256)])
def test_nim_default_max_tokens_overrides_the_manifest(value: str, expected: int | None) -> None:
    config = RuntimeConfig.from_env({"NIM_DEFAULT_MAX_TOKENS": value, "NIM_MODEL_PROFILE": "vllm-cpu-bf16"})
    assert default_max_tokens(make_plan(config), config) == expected


def test_a_negative_default_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="NIM_DEFAULT_MAX_TOKENS"):
        RuntimeConfig.from_env({"NIM_DEFAULT_MAX_TOKENS": "-1"})


def test_embedding_models_get_no_generation_settings(tmp_path: Path) -> None:
    config = RuntimeConfig(model_name="sentence-transformers/all-MiniLM-L6-v2", profile="vllm-cpu-fp32")
    plan = make_plan(config)
    assert "--override-generation-config" not in engine_argv(plan, config, tmp_path)
    assert default_max_tokens(plan, config) is None


def test_a_custom_model_keeps_vllms_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    config = RuntimeConfig(model_path=str(tmp_path), profile="vllm-cpu-auto")
    plan = make_plan(config)
    assert "--override-generation-config" not in engine_argv(plan, config, tmp_path)
    assert default_max_tokens(plan, config) is None


def test_catalog_llama_carries_its_generation_config() -> None:
    manifest = find_manifest("meta/llama-3.1-8b-instruct")
    assert manifest is not None
    assert manifest.generation.sampling() == {"temperature": 0.6, "top_p": 0.9}


def test_served_model_name_takes_comma_separated_aliases(tmp_path: Path) -> None:
    """As in NIM: clients may send any of the names; answers carry the first."""
    config = RuntimeConfig(served_model_name="meta/llama-3.1-8b-instruct, small ,", profile="vllm-cpu-bf16")
    plan = make_plan(config)
    assert plan.served_names == ("meta/llama-3.1-8b-instruct", "small")
    assert plan.served_name == "meta/llama-3.1-8b-instruct"
    argv = engine_argv(plan, config, tmp_path)
    start = argv.index("--served-model-name") + 1
    assert argv[start : start + 3] == ["meta/llama-3.1-8b-instruct", "small", "--max-model-len"]


def test_a_custom_models_manifest_is_named_after_the_first_served_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    plan = make_plan(RuntimeConfig(model_path=str(tmp_path), served_model_name="a,b", profile="vllm-cpu-auto"))
    assert plan.manifest.name == "a"
    assert plan.served_names == ("a", "b")
