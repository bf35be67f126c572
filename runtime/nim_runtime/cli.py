"""``nim-runtime`` (and ``python -m nim_runtime``): serve, ``prepare`` the embedded models once, or print
the catalog (``manifest``) for the operator's discovery Job.

Configuration problems (a bad variable, an unknown model or profile) exit with status 2 and one line
saying what to change, before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import os
import sys

from nim_runtime.config import ConfigError, RuntimeConfig, apply_engine_environment

USAGE = """nim-runtime [serve]          serve the model configured by NIM_* variables
nim-runtime prepare [NAME ...]  convert the embedded models into $NIM_CACHE_PATH once (setup step)
nim-runtime download --repo ORG/NAME | --catalog NAME   fill a model store (a NIMCache's Job)
nim-runtime manifest         print this image's models and profile ids (the operator's discovery)"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["download"]:
        from nim_runtime.download import main as download

        return download(args[1:])
    if args[:1] == ["manifest"]:
        # Before the configuration is read: the operator's probe runs it with no NIM_* set, and it must
        # answer even where a variable would stop serve.
        from nim_runtime.config import DEFAULT_MODEL_NAME
        from nim_runtime.profiles import catalog_listing
        from nim_runtime.version import runtime_version

        sys.stdout.write(catalog_listing(DEFAULT_MODEL_NAME, runtime_version()))
        return 0
    parser = argparse.ArgumentParser(prog="nim-runtime", usage=USAGE)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "prepare"])
    parser.add_argument("names", nargs="*", help="catalog names for prepare (default: all embedded)")
    options = parser.parse_args(args)
    try:
        config = RuntimeConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"nim-runtime: {exc}", file=sys.stderr)
        return 2
    if options.command == "prepare":
        from nim_runtime.sources import prepare

        apply_engine_environment(config, cpu=True)
        return prepare(options.names, config.cache_path)
    return _serve(config)


def _serve(config: RuntimeConfig) -> int:
    from nim_runtime.logs import setup_logging
    from nim_runtime.plan import PlanError, make_plan
    from nim_runtime.profiles import ProfileError

    setup_logging(config)
    try:
        plan = make_plan(config)
    except (PlanError, ProfileError) as exc:
        print(f"nim-runtime: {exc}", file=sys.stderr)
        return 2
    apply_engine_environment(config, cpu=plan.on_cpu)

    import uvloop

    from nim_runtime.app import create_app
    from nim_runtime.context import RuntimeContext
    from nim_runtime.metrics import RuntimeMetrics
    from nim_runtime.server import serve

    ctx = RuntimeContext(config=config, plan=plan, metrics=RuntimeMetrics())
    # uvloop, like vLLM's own server: a cheaper event loop leaves more of the CPU to the engine.
    return uvloop.run(serve(ctx, create_app(ctx)))


if __name__ == "__main__":
    sys.exit(main())
