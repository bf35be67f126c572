"""From configuration to what the engine is told (pure; no vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nim_runtime.config import RuntimeConfig
from nim_runtime.plan import PlanError, engine_argv, make_plan
from nim_runtime.profiles import ProfileError


def test_default_serves_smollm2_on_the_cpu_profile() -> None:
    plan = make_plan(RuntimeConfig(profile="vllm-cpu-bf16"))
    assert plan.served_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert plan.source == "embedded:smollm2"
    assert plan.on_cpu


def test_unknown_profile_lists_the_valid_ones() -> None:
    with pytest.raises(ProfileError, match="vllm-cpu-bf16"):
        make_plan(RuntimeConfig(profile="nope"))


def test_unknown_model_lists_the_catalog() -> None:
    with pytest.raises(PlanError, match=r"meta/llama-3\.1-8b-instruct"):
        make_plan(RuntimeConfig(model_name="acme/unknown"))


def test_passthrough_args_come_last_so_they_win(tmp_path: Path) -> None:
    config = RuntimeConfig(profile="vllm-cpu-bf16", passthrough_args=("--dtype", "float32"), max_model_len=512)
    argv = engine_argv(make_plan(config), config, tmp_path)
    assert argv[-2:] == ["--dtype", "float32"]
    assert argv[argv.index("--max-model-len") + 1] == "512"
    assert "--enforce-eager" in argv


def test_embedding_model_uses_the_pooling_runner(tmp_path: Path) -> None:
    config = RuntimeConfig(model_name="sentence-transformers/all-MiniLM-L6-v2", profile="vllm-cpu-fp32")
    argv = engine_argv(make_plan(config), config, tmp_path)
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert "--tool-call-parser" not in argv


def test_chat_models_get_a_tool_parser(tmp_path: Path) -> None:
    config = RuntimeConfig(profile="vllm-cpu-bf16")
    argv = engine_argv(make_plan(config), config, tmp_path)
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes"


def test_model_path_outside_the_catalog_gets_a_custom_manifest(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    plan = make_plan(RuntimeConfig(model_path=str(tmp_path), served_model_name="mine", profile="vllm-cpu-auto"))
    assert plan.served_name == "mine"
    assert plan.manifest.max_model_len == 4096
    assert plan.source == str(tmp_path)


def test_model_path_with_a_catalog_name_keeps_the_manifest(tmp_path: Path) -> None:
    config = RuntimeConfig(model_name="meta/llama-3.1-8b-instruct", model_path=str(tmp_path), profile="vllm-bf16-tp2")
    plan = make_plan(config)
    assert plan.manifest.name == "meta/llama-3.1-8b-instruct"
    assert plan.source == str(tmp_path)
    argv = engine_argv(plan, config, tmp_path)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--enforce-eager" not in argv


def test_a_pvc_uri_names_a_folder_of_the_mounted_store(tmp_path: Path) -> None:
    model = tmp_path / "weights" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    plan = make_plan(RuntimeConfig(model_path="pvc://model-claim/weights/tiny", cache_path=tmp_path))
    assert plan.source == "pvc://model-claim/weights/tiny"  # not collapsed to pvc:/model-claim/...
    assert plan.manifest.max_model_len == 1024
    assert plan.served_name == "tiny"


def test_an_hf_uri_is_looked_up_in_the_hub_cache_not_as_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PlanError, match=r"hf://acme/tiny is not in the cache"):
        make_plan(RuntimeConfig(model_path="hf://acme/tiny", cache_path=tmp_path))


def test_an_unknown_scheme_is_refused_by_name() -> None:
    with pytest.raises(PlanError, match=r"unknown scheme"):
        make_plan(RuntimeConfig(model_path="s3://bucket/model"))
