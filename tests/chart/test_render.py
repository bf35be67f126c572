"""The chart without a cluster: lint, CRDs in sync, rendered objects, and values the schema rejects."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, helm, set_flags
from tests.conftest import REPO

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    out = helm("template", "nimop", str(CHART), "--namespace", "nim-system", *set_flags(values or {}), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def rule_resources(rules: list[dict[str, Any]]) -> set[str]:
    return {r for rule in rules for r in rule["resources"]}


@pytest.mark.parametrize("values", [{}, NAMESPACED, {"replicaCount": 2}, {"leaderElection": {"enabled": False}}])
def test_lint_is_clean(values: dict[str, Any]) -> None:
    proc = helm("lint", "--strict", str(CHART), *set_flags(values))
    assert "0 chart(s) failed" in proc.stdout, proc.stdout
    assert "[WARNING]" not in proc.stdout, proc.stdout
    assert "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", ["apps.nimoperator.dev_nimservices.yaml", "apps.nimoperator.dev_nimcaches.yaml"])
def test_chart_carries_the_generated_crd_byte_for_byte(name: str) -> None:
    generated = REPO / "crds" / name
    assert (CHART / "crds" / name).read_bytes() == generated.read_bytes(), "run `make crds`"


def test_operator_pod_is_locked_down() -> None:
    deployment = by_kind(render(), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container["image"] == f"ghcr.io/nim-operator/nim-operator:{app_version}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert "--metrics-port=8081" in container["args"]


def test_leader_election_uses_one_peering_object() -> None:
    docs = render({"replicaCount": 2})
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=nimop-nim-operator" in args
    assert "--standalone" not in args
    assert [d["metadata"]["name"] for d in by_kind(docs, "ClusterKopfPeering")] == ["nimop-nim-operator"]
    standalone = render({"leaderElection": {"enabled": False}})
    assert "--standalone" in by_kind(standalone, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not by_kind(standalone, "ClusterKopfPeering")


def test_namespaced_mode_grants_namespaced_resources_only_through_roles() -> None:
    docs = render(NAMESPACED)
    catalog, *roles = sorted(by_kind(docs, "Role"), key=lambda r: not r["metadata"]["name"].endswith("gpu-catalog"))
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    # The GPU catalogue is listed in the operator's own namespace only.
    assert catalog["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    bindings = sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding"))
    assert bindings == sorted(["team-a", "team-b", catalog["metadata"]["namespace"]])
    (cluster_role,) = [d for d in by_kind(docs, "ClusterRole") if not d["metadata"]["name"].endswith("crd-upgrade")]
    # Autoscaler pools are read cluster-wide: they are cluster-scoped (NodePools) or anywhere (node groups).
    assert rule_resources(cluster_role["rules"]) == {
        "nodes",
        "customresourcedefinitions",
        "namespaces",
        "resourceslices",
        "deviceclasses",
        "ingressclasses",
        "nodepools",
        "machinedeployments",
    }
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in cluster_role["rules"])
    assert "deployments" in rule_resources(roles[0]["rules"])
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args


@pytest.mark.parametrize("values", [{}, NAMESPACED])
def test_pods_are_only_read(values: dict[str, Any]) -> None:
    """The operator watches its pods for status; nothing may let it change or exec into one."""
    docs = render(values)
    rules = [rule for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") for rule in d["rules"]]
    verbs = [set(rule["verbs"]) for rule in rules if "pods" in rule["resources"] or "pods/exec" in rule["resources"]]
    assert verbs
    assert all(v == {"get", "list", "watch"} for v in verbs), verbs


@pytest.mark.parametrize("values", [{}, NAMESPACED])
def test_the_endpoint_pickers_rbac_writes_can_be_left_out(values: dict[str, Any]) -> None:
    """The picker's ServiceAccount, Role, RoleBinding and ConfigMap are the only RBAC objects and ConfigMap
    writes the operator makes; rbac.endpointPicker=false leaves those kinds read-only (still watched)."""

    def rules_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
        return [rule for d in roles if not d["metadata"]["name"].endswith("crd-upgrade") for rule in d["rules"]]

    picker = {"roles", "rolebindings", "serviceaccounts", "configmaps"}
    on = rules_of(render(values))
    assert picker | {"inferencepools", "httproutes", "grpcroutes", "inferenceservices"} <= rule_resources(on)
    assert all(not {"bind", "escalate", "impersonate"} & set(rule["verbs"]) for rule in on)
    assert any("create" in rule["verbs"] for rule in on if "roles" in rule["resources"])
    off = rules_of(render({**values, "rbac": {"endpointPicker": False}}))
    assert {"httproutes", "inferencepools", "inferenceservices", "gateways"} <= rule_resources(off)
    read_only = [rule["verbs"] for rule in off if picker & set(rule["resources"])]
    assert read_only
    assert all(verbs == ["get", "list", "watch"] for verbs in read_only), read_only


def test_crd_upgrade_hook_carries_every_chart_crd() -> None:
    docs = render()
    configmap = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("crd-upgrade"))
    for path in (CHART / "crds").glob("*.yaml"):
        assert configmap["data"][path.name] == path.read_text().rstrip("\n")
    job = by_kind(docs, "Job")[0]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    assert {"--server-side", "--force-conflicts"} <= set(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert not by_kind(render({"crds": {"upgradeJob": {"enabled": False}}}), "Job")


def test_service_monitor_is_rendered_only_where_the_cluster_serves_it() -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prom"}}}}
    docs = render(values, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    proc = helm("template", "nimop", str(CHART), *set_flags(values), check=False)
    assert proc.returncode != 0
    assert "monitoring.coreos.com/v1 ServiceMonitor" in proc.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--set", "replicaCount=-1"], "/replicaCount"),
        (["--set", "image.tag=5"], "/image/tag"),
        (["--set-json", 'watchNamespaces=["Team_A"]'], "/watchNamespaces/0"),
        (["--set", "metrics.port=80000"], "/metrics/port"),
        (["--set", "logFormat=xml"], "/logFormat"),
        (["--set", "replicasCount=2"], "replicasCount"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(flags: list[str], expected: str) -> None:
    proc = helm("template", "nimop", str(CHART), *flags, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert expected in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "replicaCount is 2 but leaderElection.enabled"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "needs metrics.enabled"),
        ({"metrics": {"port": 8080}}, "metrics.port and health.port are both 8080"),
    ],
)
def test_cross_field_mistakes_fail_with_the_fix(values: dict[str, Any], expected: str) -> None:
    proc = helm("template", "nimop", str(CHART), *set_flags(values), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
