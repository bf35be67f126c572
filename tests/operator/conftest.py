"""The operator under test: the CRD installed and `nim-operator run` as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, utils

from tests.conftest import REPO, Cluster, free_port

T = TypeVar("T")
CRD = REPO / "crds" / "apps.nimoperator.dev_nimservices.yaml"
CACHE_CRD = REPO / "crds" / "apps.nimoperator.dev_nimcaches.yaml"


def wait_for(probe: Callable[[], T | None], *, timeout: float = 60, what: str = "condition") -> T:
    """Poll until ``probe`` returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def install_crd(api: client.ApiClient, path: Path = CRD) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(path.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as err:
        if err.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or [])
        ),
        what=f"the CRD {body['metadata']['name']} to be established",
    )


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Cluster:
    install_crd(cluster.api)
    install_crd(cluster.api, CACHE_CRD)
    return cluster


class OperatorProcess:
    """`nim-operator run` as a real process, which fault tests may kill and start again."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = free_port()
        # A short resync, so that tests also see what a resync does (and that it writes nothing).
        env = {"NIM_OPERATOR_RESYNC_SECONDS": "15", **os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nim_operator",
                    "run",
                    "--standalone",
                    "--verbose",
                    "--liveness",
                    f"http://127.0.0.1:{port}/healthz",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or healthy(port), timeout=60, what="the operator's liveness endpoint")
        if proc.poll() is not None:
            pytest.fail(f"the operator exited at start:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no chance to finish what it was doing, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def operator_process(crd: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for the session, watching all namespaces, as `nim-operator run` runs it."""
    operator = OperatorProcess(crd.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def healthy(port: int) -> bool:
    """Whether kopf's liveness endpoint on this port answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class NIM:
    """Small helpers to read and write NIMServices in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "apps.nimoperator.dev/v1alpha1",
            "kind": "NIMService",
            "metadata": {"name": name},
            "spec": spec,
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            "apps.nimoperator.dev", "v1alpha1", self.namespace, "nimservices", body
        )
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "apps.nimoperator.dev", "v1alpha1", self.namespace, "nimservices", name
        )
        return result

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "apps.nimoperator.dev", "v1alpha1", self.namespace, "nimservices", name, patch
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            "apps.nimoperator.dev", "v1alpha1", self.namespace, "nimservices", name
        )

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("state") == state and s, timeout=timeout, what=f"{name} to be {state}"
        )

    def deployment(self, name: str) -> client.V1Deployment | None:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise


@pytest.fixture
def nim(cluster: Cluster, operator_process: OperatorProcess, namespace: str) -> NIM:
    return NIM(cluster.api, namespace)


def apply_yaml(api: client.ApiClient, text: str, namespace: str) -> None:
    utils.create_from_yaml(api, yaml_objects=list(yaml.safe_load_all(text)), namespace=namespace)
