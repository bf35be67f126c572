"""``inferencePlatform: kserve`` on the real control plane, with KServe's own InferenceService CRD (from the
``github.com/kserve/kserve`` module, tests/cluster/router.sh): without it, a Failed condition naming the CRD
and the fix and nothing applied; installing it heals the NIMService without a spec edit; the
InferenceService is accepted by KServe's schema with nothing pruned, owned, and removed when the platform
changes back. No KServe controller runs here, so status says the operator waits for it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import Placement
from nim_operator.render import Owner
from nim_operator.render.kserve import render_inference_service
from tests.conftest import STATE, Cluster
from tests.operator.conftest import NIM, OperatorProcess, install_crd, wait_for

pytestmark = pytest.mark.cluster

KSERVE_CRD = STATE / "router" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
CRD_NAME = "inferenceservices.serving.kserve.io"
KSERVE_API = ("serving.kserve.io", "v1beta1")
LLAMA = {"image": {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}}
#: How long a pass may take to notice a cluster change nobody announces (the operator's resync).
HEAL_TIMEOUT = 150


def _crd_present(api: client.ApiextensionsV1Api) -> bool:
    try:
        api.read_custom_resource_definition(CRD_NAME)
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


@pytest.fixture
def kserve_absent(crd: Cluster, operator_process: OperatorProcess) -> client.ApiextensionsV1Api:
    """A cluster without KServe's InferenceService CRD: removed, while the operator runs and watches
    InferenceServices, if an earlier test installed it (as when KServe is uninstalled)."""
    if not KSERVE_CRD.is_file():
        pytest.fail(f"{KSERVE_CRD} is missing: tests/cluster/up.sh links the CRDs router.sh fetched")
    api = client.ApiextensionsV1Api(crd.api)
    if _crd_present(api):
        api.delete_custom_resource_definition(CRD_NAME)
        wait_for(lambda: not _crd_present(api), timeout=120, what="KServe's CRD to be gone")
    assert operator_process.proc is not None
    assert operator_process.proc.poll() is None, "the operator survives a watched CRD going away"
    return api


@pytest.fixture
def kserve_installed(crd: Cluster) -> Cluster:
    install_crd(crd.api, KSERVE_CRD)
    return crd


def _isvc(nim: NIM, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = nim.custom.get_namespaced_custom_object(
            *KSERVE_API, nim.namespace, "inferenceservices", name
        )
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return found


def _failed(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Failed")


def test_without_kserve_it_fails_naming_the_crd_and_heals_when_it_is_installed(
    kserve_absent: client.ApiextensionsV1Api, nim: NIM
) -> None:
    nim.create("llama", {**LLAMA, "inferencePlatform": "kserve", "replicas": 2})
    status = nim.wait_state("llama", "Failed")
    failed = _failed(status)
    assert failed["reason"] == "MissingAPI"
    assert "install KServe" in failed["message"]
    assert "InferenceService" in failed["message"]
    assert "serving.kserve.io" in failed["message"]
    assert "install" in failed["message"]
    assert nim.deployment("llama") is None, "nothing half-applied"
    pdbs = client.PolicyV1Api(nim.api).list_namespaced_pod_disruption_budget(nim.namespace).items
    assert pdbs == [], "the InferenceService goes first: no sibling is created (and rolled back on each retry)"

    install_crd(nim.api, KSERVE_CRD)  # no spec edit
    isvc = wait_for(lambda: _isvc(nim, "llama"), timeout=HEAL_TIMEOUT, what="the InferenceService after the CRD")
    status = wait_for(
        lambda: (s := nim.status("llama"))["state"] != "Failed" and s, timeout=60, what="the NIMService to recover"
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (status["state"], ready["reason"]) == ("Pending", "WaitingForKServe")
    assert "kserve-controller-manager" in ready["message"]
    refs = isvc["metadata"]["ownerReferences"]
    assert refs[0]["uid"] == nim.get("llama")["metadata"]["uid"]


def test_the_inference_service_passes_kserves_schema_with_nothing_pruned(kserve_installed: Cluster, nim: NIM) -> None:
    # An image the catalog does not know: no profile is chosen, so the rendering below is exactly the operator's.
    spec = {
        "image": {"repository": "registry.example.com/custom-nim", "tag": "1"},
        "resources": {"limits": {"nvidia.com/gpu": 1}},
        "inferencePlatform": "kserve",
        "scale": {
            "enabled": True,
            "hpa": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                    }
                ],
            },
        },
        "proxy": {"httpsProxy": "http://proxy:3128", "certConfigMap": "corp-ca"},
        "sidecarContainers": [{"name": "shipper", "image": {"repository": "fluent-bit", "tag": "3"}}],
        "expose": {"service": {"grpcPort": 8001}},
    }
    nim.create("llama", spec)
    isvc = wait_for(lambda: _isvc(nim, "llama"), what="the InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) == (
        1,
        3,
        "cpu",
        80,
    )
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert [c["name"] for c in predictor["containers"]] == ["nim", "shipper"]
    assert [c["name"] for c in predictor["initContainers"]] == ["update-ca-certificates"]
    nim_container = predictor["containers"][0]
    assert {p["name"] for p in nim_container["ports"]} == {"api", "grpc"}
    assert nim_container["securityContext"]["readOnlyRootFilesystem"] is True
    assert str(nim_container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert predictor["labels"]["app.kubernetes.io/instance"] == "llama"
    # Server-side apply keeps what the schema knows and prunes the rest: what we asked for must all be there.
    owner = Owner("llama", nim.namespace, isvc["metadata"]["ownerReferences"][0]["uid"])
    wanted = render_inference_service(owner, NIMServiceSpec.model_validate(spec), Placement(None))
    assert wanted is not None
    pruned = _missing(wanted["spec"], isvc["spec"])
    assert pruned == [], f"pruned by KServe's CRD: {pruned}\nwanted {wanted['spec']}\nstored {isvc['spec']}"
    assert nim.deployment("llama") is None
    assert nim.wait_state("llama", "Pending")


def _missing(wanted: Any, stored: Any, path: str = "spec") -> list[str]:
    """Paths of ``wanted`` that ``stored`` lacks (the API server's defaults may add, never remove)."""
    if isinstance(wanted, dict):
        if not isinstance(stored, dict):
            return [path]
        return [m for k, v in wanted.items() for m in _missing(v, stored.get(k, _ABSENT), f"{path}.{k}")]
    if isinstance(wanted, list):
        if not isinstance(stored, list) or len(stored) != len(wanted):
            return [path]
        return [m for i, (w, s) in enumerate(zip(wanted, stored, strict=True)) for m in _missing(w, s, f"{path}[{i}]")]
    return [] if str(wanted) == str(stored) else [path]


_ABSENT = object()


def test_switching_the_platform_swaps_deployment_and_inference_service(kserve_installed: Cluster, nim: NIM) -> None:
    nim.create("llama", LLAMA)
    nim.wait_state("llama", "Ready")
    nim.patch("llama", {"spec": {"inferencePlatform": "kserve"}})
    wait_for(lambda: _isvc(nim, "llama"), what="the InferenceService")
    wait_for(lambda: nim.deployment("llama") is None, what="the Deployment to go")
    with pytest.raises(client.ApiException):
        nim.core.read_namespaced_service("llama", nim.namespace)
    nim.patch("llama", {"spec": {"inferencePlatform": "standalone"}})
    nim.wait_state("llama", "Ready")
    wait_for(lambda: _isvc(nim, "llama") is None, what="the InferenceService to go")


SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "compat" / "nvidia-samples" / "serving" / "kserve"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="NVIDIA's samples are not beside this checkout")
@pytest.mark.parametrize("sample", ["standard/llm.yaml", "knative/llm.yaml"])
def test_nvidias_kserve_samples_without_their_cache_make_an_inference_service(
    kserve_installed: Cluster, nim: NIM, sample: str
) -> None:
    """The sample's NIMService, its NIMCache replaced by an emptyDir (no NGC here), reaches KServe's API."""
    doc = next(d for d in yaml.safe_load_all((SAMPLES / sample).read_text()) if d and d["kind"] == "NIMService")
    spec = copy.deepcopy(doc["spec"])
    spec["storage"] = {"emptyDir": {}}
    nim.create("sample", spec)
    isvc = wait_for(lambda: _isvc(nim, "sample"), what="the sample's InferenceService")
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode == ("Standard" if sample.startswith("standard") else "Knative")
    status = wait_for(lambda: (s := nim.status("sample")).get("state") and s, what="a state")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "WaitingForKServe", status
