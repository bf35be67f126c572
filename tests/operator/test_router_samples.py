"""NVIDIA's sample NIMServices that use the router, KServe, gRPC ports, the endpoint picker, a proxy or extra
containers, applied as written (apiVersion changed only) with the operator running: each reaches a state
whose condition names what is missing here (their NIMCache, KServe, a Gateway ...), never UnsupportedField.

The table (sample, state, reason, message) is printed even without ``-s``.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import Cluster
from tests.operator.conftest import NIM, OperatorProcess, wait_for
from tests.operator.test_nvidia_samples import SAMPLE_NAMESPACE, SAMPLES, sample_namespace

pytestmark = pytest.mark.cluster
__all__ = ["sample_namespace"]  # the fixture, from the acceptance test of every sample

FIELDS = ("router", "inferencePlatform", "proxy", "initContainers", "sidecarContainers")


def _uses_these_fields(spec: dict[str, Any]) -> bool:
    expose = spec.get("expose") or {}
    service = expose.get("service") or {}
    return any(f in spec for f in FIELDS) or "router" in expose or "grpcPort" in service or "metricsPort" in service


def _samples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "NIMService" and _uses_these_fields(doc["spec"]):
                out.append((str(path.relative_to(SAMPLES)), doc))
    return out


def _settled(nim: NIM, name: str, generation: int) -> dict[str, Any] | None:
    status = nim.status(name)
    if status.get("observedGeneration") != generation or not status.get("conditions"):
        return None
    return status


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"NVIDIA's samples are not at {SAMPLES}")
def test_samples_using_these_fields_say_what_is_missing_not_unsupported(
    crd: Cluster, operator_process: OperatorProcess, sample_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nim = NIM(crd.api, SAMPLE_NAMESPACE)
    samples = _samples()
    assert len(samples) >= 8, [s for s, _ in samples]
    rows = []
    for file, doc in samples:
        rows.append((file, *_outcome(nim, doc["metadata"]["name"], doc["spec"], file)))
    table = "\n".join(f"{f:55} {s:8} {r:24} {m[:140]}" for f, s, r, m in rows)
    with capsys.disabled():
        print(f"\nNVIDIA samples with router/KServe/proxy/container fields, on the operator:\n{table}")
    assert all(reason != "UnsupportedField" for _, _, reason, _ in rows), table
    assert all(message for _, _, _, message in rows), table
    # Here no NIMCache of theirs exists (NGC is out of reach), so that is what they name first.
    assert all(state == "Pending" and reason == "NIMCacheNotFound" for _, state, reason, _ in rows), table


def _outcome(nim: NIM, name: str, spec: dict[str, Any], file: str) -> tuple[str, str, str]:
    """(state, reason, message) the sample settles in; the NIMService is deleted again (names repeat)."""
    generation = nim.create(name, spec)["metadata"]["generation"]
    status = wait_for(lambda: _settled(nim, name, generation), what=f"{file} to settle")
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    failed = next((x for x in status["conditions"] if x["type"] == "Failed" and x["status"] == "True"), None)
    said = failed or ready
    nim.delete(name)
    wait_for(lambda: _gone(nim, name), what=f"{file}'s NIMService to go")
    return status["state"], said["reason"], said["message"]


def _gone(nim: NIM, name: str) -> bool:
    try:
        nim.get(name)
    except client.ApiException as err:
        return err.status == 404
    return False
