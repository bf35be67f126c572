"""NVIDIA's samples applied for real (apiVersion changed only) with the operator running: every object
accepted, and every one ends Ready or in a state whose condition names what it is missing here.

Each sample file gets a namespace of its own (several files reuse the same object names) holding the
Secrets the samples name; otherwise the documents are applied as NVIDIA wrote them, objects of other
kinds in the same file included (a ResourceClaimTemplate) when the cluster serves their kind. The test
reads the state the operator reports and only classifies it: as more of NVIDIA's API is built (multiNode,
DRA, routers, KServe, NGC caches), rows move from "needs X" to Ready without a change here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, dynamic
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from nim_operator import constants as c
from tests.conftest import Cluster
from tests.operator.conftest import OperatorProcess, wait_for
from tests.operator.test_nvidia_samples import KINDS, SAMPLES, Sample, _create_secrets, _ours, _samples

pytestmark = pytest.mark.cluster

#: Every object must reach an explained state within this (probes, caches and Deployments included).
SETTLE_SECONDS = 300
#: ... and keep the same state and reason this long, so a passing moment is not taken for the outcome.
STABLE_SECONDS = 10
#: Reasons of a step under way, not an answer: an object still showing one at the deadline hangs.
TRANSIENT = frozenset({"DiscoveringManifest", "JobPending", "DeploymentMissing", "ReplicasNotReady", "Downloading"})
#: What a reason or message names, in the order it is looked for: the piece this cluster lacks.
MISSING = [
    (r"RuntimeClass|runtimeClassName|kata", "a runtime class"),
    (r"[Kk][Ss]erve", "KServe"),
    (r"[Gg]ateway|HTTPRoute|GRPCRoute|InferencePool", "a Gateway controller"),
    (r"nvcr\.io|NGC|ngc|modelPuller|ManifestUnavailable|download-to-cache", "NGC"),
    (r'persistentvolumeclaim "[^"]+" not found', "a claim made beforehand (with LoRA adapters)"),
    (r"(?i)persistentvolumeclaim|unbound|WaitingForPVC|storage", "a volume provisioner"),
    (r"huggingface\.co|Unreachable|hub", "a model hub"),
    (r"Unschedulable|nodes are available", "a node that fits"),
]


@dataclass
class Applied:
    sample: Sample
    namespace: str
    accepted: bool
    refusal: str = ""
    state: str = "-"
    reason: str = ""
    message: str = ""
    since: float = 0.0
    settled: bool = False

    @property
    def needs(self) -> str:
        if self.state == "Ready" or not self.accepted:
            return ""
        text = f"{self.reason} {self.message}"
        return next((what for pattern, what in MISSING if re.search(pattern, text)), "(not named)")


def _namespace(index: int, file: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", file.lower().removesuffix(".yaml")).strip("-")
    return f"nvs-{index:02d}-{slug}"[:63].rstrip("-")


def _reading(obj: dict[str, Any]) -> tuple[str, str, str, bool]:
    """(state, reason, message, current) as the operator reports them on a NIMService or NIMCache."""
    status = obj.get("status") or {}
    state = str(status.get("state") or "-")
    conditions = {x.get("type"): x for x in status.get("conditions") or []}
    said = conditions.get("Failed") if state == "Failed" else conditions.get("Ready")
    said = said or {}
    current = (status.get("observedGeneration") or 0) >= (obj["metadata"].get("generation") or 0)
    return state, str(said.get("reason") or ""), str(said.get("message") or ""), current


def _explained(row: Applied) -> bool:
    return row.state == "Ready" or (bool(row.reason) and row.reason not in TRANSIENT and bool(row.message))


@pytest.fixture
def sample_files(crd: Cluster) -> Iterator[dict[str, str]]:
    """A namespace with the samples' Secrets per sample file; all deleted afterwards."""
    core = client.CoreV1Api(crd.api)
    files = sorted({s.file for s in _samples() if s.kind in KINDS})
    namespaces = {file: _namespace(i, file) for i, file in enumerate(files)}
    for namespace in namespaces.values():
        wait_for(lambda ns=namespace: _absent(core, ns), timeout=180, what=f"namespace {namespace} from an earlier run")
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        _create_secrets(core, namespace)
    try:
        yield namespaces
    finally:
        for namespace in namespaces.values():
            core.delete_namespace(namespace, propagation_policy="Background")


def _absent(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespace(namespace)
    except client.ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


def _apply(api: client.ApiClient, sample: Sample, namespace: str) -> Applied:
    body = _ours(sample.body)
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    custom = client.CustomObjectsApi(api)
    try:
        custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, KINDS[sample.kind], body, field_validation="Strict"
        )
    except client.ApiException as err:
        return Applied(sample, namespace, False, refusal=f"{err.status}: {err.reason}: {err.body}"[:300])
    return Applied(sample, namespace, True, since=time.monotonic())


def _apply_others(api: client.ApiClient, samples: list[Sample], namespaces: dict[str, str]) -> list[str]:
    """Objects of other kinds in the same files (a ResourceClaimTemplate), where the cluster serves the kind."""
    dyn = dynamic.DynamicClient(api)
    notes = []
    for sample in samples:
        if sample.kind in KINDS or sample.file not in namespaces:
            continue
        try:
            resource = dyn.resources.get(api_version=sample.body["apiVersion"], kind=sample.kind)
        except ResourceNotFoundError:
            notes.append(f"{sample.kind} in {sample.file}: kind not served")
            continue
        body = {**sample.body, "metadata": {**sample.body["metadata"], "namespace": namespaces[sample.file]}}
        resource.create(body=body, namespace=namespaces[sample.file])
        notes.append(f"{sample.kind} in {sample.file}: created")
    return notes


def _observe(api: client.ApiClient, rows: list[Applied]) -> None:
    custom = client.CustomObjectsApi(api)
    now = time.monotonic()
    for row in rows:
        if not row.accepted:
            continue
        obj = custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, row.namespace, KINDS[row.sample.kind], row.sample.name
        )
        state, reason, message, current = _reading(obj)
        if (state, reason) != (row.state, row.reason) or not current:
            row.since = now
        row.state, row.reason, row.message = state, reason, message
        row.settled = current and _explained(row) and now - row.since >= STABLE_SECONDS


def _table(rows: list[Applied]) -> str:
    header = ("sample file", "kind", "name", "accepted", "state", "needs", "reason")
    cells = [
        (
            r.sample.file,
            r.sample.kind,
            r.sample.name,
            "yes" if r.accepted else "NO",
            r.state if r.settled or r.state == "Ready" else f"{r.state} (unsettled)",
            r.needs,
            (f"{r.reason}: {r.message}" if r.accepted else r.refusal).replace("\n", " ")[:220],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(6)]
    return "\n".join(
        "  ".join(col.ljust(w) for col, w in zip(row[:6], widths, strict=True)) + "  " + row[6]
        for row in [header, *cells]
    )


def _summary(rows: list[Applied], kind: str) -> str:
    mine = [r for r in rows if r.sample.kind == kind]
    accepted = [r for r in mine if r.accepted]
    ready = [r for r in accepted if r.state == "Ready"]
    failed = [r for r in accepted if r.state == "Failed" and _explained(r)]
    waiting = [r for r in accepted if r.state not in ("Ready", "Failed") and _explained(r)]
    unexplained = [r for r in accepted if not _explained(r)]
    return (
        f"{kind}: {len(accepted)} of {len(mine)} accepted; {len(ready)} Ready, {len(failed)} Failed with a named "
        f"reason, {len(waiting)} waiting with a named reason, {len(unexplained)} unexplained"
    )


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"NVIDIA's samples are not at {SAMPLES}")
def test_every_nvidia_sample_applied_ends_ready_or_says_what_it_needs(
    crd: Cluster,
    operator_process: OperatorProcess,
    sample_files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    log_start = operator_process.log.stat().st_size if operator_process.log.exists() else 0
    samples = _samples()
    others = _apply_others(crd.api, samples, sample_files)
    rows = [_apply(crd.api, s, sample_files[s.file]) for s in samples if s.kind in KINDS]
    started = time.monotonic()
    deadline = started + SETTLE_SECONDS
    while time.monotonic() < deadline:
        _observe(crd.api, rows)
        if all(r.settled or not r.accepted for r in rows):
            break
        time.sleep(2)
    elapsed = time.monotonic() - started
    log = operator_process.log.read_text()[log_start:] if operator_process.log.exists() else ""
    failures = [line for line in log.splitlines() if "Traceback" in line or "failed with an exception" in line]
    report = (
        f"\nNVIDIA samples applied, apiVersion {c.GROUP}/{c.VERSION}, operator running ({elapsed:.0f} s)\n"
        + _table(rows)
        + "\n"
        + "\n".join([_summary(rows, c.KIND), _summary(rows, c.CACHE_KIND), *others])
    )
    with capsys.disabled():
        print(report)
    assert len([r for r in rows if r.sample.kind == c.KIND]) >= 29, report
    # ASSERTED: 100 % accepted.
    assert [r.sample.name for r in rows if not r.accepted] == [], report
    # ASSERTED: each Ready, or Failed / waiting with a condition that names why, and staying so: no silent hang.
    assert [(r.sample.file, r.sample.name) for r in rows if not r.settled] == [], report
    # ASSERTED: no crash of the operator, no handler that failed with an exception on the way.
    assert operator_process.proc is not None
    assert operator_process.proc.poll() is None
    assert failures == [], "\n".join(failures)
