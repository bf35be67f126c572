"""vLLM's HTTP-server options in ``NIM_PASSTHROUGH_ARGS``: honoured by our server, or refused at start.

``vllm serve`` takes options for its own HTTP server (API keys, TLS, CORS, ports...) beside the engine's.
vLLM's parser accepts them in ``NIM_PASSTHROUGH_ARGS`` too, but that parser runs inside the engine
loader, after our server is already listening, and nothing read what it found: a user porting a
``vllm serve --api-key ... --ssl-certfile ...`` command line got an open, plaintext endpoint. Here
every server option of vLLM 0.32 has one fate: honoured (:class:`FrontendOptions`), harmless because
ours already behaves so, or refused with a message naming what to use instead.

Parsing is pure and needs no vLLM import, so a refused option stops the process at start with exit
code 2. The engine loader parses the same line again with vLLM's parser and compares
(:func:`unapplied_options`), which catches options that reach vLLM another way (a ``--config`` file).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: vLLM's own variable for the API key, read by ``vllm serve`` when no ``--api-key`` is given.
VLLM_API_KEY = "VLLM_API_KEY"


class FrontendFlagError(ValueError):
    """An option in NIM_PASSTHROUGH_ARGS that nim-runtime does not apply; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class FrontendOptions:
    """The vLLM server options our server applies."""

    #: Bearer tokens accepted on inference routes (``--api-key``, else ``VLLM_API_KEY``).
    api_keys: tuple[str, ...] = ()
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_ca_certs: str | None = None
    #: ``ssl.VerifyMode`` as an int: 0 no client certificate, 1 optional, 2 required.
    ssl_cert_reqs: int = 0
    ssl_ciphers: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("*",)
    allowed_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False
    disable_docs: bool = False
    h11_max_incomplete_event_size: int | None = None

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    @property
    def cors(self) -> bool:
        return bool(self.allowed_origins)


_NO_NIM_EQUIVALENT = "nim-runtime does not support it; remove it from NIM_PASSTHROUGH_ARGS"
_ONE_API_PROCESS = "nim-runtime runs one API process per pod (scale with replicas); remove it from NIM_PASSTHROUGH_ARGS"
_ROUTE_NOT_SERVED = "it configures a vLLM route nim-runtime does not serve; remove it from NIM_PASSTHROUGH_ARGS"

#: Options refused, with what to use instead. A value-taking option maps to True in _TAKES_VALUE.
REFUSED: dict[str, str] = {
    "host": "set NIM_SERVER_HOST instead",
    "port": "set NIM_SERVER_PORT instead (the operator's probes and Service use it)",
    "uvicorn_log_level": "set NIM_LOG_LEVEL instead",
    "uds": _NO_NIM_EQUIVALENT,
    "root_path": "nim-runtime serves at /; rewrite paths in the Ingress or gateway instead",
    "middleware": "nim-runtime does not import user middleware; remove it from NIM_PASSTHROUGH_ARGS",
    "enable_request_id_headers": _NO_NIM_EQUIVALENT,
    "enable_offline_docs": _NO_NIM_EQUIVALENT,
    "enable_ssl_refresh": "nim-runtime loads certificates at start; restart the pod (a rollout) after renewing them",
    "h11_max_header_count": _NO_NIM_EQUIVALENT,
    "headless": _ONE_API_PROCESS,
    "api_server_count": _ONE_API_PROCESS,
    "grpc": _NO_NIM_EQUIVALENT,
    "grpc_port": _NO_NIM_EQUIVALENT,
    "data_parallel_supervisor_port": _ONE_API_PROCESS,
    "dp_supervisor_probe_interval_s": _ONE_API_PROCESS,
    "dp_supervisor_probe_timeout_s": _ONE_API_PROCESS,
    "dp_supervisor_probe_failure_threshold": _ONE_API_PROCESS,
    "sse_keep_alive_interval": _NO_NIM_EQUIVALENT,
    "enable_tokenizer_info_endpoint": _ROUTE_NOT_SERVED,
    "enable_server_load_tracking": _ROUTE_NOT_SERVED,
    "enable_scale_out": _ROUTE_NOT_SERVED,
    "tokens_only": _ROUTE_NOT_SERVED,
}

#: Options whose effect nim-runtime already has: it writes no access log at all.
ALREADY_SO = frozenset({"disable_uvicorn_access_log", "disable_access_log_for_endpoints"})

#: Every server option above as (dest, kind, vLLM's default); kinds: value, int, float, json (a JSON
#: list), keys (one or more values), append (repeatable), flag (store_true), bool (--x/--no-x).
_OPTIONS: tuple[tuple[str, str, Any], ...] = (
    ("api_key", "keys", None),
    ("ssl_keyfile", "value", None),
    ("ssl_certfile", "value", None),
    ("ssl_ca_certs", "value", None),
    ("ssl_cert_reqs", "int", 0),
    ("ssl_ciphers", "value", None),
    ("allowed_origins", "json", []),
    ("allowed_methods", "json", ["*"]),
    ("allowed_headers", "json", ["*"]),
    ("allow_credentials", "bool", False),
    ("disable_fastapi_docs", "bool", False),
    ("h11_max_incomplete_event_size", "int", 4194304),
    ("disable_uvicorn_access_log", "bool", False),
    ("disable_access_log_for_endpoints", "value", None),
    ("host", "value", None),
    ("port", "int", 8000),
    ("uvicorn_log_level", "value", "info"),
    ("uds", "value", None),
    ("root_path", "value", None),
    ("middleware", "append", []),
    ("enable_request_id_headers", "bool", False),
    ("enable_offline_docs", "bool", False),
    ("enable_ssl_refresh", "bool", False),
    ("h11_max_header_count", "int", 256),
    ("headless", "flag", False),
    ("api_server_count", "int", None),
    ("grpc", "flag", False),
    ("grpc_port", "value", None),
    ("data_parallel_supervisor_port", "int", 9256),
    ("dp_supervisor_probe_interval_s", "float", 5.0),
    ("dp_supervisor_probe_timeout_s", "float", 5.0),
    ("dp_supervisor_probe_failure_threshold", "int", 3),
    ("sse_keep_alive_interval", "int", 0),
    ("enable_tokenizer_info_endpoint", "bool", False),
    ("enable_server_load_tracking", "bool", False),
    ("enable_scale_out", "bool", False),
    ("tokens_only", "bool", False),
)
SERVER_OPTIONS: tuple[str, ...] = tuple(dest for dest, _, _ in _OPTIONS)
#: vLLM's default of each server option (what "not given" looks like after vLLM's parser).
DEFAULTS: dict[str, Any] = {dest: default for dest, _, default in _OPTIONS}


def _json_list(raw: str) -> list[Any]:
    value = json.loads(raw)
    if not isinstance(value, list):
        raise ValueError("expected a JSON list")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="NIM_PASSTHROUGH_ARGS", add_help=False, allow_abbrev=False)
    types: dict[str, Any] = {"int": int, "float": float, "json": _json_list}
    for dest, kind, default in _OPTIONS:
        flag = "--" + dest.replace("_", "-")
        names = [flag, "-asc"] if dest == "api_server_count" else [flag]
        if kind == "flag":
            parser.add_argument(*names, dest=dest, action="store_true")
        elif kind == "bool":
            parser.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=default)
        elif kind == "keys":
            parser.add_argument(*names, dest=dest, nargs="+", default=default)
        elif kind == "append":
            parser.add_argument(*names, dest=dest, action="append", default=None)
        else:
            parser.add_argument(*names, dest=dest, type=types.get(kind, str), default=default)
    return parser


def _normalize(argv: Sequence[str]) -> list[str]:
    """vLLM's parser also accepts ``--api_key`` for ``--api-key``; so does this one."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in (name := arg.split("=", 1)[0]):
            arg = name.replace("_", "-") + arg[len(name) :]
        out.append(arg)
    return out


def parse_server_options(argv: Sequence[str]) -> dict[str, Any]:
    """The server options in a ``vllm serve`` argument list, each with vLLM's default when absent.

    Engine options are left alone (vLLM's parser checks them later). A malformed server option
    (``--port x``, ``--allowed-origins`` that is no JSON list) raises :class:`FrontendFlagError`.
    """
    parser = _parser()

    def fail(message: str) -> Any:
        raise FrontendFlagError(f"NIM_PASSTHROUGH_ARGS: {message}")

    parser.error = fail  # type: ignore[method-assign]  # argparse would print and exit
    values, _ = parser.parse_known_args(_normalize(argv))
    options = vars(values)
    if options["middleware"] is None:
        options["middleware"] = []
    return options


def frontend_options(argv: Sequence[str], env: Mapping[str, str]) -> FrontendOptions:
    """What our server applies from ``argv`` (NIM_PASSTHROUGH_ARGS) and ``env``; refuses the rest."""
    options = parse_server_options(argv)
    for dest, why in REFUSED.items():
        if options[dest] != DEFAULTS[dest]:
            flag = "--" + dest.replace("_", "-")
            raise FrontendFlagError(f"NIM_PASSTHROUGH_ARGS sets {flag}, a vLLM server option: {why}")
    if (options["ssl_keyfile"] is None) != (options["ssl_certfile"] is None):
        raise FrontendFlagError("NIM_PASSTHROUGH_ARGS: --ssl-certfile and --ssl-keyfile go together; set both")
    tls_extras = options["ssl_ca_certs"] or options["ssl_cert_reqs"] or options["ssl_ciphers"]
    if options["ssl_certfile"] is None and tls_extras:
        raise FrontendFlagError("NIM_PASSTHROUGH_ARGS: the --ssl-* options need --ssl-certfile and --ssl-keyfile")
    keys = options["api_key"] or [env.get(VLLM_API_KEY, "")]
    event_size = options["h11_max_incomplete_event_size"]
    return FrontendOptions(
        api_keys=tuple(k for k in keys if k),
        ssl_keyfile=options["ssl_keyfile"],
        ssl_certfile=options["ssl_certfile"],
        ssl_ca_certs=options["ssl_ca_certs"],
        ssl_cert_reqs=options["ssl_cert_reqs"],
        ssl_ciphers=options["ssl_ciphers"],
        allowed_origins=tuple(options["allowed_origins"]),
        allowed_methods=tuple(options["allowed_methods"]),
        allowed_headers=tuple(options["allowed_headers"]),
        allow_credentials=options["allow_credentials"],
        disable_docs=options["disable_fastapi_docs"],
        # Only when given: vLLM's default (4 MiB) is not uvicorn's, and nothing else here should change.
        h11_max_incomplete_event_size=None if event_size == DEFAULTS["h11_max_incomplete_event_size"] else event_size,
    )


def unapplied_options(argv: Sequence[str], vllm_args: Mapping[str, Any]) -> list[str]:
    """Server options vLLM's parser found in ``vllm_args`` that differ from what we parsed from ``argv``.

    They reached vLLM some way the start-up check did not see (a ``--config`` YAML file, say), so
    our server is not applying them: the caller refuses to serve rather than ignore them.
    """
    ours = parse_server_options(argv)
    return [
        "--" + dest.replace("_", "-") for dest in SERVER_OPTIONS if dest in vllm_args and vllm_args[dest] != ours[dest]
    ]
