"""NVIDIA's own sample manifests, with only ``apiVersion`` changed to ours, on the real API server.

Every NIMService and NIMCache document under ``../shared/compat/nvidia-samples/`` (NVIDIA's
``config/samples/nim/``, read-only) is created with a server-side dry run and strict field validation, so
an unknown field is a refusal (not silently pruned), and OpenAPI and CEL validation run as for `kubectl
apply`. The Secrets and the namespace the samples assume exist.

Asserted: 100 % of the NIMService documents are accepted, and 100 % of the NIMCache documents once the API
server serves our NIMCache CRD (before it, they are listed as not tried). The table (sample, kind,
name, accepted, reason) is printed to the terminal even without ``-s``, so CI's log shows the count.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from nim_operator import constants as c
from nim_operator.api.coverage import ignored, not_built
from nim_operator.api.spec import NIMServiceSpec
from tests.conftest import REPO, Cluster
from tests.operator.conftest import wait_for

pytestmark = pytest.mark.cluster

SAMPLES = REPO.parent / "shared" / "compat" / "nvidia-samples"
NVIDIA_GROUP = "apps.nvidia.com"
SAMPLE_NAMESPACE = "nim-service"  # where NVIDIA's samples put their objects
KINDS = {c.KIND: c.PLURAL, c.CACHE_KIND: c.CACHE_PLURAL}
NO_NIMCACHE_CRD = "no NIMCache CRD served"


@dataclass(frozen=True)
class Sample:
    file: str
    kind: str
    name: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Row:
    sample: Sample
    accepted: bool | None  # None: not tried
    reason: str


def _samples() -> list[Sample]:
    out = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            out.append(Sample(str(path.relative_to(SAMPLES)), doc["kind"], doc["metadata"]["name"], doc))
    return out


def _ours(body: dict[str, Any]) -> dict[str, Any]:
    """The document with only its apiVersion changed, from NVIDIA's group to ours."""
    assert body["apiVersion"].startswith(f"{NVIDIA_GROUP}/"), body["apiVersion"]
    return {**body, "apiVersion": f"{c.GROUP}/{body['apiVersion'].split('/', 1)[1]}"}


@pytest.fixture
def sample_namespace(crd: Cluster) -> Iterator[str]:
    """NVIDIA's namespace with the Secrets their samples name (an NGC pull secret, NGC and HF keys)."""
    core = client.CoreV1Api(crd.api)

    def absent() -> bool:
        try:
            core.read_namespace(SAMPLE_NAMESPACE)
        except client.ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    # A namespace from an earlier run may still be terminating: creating objects in it would fail.
    wait_for(absent, timeout=120, what=f"namespace {SAMPLE_NAMESPACE} from an earlier run to be gone")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SAMPLE_NAMESPACE)))
    docker = {"auths": {"nvcr.io": {"username": "$oauthtoken", "password": "not-a-key"}}}
    secrets = [
        ("ngc-secret", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": json.dumps(docker)}),
        ("ngc-api-secret", "Opaque", {"NGC_API_KEY": "not-a-key"}),
        ("hf-api-secret", "Opaque", {"HF_TOKEN": "not-a-token"}),
    ]
    for name, type_, data in secrets:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        core.create_namespaced_secret(
            SAMPLE_NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name=name), type=type_, data=encoded)
        )
    try:
        yield SAMPLE_NAMESPACE
    finally:
        core.delete_namespace(SAMPLE_NAMESPACE, propagation_policy="Background")


def _operator_note(body: dict[str, Any]) -> str:
    """What our operator will say about an accepted NIMService: fields it does not build or ignores."""
    spec = NIMServiceSpec.model_validate(body["spec"])
    unbuilt = [u.field for u in not_built(spec)]
    without_effect = [i.field for i in ignored(spec)]
    notes = []
    if unbuilt:
        notes.append("operator: UnsupportedField " + ", ".join(unbuilt))
    if without_effect:
        notes.append("FieldsIgnored " + ", ".join(without_effect))
    return "; ".join(notes)


def _try(api: client.ApiClient, sample: Sample, default_namespace: str) -> Row:
    body = _ours(sample.body)
    namespace = body["metadata"].get("namespace") or default_namespace
    custom = client.CustomObjectsApi(api)
    version = body["apiVersion"].split("/", 1)[1]
    try:
        custom.create_namespaced_custom_object(
            c.GROUP, version, namespace, KINDS[sample.kind], body, dry_run="All", field_validation="Strict"
        )
    except client.ApiException as err:
        if err.status == 404 and sample.kind == "NIMCache":
            return Row(sample, None, NO_NIMCACHE_CRD)
        try:
            message = json.loads(err.body).get("message", err.body)
        except (TypeError, ValueError):
            message = str(err.body)
        return Row(sample, False, f"{err.status}: {message}")
    note = _operator_note(body) if sample.kind == "NIMService" else ""
    return Row(sample, True, "accepted (server-side dry run)" + (f"; {note}" if note else ""))


def _table(rows: list[Row]) -> str:
    header = ("sample file", "kind", "name", "accepted", "reason")
    cells = [
        (
            r.sample.file,
            r.sample.kind,
            r.sample.name,
            {True: "yes", False: "NO", None: "-"}[r.accepted],
            r.reason.replace("\n", " "),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(4)]
    lines = [
        "  ".join(col.ljust(w) for col, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in [header, *cells]
    ]
    return "\n".join(lines)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"NVIDIA's samples are not at {SAMPLES}")
def test_every_nvidia_sample_nimservice_is_accepted(
    crd: Cluster, sample_namespace: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = _samples()
    rows = [_try(crd.api, s, namespace) for s in samples if s.kind in KINDS]
    others = [s for s in samples if s.kind not in KINDS]
    services = [r for r in rows if r.sample.kind == "NIMService"]
    caches = [r for r in rows if r.sample.kind == "NIMCache"]
    accepted = sum(1 for r in services if r.accepted)
    untried = sum(1 for r in caches if r.accepted is None)
    summary = [
        f"NIMService: {accepted} of {len(services)} accepted (asserted: all)",
        f"NIMCache: {sum(1 for r in caches if r.accepted)} of {len(caches)} accepted (asserted: all tried)"
        + (f", {untried} not tried: {NO_NIMCACHE_CRD}" if untried else ""),
        "not applied (other kinds): " + ", ".join(sorted({f"{s.kind} in {s.file}" for s in others})),
    ]
    report = f"\nNVIDIA samples, apiVersion {c.GROUP}/v1alpha1, on the real API server\n{_table(rows)}\n" + "\n".join(
        summary
    )
    with capsys.disabled():
        print(report)
    # The count NVIDIA's samples directory had when this test was written; a new sample is welcome,
    # a vanished one means the wrong directory.
    assert len(services) >= 29, report
    # ASSERTED: every NIMService document is accepted, and every NIMCache document the server could judge.
    assert [r for r in services if not r.accepted] == [], report
    assert [r for r in caches if r.accepted is False] == [], report
