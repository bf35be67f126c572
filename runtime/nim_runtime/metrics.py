"""Prometheus metrics: vLLM's own (``vllm:*``) plus the runtime's (``nim_runtime_*``).

vLLM registers its metrics in the process-wide default registry, so ours live there too and one
scrape of ``/v1/metrics`` returns both. Queue depth and KV-cache usage are mirrored from vLLM's gauges
at scrape time under stable names, so dashboards and HPA rules do not depend on vLLM's naming.
See docs/runtime.md for the list.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry

#: Seconds; inference latency on the CPU spans milliseconds (tokenize) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

#: vLLM gauges mirrored under our names: ours -> vLLM's.
MIRRORED = {
    "nim_runtime_queue_depth": "vllm:num_requests_waiting",
    "nim_runtime_running_requests": "vllm:num_requests_running",
    "nim_runtime_kv_cache_usage_ratio": "vllm:kv_cache_usage_perc",
}


class RuntimeMetrics:
    """The runtime's metrics in one registry (the default one in production, a fresh one in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "nim_runtime_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "nim_runtime_request_duration_seconds",
            "Time from request to the last byte of the response (whole stream for streaming).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "nim_runtime_inference_requests_in_flight",
            "Inference requests being answered right now (what a drain waits for).",
            registry=registry,
        )
        self.ready = Gauge("nim_runtime_ready", "1 when /v1/health/ready answers 200, else 0.", registry=registry)
        self.mirrored = {
            name: Gauge(name, f"Mirror of vLLM's {source} (summed over engines).", registry=registry)
            for name, source in MIRRORED.items()
        }

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, with the mirrored gauges refreshed first."""
        totals = dict.fromkeys(MIRRORED.values(), 0.0)
        for family in self.registry.collect():
            if family.name in totals:
                totals[family.name] += sum(s.value for s in family.samples if s.name == family.name)
        for name, source in MIRRORED.items():
            self.mirrored[name].set(totals[source])
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
