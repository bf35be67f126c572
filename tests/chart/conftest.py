"""Helpers for the chart tests: helm and kubectl as subprocesses, ServiceAccount credentials, releases.

The chart's RBAC is proven by acting as its ServiceAccount: a token from the TokenRequest API, the
cluster's server and CA from the admin kubeconfig. Nothing here runs as admin except setup and cleanup.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.conftest import REPO, Cluster, free_port
from tests.operator.conftest import healthy, wait_for

CHART = REPO / "charts" / "nim-operator"
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
SAMPLE = REPO / "examples" / "smollm2.yaml"
# `helm template` renders offline against a default Kubernetes version; helm built from Go modules
# (tests/cluster/build.sh) defaults to v1.20, older than the chart's kubeVersion, so renders name one.
RENDER_KUBE_VERSION = "v1.33.0"


def helm_binary() -> Path:
    """helm from the venv (tests/cluster/build.sh links it there), else NIM_HELM, else PATH."""
    candidates = [REPO / ".venv" / "bin" / "helm", Path(os.environ.get("NIM_HELM", "/nonexistent"))]
    found = shutil.which("helm")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("helm not found: run tests/cluster/build.sh (it builds helm and links .venv/bin/helm)")


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/nim-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/nim-helm/config",
        "HELM_DATA_HOME": "/tmp/nim-helm/data",
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    if args[0] == "template":
        args = ("template", f"--kube-version={RENDER_KUBE_VERSION}", *args[1:])
    proc = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kubectl(
    *args: str, kubeconfig: Path, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_flags(values: dict[str, Any]) -> list[str]:
    """``--set-json key=value`` flags, so lists and booleans keep their types."""
    import json

    return [flag for key, value in values.items() for flag in ("--set-json", f"{key}={json.dumps(value)}")]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def apply_chart_crds(cluster: Cluster) -> None:
    """Install the chart's CRDs (NIMService, NIMCache and kopf's peerings) as Helm would, and wait until served."""
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=nim-operator-chart",
        "-f",
        str(CHART / "crds"),
        kubeconfig=cluster.kubeconfig,
    )
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/nimservices.apps.nimoperator.dev",
        "crd/nimcaches.apps.nimoperator.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
        kubeconfig=cluster.kubeconfig,
    )


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig authenticating as ServiceAccount ``namespace/name`` with a fresh bound token."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = client.CoreV1Api(cluster.api).create_namespaced_service_account_token(name, namespace, request)
    assert token.status is not None, f"no token issued for {namespace}/{name}"
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": server["server"],
                            "certificate-authority-data": server["certificate-authority-data"],
                        },
                    }
                ],
                "users": [{"name": name, "user": {"token": token.status.token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "local", "user": name, "namespace": namespace}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def api_for(kubeconfig: Path) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
    return api


def can_i(
    api: client.ApiClient,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> bool:
    """Ask the API server (SelfSubjectAccessReview) whether the caller may do this."""
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, namespace=namespace, name=name, subresource=subresource
            )
        )
    )
    result = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return result.status is not None and bool(result.status.allowed)


@dataclass
class Release:
    name: str
    namespace: str
    values: dict[str, Any]

    @property
    def fullname(self) -> str:
        return self.name if "nim-operator" in self.name else f"{self.name}-nim-operator"


@contextmanager
def installed(cluster: Cluster, values: dict[str, Any], *, chart: Path = CHART) -> Iterator[Release]:
    """``helm install --wait`` into a fresh namespace; uninstalled and the namespace deleted afterwards."""
    release = Release(unique("nimop"), unique("nim-system"), values)
    helm(
        "install",
        release.name,
        str(chart),
        "--namespace",
        release.namespace,
        "--create-namespace",
        "--wait",
        "--timeout=90s",
        *set_flags(values),
        kubeconfig=cluster.kubeconfig,
    )
    try:
        yield release
    finally:
        helm(
            "uninstall",
            release.name,
            "--namespace",
            release.namespace,
            "--wait",
            "--timeout=60s",
            kubeconfig=cluster.kubeconfig,
            check=False,
        )
        try:
            client.CoreV1Api(cluster.api).delete_namespace(release.namespace, propagation_policy="Background")
        except client.ApiException as err:
            if err.status != 404:
                raise


@pytest.fixture
def make_namespace(cluster: Cluster) -> Iterator[Callable[[], str]]:
    """Extra throwaway namespaces (the shared ``namespace`` fixture gives only one)."""
    core = client.CoreV1Api(cluster.api)
    made: list[str] = []

    def make() -> str:
        name = unique("t")
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"nim-operator.dev/test": "true"}))
        )
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as err:
            if err.status != 404:
                raise


def deployment_args(cluster: Cluster, release: Release) -> list[str]:
    """The operator's command line exactly as the chart's Deployment gives it."""
    deployment = client.AppsV1Api(cluster.api).read_namespaced_deployment(release.fullname, release.namespace)
    pod: dict[str, Any] = cluster.api.sanitize_for_serialization(deployment)["spec"]["template"]["spec"]
    args: list[str] = pod["containers"][0]["args"]
    return args


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
            body: bytes = response.read()
            return body.decode()


@contextmanager
def operator_as(kubeconfig: Path, chart_args: Sequence[str], log: Path, *, pod_id: str) -> Iterator[OperatorProcess]:
    """Run ``python -m nim_operator`` with the chart's arguments and the given (ServiceAccount) kubeconfig.

    Only the listen addresses are moved to free local ports; everything else (peering, namespaces, log
    format) is what the chart would run in the pod. POD_ID is kopf's peering identity, as in the pod.
    """
    health, metrics = free_port(), free_port()
    args = [a for a in chart_args if not a.startswith(("--liveness", "--metrics-port"))]
    args += [f"--liveness=http://127.0.0.1:{health}/healthz", f"--metrics-port={metrics}"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_ID": pod_id}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nim_operator", *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
    try:
        wait_for(lambda: proc.poll() is not None or healthy(health), timeout=60, what="the operator's /healthz")
        if proc.poll() is not None:
            pytest.fail(f"the operator exited at start:\n{log.read_text()}")
        yield OperatorProcess(proc, log, metrics)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# RBAC denials always read "... is forbidden: User \"system:serviceaccount:...\" cannot <verb> resource ...";
# other 403s (e.g. NamespaceTerminating while a namespace is deleted) are not about permissions.
_DENIED = re.compile(r"cannot [a-z]+ resource|Not enough permissions")


def forbidden_lines(log: str) -> list[str]:
    """Lines of an operator log that report an RBAC denial (from the API server or kopf's own checks)."""
    return [line for line in log.splitlines() if _DENIED.search(line)]


def sample_nimservice() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    return body
