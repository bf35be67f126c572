"""Runtime configuration from ``NIM_*`` environment variables.

Every variable the runtime reads is named and defaulted here, once. Parsing is pure (it takes a mapping,
not ``os.environ``) so it is unit-tested without a process; the one side effect, preparing the
environment vLLM reads at import time, is :func:`apply_engine_environment`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nim_runtime.frontend import FrontendFlagError, FrontendOptions, frontend_options

#: The model served when nothing is configured: the embedded SmolLM2 (runs on the CPU).
DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PORT = 8000
DEFAULT_HOST = "0.0.0.0"
DEFAULT_CACHE_PATH = "~/.cache/nim-runtime"
DEFAULT_LOG_LEVEL = "INFO"
#: Seconds in-flight requests (streams included) get to finish after SIGTERM.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: Largest request body accepted; larger ones get 413 before they are parsed.
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: Inference requests admitted at once (running in the engine or waiting in its queue); more get 429.
#: Far above any engine batch (vLLM's default is 256 sequences on a GPU, 128 on the CPU), so the engine
#: always has a full queue to draw from, yet a flood cannot grow the queue (and memory) without bound.
DEFAULT_MAX_QUEUED_REQUESTS = 512
#: How much lower the engine processes' CPU priority is than the API process's (a nice increment).
#: The API process uses a few percent of the CPU, but answers probes and feeds the engine: when both
#: want a core, it should win. Measured on 2 cores under 32 streams: /v1/health p99 from 17 ms to 7-10 ms,
#: and no loss of throughput.
DEFAULT_ENGINE_NICENESS = 10
#: Seconds the engine core may take to answer a heartbeat before the server counts it as hung (not
#: ready, not live) and exits. An engine answers between two steps; a CPU step takes up to seconds.
DEFAULT_ENGINE_STALL_TIMEOUT = 60.0

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ValueError):
    """A ``NIM_*`` variable holds a value the runtime cannot use; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """What the runtime serves and how; build it with :meth:`from_env`."""

    #: A catalog name; unset means the default model, or a custom model when model_path is set.
    model_name: str | None = None
    model_path: str | None = None
    served_model_name: str | None = None
    profile: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    cache_path: Path = field(default_factory=lambda: Path(DEFAULT_CACHE_PATH).expanduser())
    max_model_len: int | None = None
    #: Tokens generated for a request that sets no max_tokens: None = the manifest's default, 0 = no
    #: default (vLLM's: up to the end of the context).
    default_max_tokens: int | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    jsonl_logging: bool = False
    passthrough_args: tuple[str, ...] = ()
    api_key: str | None = None
    #: vLLM's HTTP-server options found in passthrough_args (API keys, TLS, CORS) that our server applies.
    frontend: FrontendOptions = field(default_factory=FrontendOptions)
    #: See DEFAULT_ENGINE_STALL_TIMEOUT; 0 turns the heartbeat off.
    engine_stall_timeout: float = DEFAULT_ENGINE_STALL_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Inference requests admitted at once; 0 means no limit.
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    #: Nice increment of the engine processes relative to the API process; 0 leaves them equal.
    engine_niceness: int = DEFAULT_ENGINE_NICENESS
    #: A read-only cache prepared at image build time, tried when cache_path lacks a converted model.
    prepared_cache: Path | None = None

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every accepted bearer token: NIM_API_KEY and vLLM's --api-key (or VLLM_API_KEY)."""
        return ((self.api_key,) if self.api_key else ()) + self.frontend.api_keys

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuntimeConfig:
        """Read the configuration; empty variables count as unset (Kubernetes often renders them so)."""

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        log_level = (get("NIM_LOG_LEVEL") or DEFAULT_LOG_LEVEL).upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"NIM_LOG_LEVEL={log_level!r} is not a log level; use one of {LOG_LEVELS}")
        try:
            passthrough = tuple(shlex.split(get("NIM_PASSTHROUGH_ARGS") or ""))
        except ValueError as exc:
            raise ConfigError(f"NIM_PASSTHROUGH_ARGS cannot be split like a shell line: {exc}") from None
        try:
            frontend = frontend_options(passthrough, env)
        except FrontendFlagError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            model_name=get("NIM_MODEL_NAME"),
            model_path=get("NIM_MODEL_PATH"),
            served_model_name=get("NIM_SERVED_MODEL_NAME"),
            profile=get("NIM_MODEL_PROFILE"),
            host=get("NIM_SERVER_HOST") or DEFAULT_HOST,
            port=_int(env, "NIM_SERVER_PORT", DEFAULT_PORT, low=1, high=65535),
            cache_path=Path(get("NIM_CACHE_PATH") or DEFAULT_CACHE_PATH).expanduser(),
            max_model_len=_optional_int(env, "NIM_MAX_MODEL_LEN", low=1),
            default_max_tokens=_optional_int(env, "NIM_DEFAULT_MAX_TOKENS", low=0),
            log_level=log_level,
            jsonl_logging=_bool(env, "NIM_JSONL_LOGGING", False),
            passthrough_args=passthrough,
            api_key=get("NIM_API_KEY"),
            frontend=frontend,
            engine_stall_timeout=_float(env, "NIM_ENGINE_STALL_TIMEOUT", DEFAULT_ENGINE_STALL_TIMEOUT),
            drain_timeout=_float(env, "NIM_DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT),
            max_request_bytes=_int(env, "NIM_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES, low=1024),
            max_queued_requests=_int(env, "NIM_MAX_QUEUED_REQUESTS", DEFAULT_MAX_QUEUED_REQUESTS, low=0),
            engine_niceness=_int(env, "NIM_ENGINE_NICENESS", DEFAULT_ENGINE_NICENESS, low=0, high=19),
            prepared_cache=Path(p) if (p := get("NIM_PREPARED_CACHE")) else None,
        )


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int | None = None) -> int:
    value = _optional_int(env, name, low=low, high=high)
    return default if value is None else value


def _optional_int(env: Mapping[str, str], name: str, *, low: int, high: int | None = None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}={value} is out of range; it must be {bounds}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name}={value} is negative; use 0 to exit without waiting")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def cpu_list(cpus: Iterable[int]) -> str:
    """CPU ids in the list syntax of cpusets and of ``VLLM_CPU_OMP_THREADS_BIND``: ``[0, 1, 2, 5]`` -> "0-2,5"."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def engine_environment(
    config: RuntimeConfig, *, cpu: bool, cpus: Sequence[int], online: int | None = None
) -> dict[str, str]:
    """The variables vLLM and Hugging Face read at import time, as this runtime wants them.

    Why each: model hubs are unreachable in a cluster (and we never fetch at run time, except through an
    explicit ``hf://`` source, which leaves offline mode to the user); vLLM's usage reporting phones
    home; its compile cache belongs in the model cache volume, not in a read-only home directory. The
    CPU settings were measured on 2 cores: one OpenMP thread per core, no reserved core and a 1 GiB KV
    cache halve start-up time and nearly double throughput. OpenMP threads are pinned only when this
    process has CPUs of its own (its cpuset, ``cpus``, is a part of the ``online`` CPUs: the kubelet's
    static CPU manager gives a Guaranteed pod exclusive ones); on a shared node they float. vLLM's own
    "auto" binding takes one logical CPU per physical core (one CPU of two SMT siblings) and the same
    CPU for every vLLM pod of the node: a rollout's new pod then started pinned to the CPU the old
    pod's spinning worker held, and waited minutes on the run queue. The caller only applies the
    variables the user has not set.
    """
    wanted = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(config.cache_path / "vllm"),
        "HF_HOME": str(config.cache_path / "huggingface"),
        "TOKENIZERS_PARALLELISM": "false",
        # With strict tool calling, vLLM answers a named tool_choice through the parser's own call format
        # (hermes tags), which small models do not produce; off, it decodes the call's arguments under the
        # tool's JSON schema, so they always parse.
        "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0",
    }
    if cpu:
        wanted |= {
            "OMP_NUM_THREADS": str(max(1, len(cpus))),
            "VLLM_CPU_OMP_THREADS_BIND": cpu_list(cpus) if cpus and len(cpus) < (online or 0) else "nobind",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }
    return wanted


def apply_engine_environment(
    config: RuntimeConfig, env: MutableMapping[str, str] | None = None, *, cpu: bool
) -> dict[str, str]:
    """Set the variables of :func:`engine_environment` that are unset; returns those it set.

    Must run before vLLM (or torch) is imported: both read these once.
    """
    target: MutableMapping[str, str] = os.environ if env is None else env
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    applied = {}
    for name, value in engine_environment(config, cpu=cpu, cpus=cpus, online=os.cpu_count()).items():
        if name not in target:
            target[name] = value
            applied[name] = value
    return applied
