"""Configuration parsing and the engine environment (pure; no vLLM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nim_runtime.config import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_ENGINE_NICENESS,
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_PORT,
    ConfigError,
    RuntimeConfig,
    apply_engine_environment,
    cpu_list,
    engine_environment,
)


def test_defaults_when_nothing_is_set() -> None:
    config = RuntimeConfig.from_env({})
    assert config.model_name is None
    assert config.model_path is None
    assert config.port == DEFAULT_PORT
    assert config.drain_timeout == DEFAULT_DRAIN_TIMEOUT
    assert config.max_queued_requests == DEFAULT_MAX_QUEUED_REQUESTS > 0
    assert config.engine_niceness == DEFAULT_ENGINE_NICENESS > 0
    assert config.passthrough_args == ()
    assert config.api_key is None
    assert not config.jsonl_logging


def test_values_are_parsed() -> None:
    config = RuntimeConfig.from_env({
        "NIM_MODEL_NAME": "meta/llama-3.1-8b-instruct", "NIM_SERVER_PORT": "9000", "NIM_CACHE_PATH": "/models",
        "NIM_MAX_MODEL_LEN": "4096", "NIM_LOG_LEVEL": "debug", "NIM_JSONL_LOGGING": "true",
        "NIM_PASSTHROUGH_ARGS": "--max-num-seqs 8 --chat-template '/a b/t.jinja'", "NIM_API_KEY": "k",
        "NIM_DRAIN_TIMEOUT": "2.5", "NIM_ENGINE_NICENESS": "0",
    })  # fmt: skip
    assert config.port == 9000
    assert config.cache_path == Path("/models")
    assert config.max_model_len == 4096
    assert config.log_level == "DEBUG"
    assert config.jsonl_logging
    assert config.passthrough_args == ("--max-num-seqs", "8", "--chat-template", "/a b/t.jinja")
    assert config.api_key == "k"
    assert config.drain_timeout == 2.5
    assert config.engine_niceness == 0


def test_empty_values_count_as_unset() -> None:
    assert RuntimeConfig.from_env({"NIM_SERVER_PORT": "", "NIM_API_KEY": " "}).port == DEFAULT_PORT


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"NIM_SERVER_PORT": "eighty"}, "NIM_SERVER_PORT"),
        ({"NIM_SERVER_PORT": "70000"}, "NIM_SERVER_PORT"),
        ({"NIM_MAX_MODEL_LEN": "0"}, "NIM_MAX_MODEL_LEN"),
        ({"NIM_LOG_LEVEL": "LOUD"}, "NIM_LOG_LEVEL"),
        ({"NIM_JSONL_LOGGING": "maybe"}, "NIM_JSONL_LOGGING"),
        ({"NIM_PASSTHROUGH_ARGS": "--x 'unclosed"}, "NIM_PASSTHROUGH_ARGS"),
        ({"NIM_DRAIN_TIMEOUT": "-1"}, "NIM_DRAIN_TIMEOUT"),
        ({"NIM_MAX_QUEUED_REQUESTS": "-5"}, "NIM_MAX_QUEUED_REQUESTS"),
        ({"NIM_MAX_QUEUED_REQUESTS": "many"}, "NIM_MAX_QUEUED_REQUESTS"),
        ({"NIM_ENGINE_NICENESS": "20"}, "NIM_ENGINE_NICENESS"),
        ({"NIM_ENGINE_NICENESS": "-1"}, "NIM_ENGINE_NICENESS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        RuntimeConfig.from_env(env)


def test_queue_limit_zero_means_unbounded() -> None:
    assert RuntimeConfig.from_env({"NIM_MAX_QUEUED_REQUESTS": "0"}).max_queued_requests == 0
    assert RuntimeConfig.from_env({"NIM_MAX_QUEUED_REQUESTS": "8"}).max_queued_requests == 8


def test_cpu_environment_is_applied_only_where_unset() -> None:
    config = RuntimeConfig.from_env({"NIM_CACHE_PATH": "/c"})
    env = {"OMP_NUM_THREADS": "7"}
    applied = apply_engine_environment(config, env, cpu=True)
    assert env["OMP_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" not in applied
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CACHE_ROOT"] == "/c/vllm"


@pytest.mark.parametrize(
    ("cpus", "listed"), [([0], "0"), ([0, 1], "0-1"), ([7, 0, 2, 3], "0,2-3,7"), ([4, 5, 6, 9, 10], "4-6,9-10")]
)
def test_cpu_list(cpus: list[int], listed: str) -> None:
    assert cpu_list(cpus) == listed


def test_openmp_threads_are_pinned_only_to_cpus_of_our_own() -> None:
    # An exclusive cpuset (the static CPU manager): one thread per CPU of it, pinned.
    owned = engine_environment(RuntimeConfig(), cpu=True, cpus=[2, 3, 5], online=8)
    assert owned["OMP_NUM_THREADS"] == "3"
    assert owned["VLLM_CPU_OMP_THREADS_BIND"] == "2-3,5"
    # Every CPU of a shared node: threads float, so other pods' processes are not starved on one CPU.
    shared = engine_environment(RuntimeConfig(), cpu=True, cpus=[0, 1], online=2)
    assert shared["OMP_NUM_THREADS"] == "2"
    assert shared["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_gpu_environment_leaves_threads_alone() -> None:
    wanted = engine_environment(RuntimeConfig(), cpu=False, cpus=range(64))
    assert "OMP_NUM_THREADS" not in wanted
    assert wanted["TRANSFORMERS_OFFLINE"] == "1"
