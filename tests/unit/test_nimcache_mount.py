"""A NIMService on a NIMCache: the profile it serves, sharing the claim across nodes, what renames leave.

Pure parts only; tests/operator and tests/e2e run the same paths through the real API server and nodes.
"""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.cache_mount import SHARED_STORAGE, CacheMount, cache_mount, profile_not_held, sharing_note
from nim_operator.left_behind import Leftovers, cache_message, service_message
from nim_operator.placement import decide, manifest_for, placement_of
from nim_operator.render import Owner, render_deployment
from nim_operator.storage_notes import replicas_at_most
from nim_runtime.profiles import NodeGpuFacts, ProfileError
from tests.unit.cel_admission import Evaluator, spec_schema

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
OWNER = Owner("svc", "team-a", "uid")


def _spec(**extra: Any) -> NIMServiceSpec:
    body = {"image": {"repository": "localhost/nim-runtime", "tag": "dev"}, "model": {"name": SMOL}, **extra}
    return NIMServiceSpec.model_validate(body)


def _ready_cache(profiles: list[str], modes: list[str] | None = None) -> dict[str, Any]:
    return {
        "spec": {"source": {"hf": {"endpoint": "http://h"}}, "storage": {"pvc": {"create": True, "size": "1Gi"}}},
        "status": {
            "state": "Ready",
            "pvc": "smollm2-pvc",
            "profiles": [{"name": p} for p in profiles],
            "accessModes": modes or ["ReadWriteOnce"],
        },
    }


def test_the_caches_profile_pins_the_service_like_spec_profile() -> None:
    spec = _spec(storage={"nimCache": {"name": "smollm2", "profile": "vllm-cpu-bf16"}})
    assert spec.pinned_profile == ("vllm-cpu-bf16", "spec.storage.nimCache.profile")
    manifest = manifest_for(spec)
    assert manifest is not None
    decision = decide(spec, manifest, [NodeGpuFacts(name="cpu-0")], previous=None)
    assert decision.profile.id == "vllm-cpu-bf16"
    assert "pinned by spec.storage.nimCache.profile" in decision.reason
    # NVIDIA's samples write profile: '' for "none": chosen as without a cache.
    assert _spec(storage={"nimCache": {"name": "smollm2", "profile": ""}}).pinned_profile == (None, "spec.profile")


def test_a_profile_the_manifest_does_not_know_is_refused_naming_the_cache_field() -> None:
    spec = _spec(storage={"nimCache": {"name": "smollm2", "profile": "tensorrt_llm"}})
    manifest = manifest_for(spec)
    assert manifest is not None
    with pytest.raises(ProfileError, match="'tensorrt_llm' is not in the manifest"):
        decide(spec, manifest, [], previous=None)


def test_an_image_without_a_manifest_gets_the_profile_as_nim_model_profile() -> None:
    spec = NIMServiceSpec.model_validate(
        {
            "image": {"repository": "nvcr.io/nim/acme/unknown", "tag": "1"},
            "storage": {"nimCache": {"name": "acme", "profile": "abc123"}},
        }
    )
    deployment = render_deployment(OWNER, spec, placement_of(spec, None, None))
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[c.ENV_MODEL_PROFILE] == "abc123"


def test_a_profile_the_cache_does_not_hold_is_a_failure_naming_what_it_holds() -> None:
    mount, waiting = cache_mount("team-a", "smollm2", _ready_cache(["vllm-bf16-tp1", "vllm-cpu-bf16"]))
    assert waiting is None
    assert mount is not None
    assert profile_not_held("team-a", "smollm2", mount, "vllm-cpu-bf16", "spec.storage.nimCache.profile") is None
    missing = profile_not_held("team-a", "smollm2", mount, "tensorrt_llm", "spec.storage.nimCache.profile")
    assert missing is not None
    assert missing.reason == "NIMCacheProfileMissing"
    assert missing.message.startswith("spec.storage.nimCache.profile: profile 'tensorrt_llm' is not in NIMCache")
    assert "holds vllm-bf16-tp1, vllm-cpu-bf16" in missing.message
    # A cache that does not list its profiles (an NGC puller chose them) cannot be checked: no failure.
    silent, _ = cache_mount("team-a", "smollm2", _ready_cache([]))
    assert silent is not None
    assert profile_not_held("team-a", "smollm2", silent, "anything", "spec.storage.nimCache.profile") is None


def test_admission_refuses_two_different_profiles() -> None:
    evaluator, schema = Evaluator(), spec_schema()
    image = {"repository": "r", "tag": "t"}
    both = {"image": image, "profile": "a", "storage": {"nimCache": {"name": "c", "profile": "b"}}}
    [refusal] = evaluator.violations(schema, both)
    assert "spec.profile and spec.storage.nimCache.profile name different profiles" in refusal
    for fine in ("a", ""):
        same = {"image": image, "profile": "a", "storage": {"nimCache": {"name": "c", "profile": fine}}}
        assert evaluator.violations(schema, same) == []


def _mount(*modes: str) -> CacheMount:
    return CacheMount(claim="smollm2-pvc", sub_path=None, model_path=None, access_modes=modes)


def test_read_write_once_says_replicas_cannot_spread_across_nodes() -> None:
    note = sharing_note(3, "smollm2-pvc", ["ReadWriteOnce"], what="NIMCache smollm2's claim", field="F")
    assert note is not None
    assert (note.type, note.ok, note.reason) == (SHARED_STORAGE, False, "ReadWriteOnce")
    assert "the 3 replicas can only run on that node" in note.message
    assert "set F to ReadWriteMany" in note.message
    shared = sharing_note(3, "smollm2-pvc", ["ReadWriteMany"], what="x", field="F")
    assert shared is not None
    assert shared.ok is True
    assert sharing_note(1, "smollm2-pvc", ["ReadWriteOnce"], what="x", field="F") is None
    single = sharing_note(2, "c", ["ReadWriteOncePod"], what="x", field="F")
    assert single is not None
    assert "only one of the 2 replicas can run" in single.message


def test_the_replica_bound_is_the_autoscalers_when_it_owns_the_count() -> None:
    assert replicas_at_most(_spec(replicas=2)) == 2
    assert replicas_at_most(_spec(replicas=1, scale={"enabled": True, "hpa": {"maxReplicas": 4}})) == 4


def test_left_behind_messages_name_each_object_and_what_to_do() -> None:
    reason, message = service_message(
        "team-a", Leftovers(claims=("old-pvc",), services=("old-svc",)), claim="new-pvc", service="new-svc"
    )
    assert reason == "OldClaimAndService"
    assert "PersistentVolumeClaim old-pvc, created for this NIMService, is no longer mounted" in message
    assert "spec.storage.pvc names new-pvc" in message
    assert "kubectl delete pvc -n team-a old-pvc" in message
    assert "Service old-svc still routes to this NIMService's pods" in message
    assert "kubectl delete service -n team-a old-svc" in message
    only_claim, _ = service_message("team-a", Leftovers(claims=("a",)), claim=None, service="svc")
    assert only_claim == "OldClaim"
    said = cache_message("team-a", ["smollm2-pvc"], claim="smollm2-v2")
    assert "never deletes a claim that holds weights" in said
    assert "kubectl delete pvc -n team-a smollm2-pvc" in said
