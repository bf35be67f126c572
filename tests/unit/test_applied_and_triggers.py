"""What the operator remembers of its children, and which events are news for which NIMService. Pure."""

from __future__ import annotations

from typing import Any

from nim_operator import constants as c
from nim_operator.api.spec import Condition, NIMServiceStatus, ProfileStatus
from nim_operator.applied import AppliedState, key_of
from nim_operator.integrations import DEFAULT_CLASS_ANNOTATION, IngressClasses, ingress_problems
from nim_operator.triggers import node_change_affects, owner_of, spec_level_change
from nim_runtime.profiles import NodeGpuFacts


def _child(
    kind: str = "Service", *, version: int = 5, generation: int | None = None, digest: str = "h1"
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "llama",
        "namespace": "team-a",
        "resourceVersion": str(version),
        "annotations": {c.HASH_ANNOTATION: digest},
        "ownerReferences": [{"kind": c.KIND, "name": "llama", "uid": "uid-1", "controller": True}],
    }
    if generation is not None:
        meta["generation"] = generation
    return {"apiVersion": "apps/v1" if kind == "Deployment" else "v1", "kind": kind, "metadata": meta}


def test_an_applied_child_needs_no_apply_until_someone_else_writes_it() -> None:
    state = AppliedState()
    live = _child(version=5)
    state.record(key_of(live), "h1", live)
    assert not state.needs_apply(key_of(live), "h1")
    assert not state.observe(_child(version=5)), "the event of our own apply is not news"
    assert not state.observe(_child(version=4)), "a late event from before our apply is not news"
    assert state.observe(_child(version=9)), "a newer version written by someone else is drift"
    assert state.needs_apply(key_of(live), "h1"), "after drift the next reconcile applies again"


def test_kinds_with_a_generation_ignore_status_writes() -> None:
    state = AppliedState()
    live = _child("Deployment", version=10, generation=2)
    state.record(key_of(live), "h1", live)
    assert not state.observe(_child("Deployment", version=99, generation=2)), "a status write is not drift"
    assert state.observe(_child("Deployment", version=120, generation=3))


def test_claims_are_never_reapplied_for_their_status_changes() -> None:
    state = AppliedState()
    claim = _child("PersistentVolumeClaim", version=3)
    state.record(key_of(claim), "h1", claim)
    assert not state.observe(_child("PersistentVolumeClaim", version=8))
    assert not state.needs_apply(key_of(claim), "h1")


def _claim(name: str, *, service: str = "llama", version: int = 3, **labels: str) -> dict[str, Any]:
    """A claim as the renderer labels it: no owner (it outlives its NIMService), only labels say whose."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "resourceVersion": str(version),
            "labels": {c.LABEL_NAME: service, c.LABEL_INSTANCE: service, c.LABEL_MANAGED_BY: c.MANAGED_BY, **labels},
        },
    }


def test_claims_made_for_a_service_are_known_by_their_labels_after_a_listing() -> None:
    state = AppliedState()
    assert state.made_for("llama", "v1", "PersistentVolumeClaim", "team-a") is None, "before a listing: a LIST"
    cache_claim = _claim("cache", **{c.LABEL_NIMCACHE: "llama"})
    state.listed("v1", "PersistentVolumeClaim", [_claim("models-a"), _claim("other", service="qwen"), cache_claim])
    assert state.made_for("llama", "v1", "PersistentVolumeClaim", "team-a") == ["models-a"]
    state.record(key_of(_claim("models-b")), "h1", _claim("models-b"))  # created after a rename
    assert state.made_for("llama", "v1", "PersistentVolumeClaim", "team-a") == ["models-a", "models-b"]
    going = _claim("models-a", version=9)
    going["metadata"]["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    assert not state.observe(going), "a claim's changes are never drift"
    assert state.made_for("llama", "v1", "PersistentVolumeClaim", "team-a") == ["models-b"], "a deleted one goes"
    state.gone(key_of(going))
    assert state.made_for("llama", "v1", "PersistentVolumeClaim", "team-b") == []


def test_the_indexes_answer_as_a_scan_of_every_entry_would() -> None:
    """Random applies, watch events, deletions and prunes; owned() and made_for() against a plain scan."""
    import random

    rng = random.Random(7)
    state = AppliedState()
    state.listed("v1", "Service", [])
    state.listed("v1", "PersistentVolumeClaim", [])
    for _ in range(3000):
        kind = rng.choice(["Service", "PersistentVolumeClaim"])
        service, uid = rng.choice([("llama", "uid-1"), ("qwen", "uid-2"), ("phi", "uid-3")])
        obj = _claim(f"c{rng.randrange(6)}", service=service, version=rng.randrange(1, 9))
        obj["kind"] = kind
        if kind == "Service":
            obj["metadata"]["ownerReferences"] = [{"uid": uid, "controller": True}]
        op = rng.randrange(5)
        if op == 0:
            state.record(key_of(obj), "h", obj)
        elif op == 1:
            state.observe(obj)
        elif op == 2:
            state.gone(key_of(obj))
        elif op == 3:
            state.mark_absent(key_of(obj), uid)
        elif rng.random() < 0.1:
            state.prune_owner(uid)
        scanned = [(k[3], e) for k, e in state._entries.items() if k[:3] == ("v1", kind, "team-a") and e.exists]
        assert state.owned(uid, "v1", kind, "team-a") == sorted(n for n, e in scanned if e.owner == uid)
        assert state.made_for(service, "v1", kind, "team-a") == sorted(n for n, e in scanned if e.service == service)


def test_after_a_full_listing_absence_is_known_without_asking() -> None:
    state = AppliedState()
    listed = _child("Service")
    assert state.exists(key_of(listed)) is None, "before a listing, only a GET can tell"
    state.listed("v1", "Service", [{"metadata": listed["metadata"]}])
    assert state.exists(key_of(listed)) is True
    other = ("v1", "Service", "team-a", "other")
    assert state.exists(other) is False
    state.gone(key_of(listed))
    assert state.exists(key_of(listed)) is False
    assert state.needs_apply(key_of(listed), "h1")


def test_a_first_sight_with_our_hash_is_not_news_without_it_is() -> None:
    state = AppliedState()
    assert not state.observe(_child(digest="h1")), "after a restart, the hash says what was applied"
    state.forget(key_of(_child()))
    assert state.observe(_child(digest="")), "an object we never applied must be applied"


def test_a_deleted_owner_is_pruned() -> None:
    state = AppliedState()
    live = _child()
    state.record(key_of(live), "h1", live)
    state.mark_absent(("v1", "ConfigMap", "team-a", "llama"), "uid-1")
    assert len(state) == 2
    state.prune_owner("uid-1")
    assert len(state) == 0


def test_only_spec_level_changes_of_a_nimservice_are_news() -> None:
    body = {"metadata": {"uid": "u", "generation": 1, "labels": {"a": "b"}}, "status": {"state": "Pending"}}
    assert spec_level_change(None, body)
    status_only = {**body, "status": {"state": "Ready"}}
    assert not spec_level_change(body, status_only), "our own status write must not queue a reconcile"
    assert spec_level_change(body, {**body, "metadata": {**body["metadata"], "generation": 2}})
    assert spec_level_change(body, {**body, "metadata": {**body["metadata"], "labels": {}}})


def test_owner_of_reads_the_controlling_nimservice() -> None:
    assert owner_of(_child()) == ("team-a", "llama", "uid-1")
    assert owner_of({"metadata": {"namespace": "x", "ownerReferences": [{"kind": "Job", "controller": True}]}}) is None


def _status(state: str, products: list[str] | None = None, *, failed: str | None = None) -> NIMServiceStatus:
    conditions = [Condition(type="Failed", status="True", reason=failed)] if failed else []
    profile = ProfileStatus(id="p", gpu_products=products) if products is not None else None
    return NIMServiceStatus(state=state, conditions=conditions, profile=profile)  # type: ignore[arg-type]


H100 = NodeGpuFacts("h", "NVIDIA-H100-80GB-HBM3", 8, 81559)
L40S = NodeGpuFacts("l", "NVIDIA-L40S", 4, 46068)


def test_a_node_change_affects_only_services_placed_on_its_product() -> None:
    on_h100 = _status("Ready", ["NVIDIA-H100-80GB-HBM3"])
    assert node_change_affects(on_h100, H100, None), "a node of its product leaving may move it"
    assert not node_change_affects(on_h100, None, L40S), "a new product never moves a decided service"
    assert node_change_affects(_status("Failed", failed="NoProfileFits"), None, L40S), "it may fit now"
    assert not node_change_affects(_status("Failed", failed="InvalidSpec"), None, L40S)
    assert node_change_affects(None, None, L40S), "never reconciled yet"
    assert node_change_affects(_status("Pending", []), None, L40S), "waiting for a product no node offers yet"
    runtime_chooses = NIMServiceStatus(state="Ready", profile=ProfileStatus(id=None))
    assert not node_change_affects(runtime_chooses, H100, None)


def test_cpu_profiles_are_affected_by_nodes_without_gpus() -> None:
    cpu = NIMServiceStatus(state="Ready", profile=ProfileStatus(id="cpu", tags={"device": "cpu"}))
    assert node_change_affects(cpu, NodeGpuFacts("cpu-0"), None)
    assert not node_change_affects(cpu, None, L40S)


def _ingress(name: str, class_name: str | None = None, legacy: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "annotations": {"kubernetes.io/ingress.class": legacy} if legacy else {}}
    spec = {"ingressClassName": class_name} if class_name else {}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def test_an_ingress_no_class_routes_is_named_with_the_fix() -> None:
    nginx = {"metadata": {"name": "nginx", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}}
    classes = IngressClasses.of([nginx, {"metadata": {"name": "traefik"}}])
    assert ingress_problems([_ingress("a", "nginx"), _ingress("b"), _ingress("c", legacy="traefik")], classes) == []
    [problem] = ingress_problems([_ingress("a", "haproxy")], classes)
    assert "IngressClass haproxy" in problem
    assert "nginx, traefik" in problem
    no_default = IngressClasses.of([{"metadata": {"name": "traefik"}}])
    [problem] = ingress_problems([_ingress("b")], no_default)
    assert "names no IngressClass" in problem
    assert ingress_problems([_ingress("a", "haproxy")], None) == [], "unknown classes: nothing is claimed"
