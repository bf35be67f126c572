"""The chart on the real control plane, with the operator acting as the chart's ServiceAccount.

Sufficiency: `nim-operator run` with the Deployment's own arguments and a token of the chart's
ServiceAccount reconciles a NIMService to Ready, and its log has no authorization failure.
Minimality: the API server itself (SelfSubjectAccessReview with that token) says what it may not do.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.chart.conftest import (
    CHART,
    Release,
    api_for,
    apply_chart_crds,
    can_i,
    deployment_args,
    forbidden_lines,
    helm,
    installed,
    kubectl,
    operator_as,
    sample_nimservice,
    service_account_kubeconfig,
    set_flags,
)
from tests.conftest import Cluster
from tests.operator.conftest import NIM, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

NIMSERVICES = "nimservices"
GROUP = "apps.nimoperator.dev"
NIM_CRD = "nimservices.apps.nimoperator.dev"


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Cluster:
    apply_chart_crds(cluster)
    return cluster


@pytest.fixture(scope="module")
def clusterwide(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Release, Path]]:
    """One cluster-wide install (the default values) and a kubeconfig for its ServiceAccount."""
    with installed(crds, {}) as release:
        path = tmp_path_factory.mktemp("sa") / "kubeconfig"
        yield release, service_account_kubeconfig(crds, release.namespace, release.fullname, path)


def _plain(cluster: Cluster, obj: object) -> dict[str, Any]:
    """A client model as the API's own JSON shape (camelCase keys, no None fields)."""
    plain: dict[str, Any] = cluster.api.sanitize_for_serialization(obj)
    return plain


def _metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _reconciled(log: str, namespace: str, name: str) -> int:
    """How often this operator's log (JSON lines, as the chart runs it) says it changed namespace/name (the
    reconciler logs every reconcile that applied, deleted or failed)."""
    prefix = f"reconciled {namespace}/{name}: "
    count = 0
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("message", "")).startswith(prefix):
            count += 1
    return count


def _skip_if_someone_else_reconciled(log: str, namespace: str, name: str) -> None:
    """If this process never reconciled the object (another operator's status write reached it first and
    left nothing to do), the test cannot tell whether its permissions would have sufficed."""
    if not _reconciled(log, namespace, name):
        pytest.skip(f"another nim-operator on this cluster reconciled {namespace}/{name} first; stop it and re-run")


def test_rendered_manifests_pass_the_api_servers_dry_run(crds: Cluster, make_namespace: Callable[[], str]) -> None:
    watched = [make_namespace(), make_namespace()]
    for values in ({}, {"watchNamespaces": watched}, {"replicaCount": 2}):
        rendered = helm("template", "dry", str(CHART), "--namespace", "default", *set_flags(values)).stdout
        proc = kubectl("apply", "--dry-run=server", "-f", "-", kubeconfig=crds.kubeconfig, stdin=rendered)
        kinds = {line.split("/")[0] for line in proc.stdout.splitlines()}
        assert {"deployment.apps", "serviceaccount", "clusterrole.rbac.authorization.k8s.io"} <= kinds, proc.stdout


def test_install_creates_everything(crds: Cluster, clusterwide: tuple[Release, Path]) -> None:
    release, _ = clusterwide
    name, ns = release.fullname, release.namespace
    apps, core, rbac = client.AppsV1Api(crds.api), client.CoreV1Api(crds.api), client.RbacAuthorizationV1Api(crds.api)
    deployment = _plain(crds, apps.read_namespaced_deployment(name, ns))
    assert deployment["status"]["availableReplicas"] == 1  # kwok runs the pod; the controllers count it
    assert core.read_namespaced_service_account(name, ns)
    assert _plain(crds, core.read_namespaced_service(f"{name}-metrics", ns))["spec"]["ports"][0]["port"] == 8081
    assert rbac.read_cluster_role(name).rules
    binding = _plain(crds, rbac.read_cluster_role_binding(name))
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
    peering = _plain(
        crds, client.CustomObjectsApi(crds.api).get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
    )
    assert peering["metadata"]["name"] == name
    notes = helm("get", "notes", release.name, "-n", ns, kubeconfig=crds.kubeconfig).stdout
    assert "kind: NIMService" in notes
    assert f"deployment/{name}" in notes


def test_operator_reconciles_with_only_the_charts_permissions(
    crds: Cluster, clusterwide: tuple[Release, Path], namespace: str, tmp_path: Path
) -> None:
    release, kubeconfig = clusterwide
    args = deployment_args(crds, release)
    assert f"--peering={release.fullname}" in args
    nim = NIM(crds.api, namespace)
    with operator_as(kubeconfig, args, tmp_path / "operator.log", pod_id=f"{release.fullname}-0") as operator:
        nim.create("smollm2", sample_nimservice()["spec"])
        nim.wait_state("smollm2", "Ready", timeout=90)
        deployment = nim.deployment("smollm2")
        assert deployment is not None
        assert _plain(crds, deployment)["metadata"]["ownerReferences"][0]["kind"] == "NIMService"
        time.sleep(1)  # the handler's success line follows its last write
        _skip_if_someone_else_reconciled(operator.log_text(), namespace, "smollm2")
        # The optional-child path: autoscaling on creates an HPA, off deletes it (get + delete).
        autoscaling = client.AutoscalingV2Api(crds.api)
        nim.patch("smollm2", {"spec": {"scale": {"enabled": True, "hpa": {"minReplicas": 1, "maxReplicas": 2}}}})
        wait_for(
            lambda: autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items,
            what="the operator to create the HPA",
        )
        nim.patch("smollm2", {"spec": {"scale": {"enabled": False}}})
        wait_for(
            lambda: not autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items,
            what="the operator to delete the HPA",
        )
        time.sleep(1)
        if _reconciled(operator.log_text(), namespace, "smollm2") >= 3:  # create + both updates were ours
            writes = operator.metrics()
            assert _metric(writes, "nim_operator_api_writes_total", 'kind="HorizontalPodAutoscaler",verb="apply"') >= 1
            assert _metric(writes, "nim_operator_api_writes_total", 'kind="HorizontalPodAutoscaler",verb="delete"') >= 1
        nim.delete("smollm2")
    log = operator.log_text()
    assert "reconcile" in log
    assert forbidden_lines(log) == [], "\n".join(forbidden_lines(log))


def test_routes_and_the_endpoint_picker_with_only_the_charts_permissions(
    crds: Cluster, clusterwide: tuple[Release, Path], namespace: str, tmp_path: Path
) -> None:
    """The router's children, the picker's Role among them: the API server lets the operator create a Role
    only with permissions it holds itself, so this proves the chart grants those too."""
    release, kubeconfig = clusterwide
    nim = NIM(crds.api, namespace)
    epp_image = {"repository": "registry.k8s.io/gateway-api-inference-extension/epp", "tag": "v1.3.1"}
    router = {
        "hostDomainName": "example.com",
        "gateway": {"name": "absent", "namespace": namespace},
        "eppConfig": {"containerSpec": {"name": "epp", "image": epp_image}, "config": {"plugins": []}},
    }
    spec = {
        **sample_nimservice()["spec"],
        "router": router,
        "proxy": {"httpsProxy": "http://proxy:3128", "certConfigMap": "corp-ca"},
        "initContainers": [{"name": "fetch", "image": {"repository": "busybox", "tag": "1.36"}}],
    }
    rbac = client.RbacAuthorizationV1Api(crds.api)
    with operator_as(
        kubeconfig, deployment_args(crds, release), tmp_path / "operator.log", pod_id=f"{release.fullname}-0"
    ) as operator:
        nim.create("routed", spec)
        status = nim.wait_state("routed", "Ready", timeout=90)
        time.sleep(1)
        _skip_if_someone_else_reconciled(operator.log_text(), namespace, "routed")
        routed = next(c for c in status["conditions"] if c["type"] == "Routed")
        assert routed["reason"] == "GatewayNotFound", "the Gateway was read (get on gateways)"
        assert rbac.read_namespaced_role("routed-epp", namespace).rules
        nim.patch("routed", {"spec": {"router": None}})
        wait_for(
            lambda: not rbac.list_namespaced_role(namespace).items, what="the operator to delete the picker's Role"
        )
        nim.delete("routed")
    log = operator.log_text()
    assert forbidden_lines(log) == [], "\n".join(forbidden_lines(log))


def test_two_replicas_share_the_work_through_peering(
    crds: Cluster, clusterwide: tuple[Release, Path], namespace: str, tmp_path: Path
) -> None:
    """replicaCount: 2 runs two identical pods; exactly one of them may reconcile, and one must."""
    release, kubeconfig = clusterwide
    args = deployment_args(crds, release)
    nim = NIM(crds.api, namespace)
    with (
        operator_as(kubeconfig, args, tmp_path / "a.log", pod_id=f"{release.fullname}-a") as first,
        operator_as(kubeconfig, args, tmp_path / "b.log", pod_id=f"{release.fullname}-b") as second,
    ):
        # Both must know of each other before there is work, or the first could act alone for a moment.
        peerings = client.CustomObjectsApi(crds.api)

        def peers() -> int:
            peering = _plain(
                crds, peerings.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", release.fullname)
            )
            return len(peering.get("status") or {})

        wait_for(
            lambda: peers() == 2,
            what="both replicas in the peering",
        )
        time.sleep(2)  # for each to process the other's keep-alive
        # Counted from here: before the second joined, the first may have reconciled other NIMServices.
        before = [_metric(op.metrics(), "nim_operator_reconciles_total", 'result="applied"') for op in (first, second)]
        nim.create("smollm2", sample_nimservice()["spec"])
        nim.wait_state("smollm2", "Ready", timeout=45)
        after = [_metric(op.metrics(), "nim_operator_reconciles_total", 'result="applied"') for op in (first, second)]
        time.sleep(1)
        _skip_if_someone_else_reconciled(first.log_text() + second.log_text(), namespace, "smollm2")
        assert sorted(a > b for a, b in zip(after, before, strict=True)) == [False, True], (before, after)


def test_service_account_cannot_do_what_the_operator_never_does(clusterwide: tuple[Release, Path]) -> None:
    release, kubeconfig = clusterwide
    api = api_for(kubeconfig)
    # Controls: what the operator needs is allowed, so the denials below are not a broken token.
    assert can_i(api, "patch", "deployments", group="apps", namespace="anywhere")
    assert can_i(api, "patch", NIMSERVICES, group=GROUP, subresource="status", namespace="anywhere")
    assert can_i(api, "list", "nodes")
    assert can_i(api, "watch", "pods", namespace="anywhere")
    assert can_i(api, "get", "pods", subresource="log", namespace="anywhere")  # NIMCache download progress
    assert can_i(api, "patch", "clusterkopfpeerings", group="kopf.dev", name=release.fullname)
    denied: list[tuple[str, str, dict[str, Any]]] = [
        ("get", "secrets", {}),
        ("list", "secrets", {}),
        ("watch", "secrets", {}),
        ("get", "secrets", {"namespace": release.namespace}),
        ("list", "secrets", {"namespace": "default"}),
        ("delete", "nodes", {}),
        ("patch", "nodes", {}),
        ("create", "clusterroles", {"group": "rbac.authorization.k8s.io"}),
        # Roles and RoleBindings it may write (the endpoint picker's), but never bind or escalate beyond what
        # it holds, and never cluster-wide.
        ("bind", "roles", {"group": "rbac.authorization.k8s.io", "namespace": "default"}),
        ("escalate", "roles", {"group": "rbac.authorization.k8s.io", "namespace": "default"}),
        ("create", "clusterrolebindings", {"group": "rbac.authorization.k8s.io"}),
        ("patch", "namespaces", {}),
        ("delete", "namespaces", {}),
        ("create", "pods", {"namespace": "default"}),
        ("patch", "pods", {"namespace": "default"}),
        ("delete", "pods", {"namespace": "default"}),
        ("create", "pods", {"namespace": "default", "subresource": "eviction"}),
        ("create", "pods", {"namespace": "default", "subresource": "exec"}),
        ("create", "serviceaccounts", {"namespace": "default", "subresource": "token"}),
        ("create", NIMSERVICES, {"group": GROUP, "namespace": "default"}),
        ("delete", NIMSERVICES, {"group": GROUP, "namespace": "default"}),
        ("update", NIMSERVICES, {"group": GROUP, "namespace": "default"}),
        ("patch", NIMSERVICES, {"group": GROUP, "namespace": "default"}),
        ("patch", "customresourcedefinitions", {"group": "apiextensions.k8s.io", "name": NIM_CRD}),
        ("delete", "customresourcedefinitions", {"group": "apiextensions.k8s.io"}),
        ("patch", "clusterkopfpeerings", {"group": "kopf.dev", "name": "someone-elses"}),
        ("delete", "clusterkopfpeerings", {"group": "kopf.dev", "name": release.fullname}),
        ("patch", "gateways", {"group": "gateway.networking.k8s.io", "namespace": "default"}),
        ("impersonate", "users", {}),
    ]
    allowed = [(verb, resource, extra) for verb, resource, extra in denied if can_i(api, verb, resource, **extra)]
    assert allowed == []


def test_namespaced_mode_acts_only_in_its_namespaces(
    crds: Cluster, make_namespace: Callable[[], str], tmp_path: Path
) -> None:
    watched, other = [make_namespace(), make_namespace()], make_namespace()
    with installed(crds, {"watchNamespaces": watched}) as release:
        rbac = client.RbacAuthorizationV1Api(crds.api)
        assert [_plain(crds, r)["metadata"]["name"] for ns in watched for r in rbac.list_namespaced_role(ns).items] == [
            release.fullname,
            release.fullname,
        ]
        kubeconfig = service_account_kubeconfig(crds, release.namespace, release.fullname, tmp_path / "kubeconfig")
        api = api_for(kubeconfig)
        for ns in watched:
            assert can_i(api, "create", "deployments", group="apps", namespace=ns)
            assert can_i(api, "patch", "kopfpeerings", group="kopf.dev", namespace=ns, name=release.fullname)
        for ns in (other, release.namespace, "default"):
            assert not can_i(api, "create", "deployments", group="apps", namespace=ns), ns
            assert not can_i(api, "list", NIMSERVICES, group=GROUP, namespace=ns), ns
        assert not can_i(api, "list", NIMSERVICES, group=GROUP)  # cluster-wide
        assert not can_i(api, "create", "events")
        assert not can_i(api, "patch", "clusterkopfpeerings", group="kopf.dev", name=release.fullname)
        assert can_i(api, "watch", "nodes")

        args = deployment_args(crds, release)
        assert {f"--namespace={ns}" for ns in watched} <= set(args)
        nim = NIM(crds.api, watched[1])
        with operator_as(kubeconfig, args, tmp_path / "operator.log", pod_id=f"{release.fullname}-0") as operator:
            nim.create("smollm2", sample_nimservice()["spec"])
            nim.wait_state("smollm2", "Ready", timeout=90)
            wait_for(
                lambda: _metric(operator.metrics(), "nim_operator_reconciles_total", 'result="applied"') >= 1,
                what="this operator to apply the children",
            )
        # A restarted operator learns its children with the scoped LISTs the Roles allow (none is re-applied).
        with operator_as(kubeconfig, args, tmp_path / "restart.log", pod_id=f"{release.fullname}-1") as restarted:
            learned = wait_for(
                lambda: re.search(r"learned (\d+) existing children", restarted.log_text()), what="the child cache"
            )
            assert int(learned.group(1)) >= 2  # Deployment, Service (one replica needs no PodDisruptionBudget)
        for log in (operator.log_text(), restarted.log_text()):
            assert forbidden_lines(log) == [], "\n".join(forbidden_lines(log))


def _with_extra_printer_column(chart: Path) -> dict[str, Any]:
    """Edit the copied chart's NIMService CRD the way a new release would (a new printer column)."""
    path = chart / "crds" / "apps.nimoperator.dev_nimservices.yaml"
    crd = yaml.safe_load(path.read_text())
    column = {"name": "Endpoint", "type": "string", "jsonPath": ".status.model.clusterEndpoint", "priority": 1}
    crd["spec"]["versions"][0].setdefault("additionalPrinterColumns", []).append(column)
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return column


def _printer_columns(cluster: Cluster) -> list[str]:
    crd = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(NIM_CRD)
    return [c.name for c in crd.spec.versions[0].additional_printer_columns or []]


def _run_upgrade_job_as_its_service_account(cluster: Cluster, chart: Path, release: Release, tmp_path: Path) -> None:
    """What the hook Job's container does, done here because kwok only pretends to run containers.

    The hook's objects are rendered from the chart and created as they would be; the kubectl arguments
    come from the rendered Job, the files from the ConfigMap as stored in the API server, and the
    credentials are a token of the hook's ServiceAccount, so its RBAC is what is being exercised.
    """
    rendered = helm(
        "template",
        release.name,
        str(chart),
        "--namespace",
        release.namespace,
        "--show-only",
        "templates/crd-upgrade.yaml",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    job = next(d for d in docs if d["kind"] == "Job")
    setup = yaml.safe_dump_all([d for d in docs if d["kind"] != "Job"])
    kubectl("apply", "-f", "-", kubeconfig=cluster.kubeconfig, stdin=setup)
    try:
        spec = job["spec"]["template"]["spec"]
        configmap = client.CoreV1Api(cluster.api).read_namespaced_config_map(
            spec["volumes"][0]["configMap"]["name"], release.namespace
        )
        mount = tmp_path / "crds"
        mount.mkdir()
        for key, text in (configmap.data or {}).items():
            (mount / key).write_text(text)
        kubeconfig = service_account_kubeconfig(
            cluster, release.namespace, spec["serviceAccountName"], tmp_path / "hook-kubeconfig"
        )
        args = [a.replace("=/crds/", f"={mount}/") for a in spec["containers"][0]["args"]]
        kubectl(*args, kubeconfig=kubeconfig)
    finally:
        kubectl("delete", "--ignore-not-found", "-f", "-", kubeconfig=cluster.kubeconfig, stdin=setup)


def test_upgrade_updates_the_crd_and_uninstall_keeps_nimservices(crds: Cluster, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    column = _with_extra_printer_column(chart)
    nim = NIM(crds.api, namespace)
    try:
        with installed(crds, {}) as release:
            nim.create("kept", sample_nimservice()["spec"])
            assert column["name"] not in _printer_columns(crds)
            # The real upgrade: Helm runs the hook (kwok completes its pod) and cleans the hook objects up.
            helm(
                "upgrade",
                release.name,
                str(chart),
                "--namespace",
                release.namespace,
                "--wait",
                "--timeout=90s",
                kubeconfig=crds.kubeconfig,
            )
            hook = f"{release.fullname}-crd-upgrade"
            assert (
                not client.BatchV1Api(crds.api)
                .list_namespaced_job(release.namespace, field_selector=f"metadata.name={hook}")
                .items
            )
            # ... and what the hook's container does, with the hook's own credentials.
            _run_upgrade_job_as_its_service_account(crds, chart, release, tmp_path)
            assert column["name"] in _printer_columns(crds)
        # Uninstalled: the user's NIMService and the CRD are still there, the release's objects are not.
        assert nim.get("kept")["metadata"]["name"] == "kept"
        assert column["name"] in _printer_columns(crds)
        with pytest.raises(client.ApiException) as gone:
            client.RbacAuthorizationV1Api(crds.api).read_cluster_role(release.fullname)
        assert gone.value.status == 404
    finally:
        apply_chart_crds(crds)  # back to the checked-in CRDs for the rest of the session
    assert column["name"] not in _printer_columns(crds)
