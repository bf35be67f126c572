"""The children a NIMService renders to, checked field by field (pure functions, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import Placement, decide, node_facts, node_schedulable, placement_of
from nim_operator.render import Owner, render_children, render_deployment
from nim_operator.render.deployment import rollout_strategy
from nim_runtime.profiles import NodeGpuFacts, find_manifest

OWNER = Owner("llama", "team-a", "uid-1")
H100 = NodeGpuFacts("h100-0", "NVIDIA-H100-80GB-HBM3", 8, 81559)


def _spec(**fields: Any) -> NIMServiceSpec:
    base: dict[str, Any] = {"image": {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3"}}
    return NIMServiceSpec.model_validate({**base, **fields})


def _placed(spec: NIMServiceSpec) -> Placement:
    manifest = find_manifest("meta/llama-3.1-8b-instruct")
    assert manifest is not None
    return placement_of(spec, manifest, decide(spec, manifest, [H100], previous=None))


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _pod(deployment)["containers"][0]["env"]}


def test_gpu_placement_sets_profile_gpus_affinity_and_toleration() -> None:
    spec = _spec()
    deployment = render_deployment(OWNER, spec, _placed(spec))
    pod = _pod(deployment)
    container = pod["containers"][0]
    assert _env(deployment)[c.ENV_MODEL_PROFILE] == "vllm-fp8-tp1-h100"
    assert container["resources"]["limits"][c.GPU_RESOURCE] == "1"
    assert container["resources"]["requests"][c.GPU_RESOURCE] == "1"
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [
        {"key": c.GPU_PRODUCT_LABEL, "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_user_affinity_terms_are_anded_with_the_gpu_product() -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone]}, {"matchExpressions": [dict(zone, values=["c"])]}]
            }
        }
    }
    spec = _spec(affinity=affinity)
    pod = _pod(render_deployment(OWNER, spec, _placed(spec)))
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 2
    assert all(t["matchExpressions"][-1]["key"] == c.GPU_PRODUCT_LABEL for t in terms)
    assert spec.affinity == affinity, "rendering must not mutate the spec"


def test_user_gpu_count_and_env_win() -> None:
    spec = _spec(
        resources={"limits": {"nvidia.com/gpu": 2, "memory": "64Gi"}},
        env=[{"name": c.ENV_SERVER_PORT, "value": "9000"}, {"name": "EXTRA", "value": "1"}],
    )
    deployment = render_deployment(OWNER, spec, _placed(spec))
    resources = _pod(deployment)["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "2", "memory": "64Gi"}
    # The user's memory stays theirs; the CPU request the user left out comes per GPU.
    assert resources["requests"] == {"nvidia.com/gpu": "2", "cpu": str(2 * c.CPU_PER_GPU)}
    env = _pod(deployment)["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == c.ENV_SERVER_PORT] == ["9000"]
    assert env[-1] == {"name": "EXTRA", "value": "1"}


def test_gpu_pods_get_cpu_and_memory_requests_cpu_pods_keep_theirs() -> None:
    spec = _spec()
    placed = _placed(spec)
    requests = _pod(render_deployment(OWNER, spec, placed))["containers"][0]["resources"]["requests"]
    gpus = placed.gpus
    assert gpus >= 1
    assert requests == {
        c.GPU_RESOURCE: str(gpus),
        "cpu": str(c.CPU_PER_GPU * gpus),
        "memory": f"{c.MEMORY_GIB_PER_GPU * gpus}Gi",
    }
    own = _spec(resources={"requests": {"cpu": "16", "memory": "100Gi"}})
    requests = _pod(render_deployment(OWNER, own, _placed(own)))["containers"][0]["resources"]["requests"]
    assert requests["cpu"] == "16"
    assert requests["memory"] == "100Gi"
    cpu_only = render_deployment(OWNER, own, Placement(profile=None))
    assert _pod(cpu_only)["containers"][0]["resources"] == {"requests": {"cpu": "16", "memory": "100Gi"}}


def test_rollout_strategy_surges_one_replica_and_replaces_many_one_by_one() -> None:
    surge = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    in_place = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert rollout_strategy(_spec()) == surge
    assert rollout_strategy(_spec(), surge_blocked=True) == in_place, "no room for a surge pod: in place"
    assert rollout_strategy(_spec(replicas=3)) == in_place
    scaled = _spec(scale={"enabled": True, "hpa": {"minReplicas": 1, "maxReplicas": 4}})
    assert rollout_strategy(scaled) == in_place
    own = _spec(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}})
    assert rollout_strategy(own, surge_blocked=True) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0},
    }
    assert rollout_strategy(_spec(strategy={"type": "Recreate"})) == {"type": "Recreate"}
    assert render_deployment(OWNER, _spec(), _placed(_spec()))["spec"]["strategy"] == surge


def test_default_probes_and_overrides() -> None:
    spec = _spec()
    container = _pod(render_deployment(OWNER, spec, _placed(spec)))["containers"][0]
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/v1/health/live", "port": "api"},
        "initialDelaySeconds": 15,
        "periodSeconds": 10,
        "timeoutSeconds": 1,
        "failureThreshold": 3,
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert container["startupProbe"]["failureThreshold"] == 120
    assert container["startupProbe"]["initialDelaySeconds"] == 30
    custom = {"tcpSocket": {"port": "api"}, "periodSeconds": 5}
    spec = _spec(livenessProbe={"enabled": False}, readinessProbe={"probe": custom})
    container = _pod(render_deployment(OWNER, spec, _placed(spec)))["containers"][0]
    assert "livenessProbe" not in container
    assert container["readinessProbe"] == custom


def test_pod_security_and_volumes() -> None:
    spec = _spec(
        userID=1234, groupID=5678, storage={"pvc": {"name": "models"}, "sharedMemorySizeLimit": "8Gi"}, authSecret="ngc"
    )
    deployment = render_deployment(OWNER, spec, _placed(spec))
    pod = _pod(deployment)
    assert pod["securityContext"]["runAsUser"] == 1234
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-store"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    env = _env(deployment)
    assert env["NGC_API_KEY"] == {"secretKeyRef": {"name": "ngc", "key": "NGC_API_KEY", "optional": True}}
    assert env[c.ENV_CACHE_PATH] == "/model-store"


def test_a_runtime_that_exits_at_start_leaves_its_last_log_lines_as_termination_message() -> None:
    spec = _spec()
    container = _pod(render_deployment(OWNER, spec, _placed(spec)))["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_cpu_or_unmanaged_pods_get_no_gpu_toleration() -> None:
    spec = _spec()
    pod = _pod(render_deployment(OWNER, spec, Placement(profile=None)))
    assert "tolerations" not in pod
    assert "affinity" not in pod
    assert "resources" not in pod["containers"][0] or not pod["containers"][0]["resources"]


def _by_kind(spec: NIMServiceSpec) -> dict[str, Any]:
    """The NIMService's own children by kind (the endpoint picker's Deployment and Service left out)."""
    return {ch.kind: ch for ch in render_children(OWNER, spec, _placed(spec)) if not ch.name.endswith("-epp")}


def test_autoscaling_leaves_replicas_to_the_hpa() -> None:
    spec = _spec(scale={"enabled": True, "hpa": {"minReplicas": 1, "maxReplicas": 4}})
    children = _by_kind(spec)
    assert children["Deployment"].body is not None
    assert "replicas" not in children["Deployment"].body["spec"]
    hpa = children["HorizontalPodAutoscaler"].body
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == c.DEFAULT_HPA_METRIC


def test_disabled_features_render_as_deletions() -> None:
    spec = _spec(replicas=3)
    children = _by_kind(spec)
    assert children["Deployment"].body is not None
    assert children["Deployment"].body["spec"]["replicas"] == 3
    for kind in ("HorizontalPodAutoscaler", "ServiceMonitor", "Ingress"):
        assert children[kind].body is None
    # A claim is never rendered as a deletion: no reconcile removes weights.
    assert "PersistentVolumeClaim" not in children


def test_a_created_claim_outlives_its_nimservice() -> None:
    spec = _spec(storage={"pvc": {"create": True, "size": "50Gi", "annotations": {"backup": "daily"}}})
    children = _by_kind(spec)
    claim = children["PersistentVolumeClaim"].body
    assert claim is not None
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["labels"][c.LABEL_INSTANCE] == "llama"
    assert claim["metadata"]["annotations"] == {"backup": "daily"}
    service = children["Service"].body
    assert service is not None
    assert service["spec"]["ports"] == [{"name": "api", "port": 8000, "targetPort": "api", "protocol": "TCP"}]
    assert children["PodDisruptionBudget"].body is None, "one replica: a budget would protect nothing"
    two = _spec(replicas=2)
    pdb = {ch.kind: ch for ch in render_children(OWNER, two, _placed(two))}["PodDisruptionBudget"].body
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_every_child_is_owned_and_labelled() -> None:
    spec = _spec(
        metrics={"enabled": True},
        expose={
            "ingress": {
                "enabled": True,
                "spec": {"rules": [{"host": "llm.example", "http": {"paths": [{"path": "/"}]}}]},
            }
        },
    )
    for child in render_children(OWNER, spec, _placed(spec)):
        if child.body is None:
            continue
        meta = child.body["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "uid-1"
        assert meta["labels"][c.LABEL_NAME] == "llama"
        assert meta["namespace"] == "team-a"
    ingress = next(ch for ch in render_children(OWNER, spec, _placed(spec)) if ch.kind == "Ingress").body
    assert ingress is not None
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"] == {"service": {"name": "llama", "port": {"name": "api"}}}


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (
            {
                "metadata": {
                    "name": "n",
                    "labels": {c.GPU_PRODUCT_LABEL: "NVIDIA-L40S", c.GPU_MEMORY_LABEL: "46068", c.GPU_COUNT_LABEL: "4"},
                },
                "status": {"allocatable": {c.GPU_RESOURCE: "3"}},
            },
            NodeGpuFacts("n", "NVIDIA-L40S", 3, 46068),
        ),
        ({"metadata": {"name": "n", "labels": {c.GPU_COUNT_LABEL: "2"}}, "status": {}}, NodeGpuFacts("n", None, 2)),
        ({"metadata": {"name": "n"}, "spec": {"unschedulable": True}}, NodeGpuFacts("n")),
    ],
)
def test_node_facts_prefer_allocatable(node: dict[str, Any], expected: NodeGpuFacts) -> None:
    assert node_facts(node) == expected


def test_a_cordoned_node_is_not_schedulable_but_keeps_its_facts() -> None:
    node = {"metadata": {"name": "n", "labels": {c.GPU_PRODUCT_LABEL: "NVIDIA-L40S"}}, "spec": {"unschedulable": True}}
    assert not node_schedulable(node)
    assert node_facts(node).product == "NVIDIA-L40S"
    assert node_schedulable({"metadata": {"name": "n"}})


def _shutdown(deployment: dict[str, Any]) -> tuple[int, int, int]:
    """(terminationGracePeriodSeconds, preStop sleep seconds, NIM_DRAIN_TIMEOUT) of a rendered pod."""
    pod = _pod(deployment)
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    return pod["terminationGracePeriodSeconds"], sleep, int(_env(deployment)[c.ENV_DRAIN_TIMEOUT])


def test_default_shutdown_sleeps_then_drains_inside_the_grace_period() -> None:
    spec = _spec()
    grace, sleep, drain = _shutdown(render_deployment(OWNER, spec, _placed(spec)))
    assert grace == c.DEFAULT_TERMINATION_GRACE_SECONDS == 120
    assert sleep == c.PRE_STOP_SLEEP_SECONDS == 10
    assert drain == 120 - 10 - c.SHUTDOWN_MARGIN_SECONDS == 95
    # Well above the runtime's own 30 s default and Kubernetes' 30 s grace period.
    assert drain > 30


@pytest.mark.parametrize(
    ("grace", "expected"),
    [(300, (300, 10, 275)), (60, (60, 10, 35)), (30, (30, 10, 10)), (9, (9, 3, 3))],
)
def test_user_grace_period_sizes_the_drain(grace: int, expected: tuple[int, int, int]) -> None:
    spec = _spec(terminationGracePeriodSeconds=grace)
    got = _shutdown(render_deployment(OWNER, spec, _placed(spec)))
    assert got == expected
    _, sleep, drain = got
    assert sleep + drain < grace


def test_tiny_grace_period_drops_the_pre_stop_but_keeps_a_drain() -> None:
    spec = _spec(terminationGracePeriodSeconds=2)
    deployment = render_deployment(OWNER, spec, _placed(spec))
    assert _pod(deployment)["terminationGracePeriodSeconds"] == 2
    assert "lifecycle" not in _pod(deployment)["containers"][0]
    assert _env(deployment)[c.ENV_DRAIN_TIMEOUT] == "1"


def test_grace_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _spec(terminationGracePeriodSeconds=0)


def test_user_drain_timeout_env_wins() -> None:
    spec = _spec(env=[{"name": c.ENV_DRAIN_TIMEOUT, "value": "42"}])
    deployment = render_deployment(OWNER, spec, _placed(spec))
    env = _pod(deployment)["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == c.ENV_DRAIN_TIMEOUT] == ["42"]
    # The pod's shutdown is still the operator's: grace period and preStop are unchanged.
    assert _pod(deployment)["terminationGracePeriodSeconds"] == 120
    assert _pod(deployment)["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
