"""The operator's own Prometheus metrics: how reconciles go and what state services are in."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

RECONCILES = Counter(
    "nim_operator_reconciles_total",
    "Reconciles of NIMServices by result (applied: children written, noop: nothing to write, failed, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "nim_operator_reconcile_duration_seconds",
    "Time of one reconcile, including API calls.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_WRITES = Counter(
    "nim_operator_api_writes_total", "Writes the operator sent to the API server, by kind and verb.", ["kind", "verb"]
)

QUEUED = Counter(
    "nim_operator_queued_total",
    "Reconciles queued, by what triggered them (spec, child, deployment, pod, node, cache, crd, resync).",
    ["trigger"],
)

API_READS = Counter("nim_operator_api_reads_total", "Reads the operator sent to the API server, by kind.", ["kind"])


class StateCollector(Collector):
    """``nim_operator_nimservices{state=...}``, computed at scrape time from the last known states."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, state: str | None) -> None:
        with self._lock:
            if state is None:
                self._states.pop((namespace, name), None)
            else:
                self._states[(namespace, name)] = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("nim_operator_nimservices", "NIMServices by state.", labels=["state"])
        with self._lock:
            counts: dict[str, int] = {}
            for state in self._states.values():
                counts[state] = counts.get(state, 0) + 1
        for state in ("Pending", "NotReady", "Ready", "ScaledToZero", "Failed"):
            family.add_metric([state], counts.get(state, 0))
        yield family


STATES = StateCollector()
REGISTRY.register(STATES)


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:
    """Expose /metrics on its own port (kopf's liveness endpoint stays separate)."""
    start_http_server(port, addr=address)
