"""vLLM's server options in NIM_PASSTHROUGH_ARGS: honoured or refused at start, never ignored (pure).

The last test checks the option table against vLLM's own parser, so a vLLM upgrade that adds a server
option fails here until the option is given a fate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nim_runtime.auth import bearer_matches, is_protected
from nim_runtime.config import ConfigError, RuntimeConfig
from nim_runtime.frontend import (
    DEFAULTS,
    REFUSED,
    SERVER_OPTIONS,
    FrontendFlagError,
    FrontendOptions,
    frontend_options,
    parse_server_options,
    unapplied_options,
)


def test_nothing_given_means_vllm_defaults_and_nothing_to_apply() -> None:
    assert frontend_options(["--max-model-len", "512", "--dtype", "auto"], {}) == FrontendOptions()
    assert parse_server_options([]) == DEFAULTS


def test_api_keys_tls_and_cors_are_kept_for_the_server() -> None:
    argv = [
        "--max-num-seqs", "8", "--api-key", "k1", "k2", "--enforce-eager",
        "--ssl-certfile=/tls/tls.crt", "--ssl_keyfile", "/tls/tls.key", "--ssl-cert-reqs", "2",
        "--allowed-origins", '["https://app.example"]', "--allow-credentials", "--disable-fastapi-docs",
    ]  # fmt: skip
    options = frontend_options(argv, {"VLLM_API_KEY": "ignored-when-the-flag-is-given"})
    assert options.api_keys == ("k1", "k2")
    assert options.tls
    assert (options.ssl_certfile, options.ssl_keyfile) == ("/tls/tls.crt", "/tls/tls.key")
    assert options.ssl_cert_reqs == 2
    assert options.cors
    assert options.allowed_origins == ("https://app.example",)
    assert options.allowed_methods == ("*",)
    assert options.allow_credentials
    assert options.disable_docs


def test_vllm_api_key_variable_is_honoured_as_by_vllm_serve() -> None:
    assert frontend_options([], {"VLLM_API_KEY": "from-env"}).api_keys == ("from-env",)
    config = RuntimeConfig.from_env({"NIM_API_KEY": "nim", "NIM_PASSTHROUGH_ARGS": "--api-key vllm"})
    assert config.api_keys == ("nim", "vllm")
    assert RuntimeConfig.from_env({}).api_keys == ()


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ("--port 9000", "NIM_SERVER_PORT"),
        ("--host=127.0.0.1", "NIM_SERVER_HOST"),
        ("--uvicorn-log-level debug", "NIM_LOG_LEVEL"),
        ("--root-path /llm", "--root-path"),
        ("--api-server-count 2", "replicas"),
        ("--enable-ssl-refresh --ssl-certfile c --ssl-keyfile k", "restart the pod"),
        ("--middleware my.module.Thing", "--middleware"),
    ],
)
def test_options_our_server_does_not_apply_are_refused_at_start(argv: str, names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig.from_env({"NIM_PASSTHROUGH_ARGS": argv})
    assert "NIM_PASSTHROUGH_ARGS" in str(caught.value)
    assert names in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--ssl-certfile", "c"], "set both"),
        (["--ssl-ca-certs", "ca.pem"], "need --ssl-certfile"),
        (["--allowed-origins", "https://a.example"], "--allowed-origins"),
        (["--ssl-cert-reqs", "required"], "--ssl-cert-reqs"),
    ],
)
def test_malformed_server_options_are_refused(argv: list[str], says: str) -> None:
    with pytest.raises(FrontendFlagError) as caught:
        frontend_options(argv, {})
    assert says in str(caught.value)


def test_options_reaching_vllm_another_way_are_reported() -> None:
    """What vLLM's parser saw (a --config file's api-key, say) but our start-up parse did not."""
    seen_by_vllm = dict(DEFAULTS) | {"api_key": ["from-config-file"], "max_model_len": 512}
    assert unapplied_options(["--max-model-len", "512"], seen_by_vllm) == ["--api-key"]
    assert unapplied_options(["--api-key", "from-config-file"], seen_by_vllm) == []


def test_inference_routes_need_the_key_and_management_routes_do_not() -> None:
    guarded = ["/v1/chat/completions", "/v1/responses", "/v1/models/x/y", "/score", "/v1/score", "/v2/rerank",
               "/rerank", "/pooling", "/classify", "/v1/load_lora_adapter", "/tokenize",
               "/inference/chat_completion"]  # fmt: skip
    for path in guarded:
        assert is_protected(path), path
    for path in ("/v1/health/live", "/v1/health/ready", "/v1/metrics", "/v1/metadata", "/v1/version",
                 "/v1/manifest", "/v1/license", "/docs", "/openapi.json"):  # fmt: skip
        assert not is_protected(path), path
    assert bearer_matches("Bearer k2", ("k1", "k2"))
    assert not bearer_matches("Bearer k3", ("k1", "k2"))
    assert not bearer_matches("Bearer k1", ())


def test_the_option_table_matches_vllms_parser() -> None:
    """Every server option of vLLM's `vllm serve` parser has a fate here, with vLLM's default, and
    parses to the value vLLM's parser gives it."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs, FrontendArgs, make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    engine = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    served_by_init_app_state = {f.name for f in dataclasses.fields(BaseFrontendArgs)}
    server_only = {f.name for f in dataclasses.fields(FrontendArgs)} - served_by_init_app_state
    others = {a.dest for a in parser._actions if a.dest not in engine | server_only | served_by_init_app_state}
    # enable_flash_late_interaction is read by vLLM's pooling state (init_app_state), so it applies as is.
    expected = (server_only - {"enable_flash_late_interaction"}) | (others - {"help", "model_tag", "config"})
    assert expected <= set(SERVER_OPTIONS), expected - set(SERVER_OPTIONS)
    assert set(REFUSED) <= set(SERVER_OPTIONS)
    for dest in SERVER_OPTIONS:
        assert parser.get_default(dest) == DEFAULTS[dest], dest

    argv = ["--model", "m", "--api-key", "a", "b", "--allowed-origins", '["https://x"]', "--ssl-cert-reqs", "1",
            "--no-allow-credentials", "--disable-fastapi-docs", "--port", "9", "--middleware", "a.B",
            "--middleware", "c.D", "--max-num-seqs", "4", "-asc", "2", "--headless"]  # fmt: skip
    theirs = vars(parser.parse_args(argv))
    ours = parse_server_options(argv)
    assert {dest: theirs[dest] for dest in SERVER_OPTIONS} == ours


def test_server_options_in_a_vllm_config_file_stop_the_load(tmp_path: Path) -> None:
    """``--config`` is read by vLLM's parser only, in the loader: an API key there must not be dropped."""
    from nim_runtime.engine import EngineArgsError, build_server_args

    config = tmp_path / "serve.yaml"
    config.write_text("api-key: from-the-file\n")
    assert build_server_args(["--model", "m", "--max-model-len", "64"]).max_model_len == 64
    with pytest.raises(EngineArgsError, match="--api-key"):
        build_server_args(["--model", "m", "--config", str(config)])
