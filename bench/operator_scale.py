"""Operator at scale on the local control plane: 200 NIMServices at once.

Peer, measured in the same run: the same children (Deployment, Service, PodDisruptionBudget per
service) applied directly by a plain client. That is the cluster's own floor (scheduler, Deployment
controller, kwok); the headline ratio is how much longer the operator takes to bring everything Ready.

Usage: .venv/bin/python bench/operator_scale.py [--count 200]   (make bench-operator)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
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

KUBECONFIG = REPO / ".cache" / "cluster" / "kubeconfig"
RESULTS = REPO / "bench" / "results" / "operator.json"
# An image we have no manifest for, tolerating every taint: pods spread over all six simulated nodes.
SPEC: dict[str, Any] = {
    "image": {"repository": "bench/echo", "tag": "1"},
    "tolerations": [{"operator": "Exists"}],
}


def wait(probe: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def ready_deployments(apps: client.AppsV1Api, ns: str) -> int:
    return sum(1 for d in apps.list_namespaced_deployment(ns).items if (d.status.available_replicas or 0) >= 1)


def run_peer(api: client.ApiClient, count: int) -> dict[str, float]:
    """The same children, applied straight from a client: what any controller must at least wait for."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns = namespace(core, "bench-peer")
    kube = Kube(api)
    spec = NIMServiceSpec.model_validate(SPEC)
    start = time.monotonic()
    for i in range(count):
        for child in render_children(Owner(f"svc-{i}", ns, "none"), spec, Placement(profile=None)):
            if child.body is not None:
                child.body["metadata"].pop("ownerReferences")  # no owner exists in the peer run
                kube.apply(child.body)
    applied = time.monotonic() - start
    wait(lambda: ready_deployments(apps, ns) >= count, 600, "peer deployments")
    ready = time.monotonic() - start
    core.delete_namespace(ns)
    return {"children_s": applied, "ready_s": ready}


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(nim_operator_(?:api_writes|api_reads|reconciles)_total)(\{[^}]*\})? ([0-9.e+]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
            if "reconciles" in m.group(1) and m.group(2):
                totals[f"reconciles{m.group(2)}"] = float(m.group(3))
    return totals


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
    wait(lambda: _up(port), 60, "operator metrics endpoint")
    return proc


def _up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_operator(api: client.ApiClient, count: int) -> dict[str, float]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom, policy = client.CustomObjectsApi(api), client.PolicyV1Api(api)
    ns = namespace(core, "bench-op")
    log = REPO / ".cache" / "bench-operator.log"
    port = 18091
    proc = start_operator(port, log)
    try:
        start = time.monotonic()
        for i in range(count):
            custom.create_namespaced_custom_object(
                "apps.nimoperator.dev",
                "v1alpha1",
                ns,
                "nimservices",
                {
                    "apiVersion": "apps.nimoperator.dev/v1alpha1",
                    "kind": "NIMService",
                    "metadata": {"name": f"svc-{i}"},
                    "spec": SPEC,
                },
            )
        created = time.monotonic() - start

        def children_exist() -> bool:
            return (
                len(apps.list_namespaced_deployment(ns).items) >= count
                and len(core.list_namespaced_service(ns).items) >= count
                and len(policy.list_namespaced_pod_disruption_budget(ns).items) >= count
            )

        def all_ready() -> bool:
            items = custom.list_namespaced_custom_object("apps.nimoperator.dev", "v1alpha1", ns, "nimservices")
            return sum(1 for o in items["items"] if (o.get("status") or {}).get("state") == "Ready") >= count

        wait(children_exist, 600, "all children")
        children = time.monotonic() - start
        wait(all_ready, 600, "all NIMServices Ready")
        ready = time.monotonic() - start
        time.sleep(3)
        first = scrape(port)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # A restart is the strongest no-op resync: every service is resumed and must cost no write.
    proc = start_operator(port, log)
    try:
        wait(lambda: scrape(port).get("nim_operator_reconciles_total", 0) >= count, 300, "resume of every service")
        time.sleep(5)
        resync = scrape(port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        core.delete_namespace(ns)
    return {
        "create_s": created,
        "children_s": children,
        "ready_s": ready,
        "peak_rss_mb": rss,
        "writes_per_service": first.get("nim_operator_api_writes_total", 0) / count,
        "reads_per_service": first.get("nim_operator_api_reads_total", 0) / count,
        "resync_reconciles": resync.get("nim_operator_reconciles_total", 0),
        "resync_writes": resync.get("nim_operator_api_writes_total", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    subprocess.run([str(REPO / "tests" / "cluster" / "up.sh")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "kubectl"),
            "--kubeconfig",
            str(KUBECONFIG),
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(REPO / "crds"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    load_before = os.getloadavg()[0]
    peer = run_peer(api, args.count)
    ours = run_operator(api, args.count)
    rows = [
        ("children exist (s)", ours["children_s"], peer["children_s"]),
        ("all Ready (s)", ours["ready_s"], peer["ready_s"]),
    ]
    print(f"{args.count} services              operator      direct apply (peer)")
    for label, a, b in rows:
        print(f"{label:<26}{a:>10.1f}{b:>16.1f}")
    print(f"operator peak RSS (MB)    {ours['peak_rss_mb']:>10.1f}   target < 150")
    print(f"API writes / service      {ours['writes_per_service']:>10.2f}   (dry-run + apply + status)")
    print(f"API reads / service       {ours['reads_per_service']:>10.2f}")
    print(
        f"writes in no-op resync    {ours['resync_writes']:>10.0f}   over {ours['resync_reconciles']:.0f} reconciles"
        " (target 0)"
    )
    ratio = ours["ready_s"] / peer["ready_s"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "count": args.count,
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
    print(f"headline: time to all Ready, operator / direct apply = {ratio:.2f} (target: all Ready < 60 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
