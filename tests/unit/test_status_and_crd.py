"""Status computation and the generated CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nim_operator.api.crd import build_crd, render_cache_crd_yaml, render_crd_yaml
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.render import Owner
from nim_operator.status import Failure, compute_status

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner("svc", "ns", "uid")
SPEC = NIMServiceSpec.model_validate({"image": {"repository": "r", "tag": "t"}, "replicas": 2})


def _deployment(available: int, generation: int = 3, observed: int = 3) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": observed, "availableReplicas": available, "replicas": 2, "updatedReplicas": 2},
    }


def _status(deployment: dict[str, Any] | None, now: str = "t1", previous: Any = None) -> Any:
    return compute_status(
        owner=OWNER,
        spec=SPEC,
        generation=5,
        previous=previous,
        profile=None,
        served_model_name="m",
        failure=None,
        deployment=deployment,
        now=now,
    )


def test_ready_only_when_all_replicas_available() -> None:
    assert _status(_deployment(0)).state == "Pending"
    assert _status(_deployment(1)).state == "NotReady"
    ready = _status(_deployment(2))
    assert ready.state == "Ready"
    assert {c.type: c.status for c in ready.conditions} == {
        "Ready": "True",
        "Failed": "False",
        "ProfileSelected": "True",
    }
    assert all(c.observed_generation == 5 for c in ready.conditions)
    assert ready.model is not None
    assert ready.model.cluster_endpoint == "svc.ns.svc.cluster.local:8000"
    assert _status(_deployment(2, generation=4, observed=3)).state == "NotReady", "a rollout in progress is not Ready"


def test_recomputing_the_same_world_is_equal_so_no_write_happens() -> None:
    first = _status(_deployment(2), now="t1")
    again = _status(_deployment(2), now="t2", previous=first)
    assert again == first
    flipped = _status(_deployment(1), now="t3", previous=first)
    ready = next(c for c in flipped.conditions if c.type == "Ready")
    assert ready.last_transition_time == "t3"


def test_failure_state_and_reason() -> None:
    failed = compute_status(
        owner=OWNER,
        spec=SPEC,
        generation=1,
        previous=None,
        profile=None,
        served_model_name=None,
        failure=Failure("NoProfileFits", "no profile fits"),
        deployment=None,
        now="t",
    )
    assert failed.state == "Failed"
    cond = next(c for c in failed.conditions if c.type == "Failed")
    assert (cond.status, cond.reason, cond.message) == ("True", "NoProfileFits", "no profile fits")


def test_checked_in_crd_is_current() -> None:
    checked_in = (ROOT / "crds" / "apps.nimoperator.dev_nimservices.yaml").read_text()
    assert checked_in == render_crd_yaml(), "crds/ is stale: run `make crds`"
    cache = (ROOT / "crds" / "apps.nimoperator.dev_nimcaches.yaml").read_text()
    assert cache == render_cache_crd_yaml(), "crds/ is stale: run `make crds`"


def test_crd_schema_is_structural() -> None:
    text = render_crd_yaml()
    for forbidden in ("$ref", "anyOf", "$defs", "title:", "const:"):
        assert forbidden not in text
    version = build_crd()["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "replicas" not in spec.get("required", [])
    assert spec["properties"]["expose"]["properties"]["service"]["properties"]["port"]["maximum"] == 65535
    assert "userID" in spec["properties"]
    assert spec["properties"]["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    limits = spec["properties"]["resources"]["properties"]["limits"]
    assert limits["additionalProperties"]["x-kubernetes-int-or-string"] is True
    assert "isQuantity" in limits["x-kubernetes-validations"][0]["rule"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert [col["name"] for col in version["additionalPrinterColumns"]] == [
        "State",
        "Profile",
        "GPUs",
        "Replicas",
        "Age",
    ]
