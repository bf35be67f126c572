"""Operator at scale on the local control plane: 1,000 NIMServices across 20 namespaces at once.

Peer, measured in the same run: the same children applied directly by a plain client (one thread, as
fast as the API server takes them). That is the cluster's own floor (scheduler, Deployment controller,
kwok); the headline ratio is how much longer the operator takes to bring everything Ready.

Then, with everything Ready:
- idle for ``--idle`` seconds (kwok's node heartbeats keep coming) while one GPU node joins and later
  leaves: the operator's writes are counted (only services whose placement changed may be written);
- a restart over every Ready service: writes (target 0) and reads (target: a fixed number per child kind,
  not per service and not per optional kind a service does not use).

A few services of the mix are placed by profile (SmolLM2's CPU profile), the rest run an image without a
manifest; all tolerate every taint, and bench-only kwok nodes give the pods room. The numbers come from
the operator's own Prometheus counters and its process's peak RSS.

Usage: .venv/bin/python bench/operator_scale.py [--count 1000] [--namespaces 20] [--idle 600]
(make bench-operator). Runs on the cluster of NIM_CLUSTER_STATE (a light one is enough: NIM_REAL_NODES=0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nim_operator.api.spec import NIMServiceSpec  # noqa: E402
from nim_operator.kube import Kube  # noqa: E402
from nim_operator.placement import Placement  # noqa: E402
from nim_operator.render import Owner, render_children  # noqa: E402

STATE = Path(os.environ.get("NIM_CLUSTER_STATE", REPO / ".cache" / "cluster"))
KUBECONFIG = STATE / "kubeconfig"
RESULTS = REPO / "bench" / "results" / "operator.json"
TOLERATE_ALL = [{"operator": "Exists"}]
# An image we have no manifest for: the runtime picks its profile, pods spread over the nodes.
PLAIN: dict[str, Any] = {"image": {"repository": "bench/echo", "tag": "1"}, "tolerations": TOLERATE_ALL}
# Placed by profile (its decision is made, recorded and kept like any other): SmolLM2's CPU profile,
# pinned so that the mix does not depend on how many simulated GPUs are free.
PLACED: dict[str, Any] = {
    "image": {"repository": "nim-runtime", "tag": "dev"},
    "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    "profile": "vllm-cpu-bf16",
    "tolerations": TOLERATE_ALL,
}
BENCH_LABEL = "nimoperator.dev/bench"


def wait(probe: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def spec_of(i: int) -> dict[str, Any]:
    return PLACED if i % 20 == 0 else PLAIN


def bench_node(name: str, *, pods: int, gpu_product: str | None = None) -> dict[str, Any]:
    """A kwok node (kwok manages nodes with this annotation) for the benchmark's pods, or a GPU node."""
    labels = {"kubernetes.io/hostname": name, "type": "kwok", BENCH_LABEL: "true"}
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": str(pods)}
    if gpu_product:
        labels.update({"nvidia.com/gpu.product": gpu_product, "nvidia.com/gpu.count": "8"})
        capacity["nvidia.com/gpu"] = "8"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def make_namespaces(core: client.CoreV1Api, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}-{uuid.uuid4().hex[:5]}-{i}" for i in range(count)]
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={BENCH_LABEL: "1"})))
    return names


def bench_namespaces(core: client.CoreV1Api) -> list[str]:
    """Namespaces this benchmark made that still exist (terminating ones included)."""
    return [ns.metadata.name for ns in core.list_namespace(label_selector=BENCH_LABEL).items]


def count_ready(apps: client.AppsV1Api, namespaces: list[str]) -> int:
    total = 0
    for ns in namespaces:
        total += sum(1 for d in apps.list_namespaced_deployment(ns).items if (d.status.available_replicas or 0) >= 1)
    return total


def run_peer(api: client.ApiClient, count: int, namespaces: list[str]) -> dict[str, float]:
    """The same children, applied straight from a client: what any controller must at least wait for."""
    apps = client.AppsV1Api(api)
    kube = Kube(api)
    start = time.monotonic()
    for i in range(count):
        ns = namespaces[i % len(namespaces)]
        spec = NIMServiceSpec.model_validate(spec_of(i))
        for child in render_children(Owner(f"svc-{i}", ns, "none"), spec, Placement(profile=None)):
            if child.body is not None:
                child.body["metadata"].pop("ownerReferences")  # no owner exists in the peer run
                kube.apply(child.body)
    applied = time.monotonic() - start
    wait(lambda: count_ready(apps, namespaces) >= count, 1200, "peer deployments")
    return {"children_s": applied, "ready_s": time.monotonic() - start}


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(nim_operator_(?:api_writes|api_reads|reconciles|queued)_total)(\{[^}]*\})? ([0-9.e+]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
            if m.group(2):
                key = f"{m.group(1)}{m.group(2)}"
                totals[key] = totals.get(key, 0.0) + float(m.group(3))
    return totals


def child_writes(totals: dict[str, float]) -> float:
    """Applies of children (the work the peer does too), as opposed to status, Events and dry runs."""
    return sum(v for k, v in totals.items() if k.startswith("nim_operator_api_writes_total{") and 'verb="apply"' in k)


def start_operator(port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nim_operator", "run", "--standalone", "--metrics-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    wait(lambda: _up(port), 120, "operator metrics endpoint")
    return proc


def _up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


class ProcessStats:
    """What the kernel says of the operator process: its memory (peak or now) and CPU time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self, field: str = "VmHWM") -> float:
        """MB of ``field`` in /proc/PID/status: the peak (VmHWM) or the resident memory now (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssTimeline:
    """The operator's resident memory sampled twice a second, to say *when* the peak happens."""

    def __init__(self, pid: int) -> None:
        self.started = time.monotonic()
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(ProcessStats(pid),), daemon=True)
        self._thread.start()

    def _sample(self, rss: ProcessStats) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic() - self.started, rss.read("VmRSS")))

    def stop(self) -> tuple[float, float]:
        """(seconds after start, MB) of the highest sample."""
        self._stop.set()
        self._thread.join()
        return max(self.samples, key=lambda sample: sample[1], default=(float("nan"), float("nan")))


def all_ready(custom: client.CustomObjectsApi, namespaces: list[str], count: int) -> bool:
    ready = 0
    for ns in namespaces:
        items = custom.list_namespaced_custom_object("apps.nimoperator.dev", "v1alpha1", ns, "nimservices")["items"]
        ready += sum(1 for o in items if (o.get("status") or {}).get("state") == "Ready")
    return ready >= count


def create_services(custom: client.CustomObjectsApi, namespaces: list[str], count: int) -> None:
    """All at once: a few client threads, as a GitOps tool syncing a large repository would."""

    def create(indexes: range) -> None:
        for i in indexes:
            body = {
                "apiVersion": "apps.nimoperator.dev/v1alpha1",
                "kind": "NIMService",
                "metadata": {"name": f"svc-{i}"},
                "spec": spec_of(i),
            }
            custom.create_namespaced_custom_object(
                "apps.nimoperator.dev", "v1alpha1", namespaces[i % len(namespaces)], "nimservices", body
            )

    threads = [threading.Thread(target=create, args=(range(t, count, 4),)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_operator(api: client.ApiClient, count: int, namespaces: list[str], idle: float) -> dict[str, float]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    log = REPO / ".cache" / "bench-operator.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    port = 18091
    proc = start_operator(port, log)
    try:
        timeline = RssTimeline(proc.pid)
        start = timeline.started
        create_services(custom, namespaces, count)
        created = time.monotonic() - start
        apps = client.AppsV1Api(api)
        wait(lambda: count_ready(apps, namespaces) >= count, 1800, "all Deployments available")
        deployments_ready = time.monotonic() - start
        wait(lambda: all_ready(custom, namespaces, count), 1800, "all NIMServices Ready")
        ready = time.monotonic() - start
        time.sleep(5)
        first = scrape(port)
        stats = ProcessStats(proc.pid)
        rss, rss_when_ready, cpu = stats.read(), stats.read("VmRSS"), stats.cpu_seconds()
        peak_at, peak_sampled = timeline.stop()
        # Idle, with heartbeats; a GPU node of a new product joins halfway and leaves at the end.
        time.sleep(idle / 2)
        core.create_node(bench_node("bench-gpu-join", pods=110, gpu_product="NVIDIA-A100-SXM4-80GB"))
        time.sleep(idle / 2)
        core.delete_node("bench-gpu-join")
        time.sleep(5)
        after_idle = scrape(port)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    # A restart is the strongest no-op resync: every service is resumed and must cost no write.
    proc = start_operator(port, log)
    try:
        wait(lambda: scrape(port).get("nim_operator_reconciles_total", 0) >= count, 600, "the resume of every service")
        time.sleep(10)
        resync = scrape(port)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    writes = first.get("nim_operator_api_writes_total", 0)
    return {
        "create_s": created,
        "ready_s": ready,
        "deployments_ready_s": deployments_ready,
        "peak_rss_mb": rss,
        "cpu_s": cpu,
        "reconciles_per_service": first.get("nim_operator_reconciles_total", 0) / count,
        "writes_per_service": writes / count,
        "child_applies_per_service": child_writes(first) / count,
        "other_writes_per_service": (writes - child_writes(first)) / count,
        "reads_per_service": first.get("nim_operator_api_reads_total", 0) / count,
        "writes_per_service_by_kind_verb": {key: round(v / count, 3) for key, v in writes_by_kind_verb(first).items()},
        "idle_s": idle,
        "idle_writes": after_idle.get("nim_operator_api_writes_total", 0) - writes,
        "idle_reconciles": after_idle.get("nim_operator_reconciles_total", 0)
        - first.get("nim_operator_reconciles_total", 0),
        **{
            "idle_queued_" + k.split('"')[1]: v - first.get(k, 0)
            for k, v in after_idle.items()
            if k.startswith("nim_operator_queued_total{") and v - first.get(k, 0) > 0
        },
        "restart_reconciles": resync.get("nim_operator_reconciles_total", 0),
        "restart_writes": resync.get("nim_operator_api_writes_total", 0),
        "restart_reads": resync.get("nim_operator_api_reads_total", 0),
        "restart_writes_by_kind_verb": writes_by_kind_verb(resync),
        "restart_reads_by_kind": by_labels(resync, "nim_operator_api_reads_total"),
        "idle_writes_by_kind_verb": writes_by_kind_verb(after_idle, since=first),
        "rss_when_ready_mb": rss_when_ready,
        "rss_sampled_peak_mb": peak_sampled,
        "rss_sampled_peak_at_s": peak_at,
    }


def by_labels(totals: dict[str, float], metric: str, since: dict[str, float] | None = None) -> dict[str, float]:
    """A counter of the operator by its labels, e.g. ``{"kind=Event,verb=create": 1050.0}``; with ``since``,
    what it counted after that scrape."""
    before = since or {}
    counted = {
        k.partition("{")[2].rstrip("}").replace('"', ""): v - before.get(k, 0)
        for k, v in totals.items()
        if k.startswith(metric + "{")
    }
    return {k: v for k, v in counted.items() if v}


def writes_by_kind_verb(totals: dict[str, float], since: dict[str, float] | None = None) -> dict[str, float]:
    return by_labels(totals, "nim_operator_api_writes_total", since)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--idle", type=float, default=600.0, help="seconds of idling after all are Ready")
    args = parser.parse_args()
    subprocess.run([str(REPO / "tests" / "cluster" / "up.sh")], check=True, stdout=subprocess.DEVNULL)
    kubectl = [str(REPO / ".venv" / "bin" / "kubectl"), "--kubeconfig", str(KUBECONFIG)]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    core = client.CoreV1Api(api)
    room = max(110, 2 * args.count // 10 + 50)
    core.delete_collection_node(label_selector=BENCH_LABEL)  # left by an interrupted run
    wait(lambda: not core.list_node(label_selector=BENCH_LABEL).items, 120, "old bench nodes to go")
    for n in range(10):
        core.create_node(bench_node(f"bench-node-{n}", pods=room))
    wait(lambda: not bench_namespaces(core), 900, "namespaces of an earlier run to go")
    load_before = os.getloadavg()[0]
    try:
        peer_ns = make_namespaces(core, "bench-peer", args.namespaces)
        peer = run_peer(api, args.count, peer_ns)
        for ns in peer_ns:
            core.delete_namespace(ns)
        # The peer's children carry our labels: an operator started beside them would list and watch a
        # thousand objects it does not own, and its memory would say so.
        wait(lambda: not bench_namespaces(core), 900, "the peer's namespaces to go")
        ours_ns = make_namespaces(core, "bench-op", args.namespaces)
        ours = run_operator(api, args.count, ours_ns, args.idle)
        for ns in ours_ns:
            core.delete_namespace(ns)
    finally:
        core.delete_collection_node(label_selector=BENCH_LABEL)
    print(f"{args.count} services in {args.namespaces} namespaces   operator   direct apply (peer)")
    print(f"all Ready (s)                       {ours['ready_s']:>8.1f}   {peer['ready_s']:>8.1f}")
    print(f"  of which every Deployment available {ours['deployments_ready_s']:>6.1f}")
    print(
        f"operator peak RSS (MB)              {ours['peak_rss_mb']:>8.1f}   target < 200 "
        f"(resident when all Ready: {ours['rss_when_ready_mb']:.1f}; highest sample "
        f"{ours['rss_sampled_peak_mb']:.1f} at {ours['rss_sampled_peak_at_s']:.0f} s, creates done at "
        f"{ours['create_s']:.0f} s)"
    )
    print(
        f"API writes / service                {ours['writes_per_service']:>8.2f}   "
        f"({ours['child_applies_per_service']:.2f} child applies, the peer's work too; "
        f"{ours['other_writes_per_service']:.2f} status, Events, dry runs: target <= 3)"
    )
    print("  by kind and verb:", ours["writes_per_service_by_kind_verb"])
    print(f"API reads / service                 {ours['reads_per_service']:>8.2f}")
    print(f"reconciles / service                {ours['reconciles_per_service']:>8.2f}")
    print(f"operator CPU until all Ready (s)    {ours['cpu_s']:>8.1f}")
    print(
        f"idle {ours['idle_s']:.0f} s (heartbeats, a GPU node joining and leaving): "
        f"{ours['idle_writes']:.0f} writes, {ours['idle_reconciles']:.0f} reconciles"
    )
    print("  queued during idle, by trigger:", {k[12:]: v for k, v in ours.items() if k.startswith("idle_queued_")})
    print("  idle writes by kind and verb:", ours["idle_writes_by_kind_verb"])
    print(
        f"restart over {args.count} Ready services: {ours['restart_writes']:.0f} writes (target 0), "
        f"{ours['restart_reads']:.0f} reads, {ours['restart_reconciles']:.0f} reconciles"
    )
    print("  restart writes by kind and verb:", ours["restart_writes_by_kind_verb"])
    print("  restart reads by kind:", ours["restart_reads_by_kind"])
    ratio = ours["ready_s"] / peer["ready_s"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "count": args.count,
                "namespaces": args.namespaces,
                "operator": ours,
                "peer": peer,
                "ratio": ratio,
                "machine": f"{os.cpu_count()} cores",
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "when": time.strftime("%Y-%m-%d"),
            },
            indent=2,
        )
    )
    print(f"load average (1 min) at start / end: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"headline: time to all Ready, operator / direct apply = {ratio:.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
