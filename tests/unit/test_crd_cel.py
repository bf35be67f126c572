"""Every CEL rule of the generated CRD evaluates (true or false, never an error) whatever optional key is
absent, and the rules say yes and no where they should, NVIDIA's samples included."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from celpy import celtypes

from tests.unit.cel_admission import Evaluator, Rule, boolean_paths, example, optional_paths, rules_of, spec_schema

SCHEMA = spec_schema()
RULES = list(rules_of(SCHEMA))
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "compat" / "nvidia-samples"
CEL = Evaluator()


def _without(value: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(value)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    out = copy.deepcopy(value)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return out


def _variants(rule: Rule) -> list[tuple[str, Any]]:
    """The node's value with everything, with only what is required, and with each optional key or
    boolean changed in turn (nested ones too: spec-level rules read deep keys)."""
    full = example(rule.node, full=True)
    minimal = example(rule.node, full=False)
    out: list[tuple[str, Any]] = [("full", full), ("required only", minimal)]
    for base_name, base in (("full", full), ("required only", minimal)):
        for path in optional_paths(rule.node, base):
            out.append((f"{base_name} without {'.'.join(map(str, path))}", _without(base, path)))
        for path in boolean_paths(rule.node, base):
            if path:
                out.append((f"{base_name} with {'.'.join(map(str, path))}=false", _set(base, path, False)))
    return out


def test_the_crd_has_the_rules_this_test_is_about() -> None:
    paths = {r.path for r in RULES}
    assert {"spec", "spec.storage", "spec.storage.pvc", "spec.scale", "spec.multiNode", "spec.draResources[]"} <= paths
    assert len(RULES) >= 20


@pytest.mark.parametrize("rule", RULES, ids=[f"{r.path}:{r.message[:40]}" for r in RULES])
def test_rule_evaluates_with_any_optional_key_absent(rule: Rule) -> None:
    errors = []
    for name, value in _variants(rule):
        try:
            result = CEL.evaluate(rule.rule, value)
        except Exception as err:  # celpy raises CELEvalError where the API server says "no such key"
            errors.append(f"{name}: {err}")
            continue
        if not isinstance(result, celtypes.BoolType):
            errors.append(f"{name}: gave {result!r}, not a bool")
    assert not errors, f"{rule.path}: {rule.rule}\n" + "\n".join(errors)


def test_an_absent_key_is_an_error_for_the_evaluator_as_for_the_api_server() -> None:
    """The check above can fail: the old pvc rule errored when create was absent."""
    with pytest.raises(Exception, match="create"):
        CEL.evaluate("!self.create || has(self.size)", {"name": "models"})


def _refusals(spec: dict[str, Any]) -> list[str]:
    return CEL.violations(SCHEMA, spec)


IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}


def _backend(ref: dict[str, Any]) -> dict[str, Any]:
    gateway = {"name": "g", "namespace": "n", "backendRef": {"name": "p", **ref}}
    return {"expose": {"router": {"hostDomainName": "example.com", "gateway": gateway}}}


@pytest.mark.parametrize(
    ("case", "spec"),
    [
        ("replicas beside autoscaling", {"replicas": 1, "scale": {"enabled": True, "hpa": {"maxReplicas": 2}}}),
        ("pvc without create", {"storage": {"pvc": {"name": "models"}}}),
        ("scale without enabled", {"scale": {"hpa": {"maxReplicas": 3}}}),
        ("hpa without minReplicas", {"scale": {"enabled": True, "hpa": {"maxReplicas": 3}}}),
        ("backendRef to an InferencePool", _backend({"group": "inference.networking.k8s.io", "kind": "InferencePool"})),
        ("backendRef to a Service with port", _backend({"port": 8000})),
        ("computeDomain created", {"multiNode": {"parallelism": {}, "computeDomain": {"create": True}}}),
        ("computeDomain named", {"multiNode": {"parallelism": {}, "computeDomain": {"name": "cd"}}}),
    ],
)
def test_accepted(case: str, spec: dict[str, Any]) -> None:
    assert _refusals({"image": IMAGE, **spec}) == []


@pytest.mark.parametrize(
    ("case", "spec", "message"),
    [
        ("pvc create without size", {"storage": {"pvc": {"create": True}}}, "needs spec.storage.pvc.size"),
        ("two storage sources", {"storage": {"pvc": {"name": "m"}, "emptyDir": {}}}, "takes one source"),
        ("autoscaling without hpa", {"scale": {"enabled": True}}, "needs spec.scale.hpa.maxReplicas"),
        ("hpa min above max", {"scale": {"hpa": {"minReplicas": 5, "maxReplicas": 2}}}, "must not exceed"),
        ("profile and selector", {"profile": "p", "profileSelector": {}}, "not both"),
        ("empty model", {"model": {}}, "spec.model needs name"),
        (
            "multiNode with autoscaling",
            {"multiNode": {"parallelism": {}}, "scale": {"enabled": True, "hpa": {"maxReplicas": 2}}},
            "cannot autoscale",
        ),
        ("mpi and ray", {"multiNode": {"parallelism": {}, "mpi": {}, "ray": {}}}, "mpi or ray, not both"),
        ("computeDomain neither", {"multiNode": {"parallelism": {}, "computeDomain": {}}}, "computeDomain"),
        (
            "computeDomain both",
            {"multiNode": {"parallelism": {}, "computeDomain": {"create": True, "name": "x"}}},
            "computeDomain",
        ),
        (
            "dra claim and template",
            {"draResources": [{"resourceClaimName": "a", "resourceClaimTemplateName": "b"}]},
            "exactly one",
        ),
        ("dra nothing", {"draResources": [{"requests": ["gpu"]}]}, "exactly one"),
        (
            "dra cel and selectors",
            {
                "draResources": [
                    {
                        "claimCreationSpec": {
                            "devices": [
                                {"name": "gpu", "celExpressions": ["true"], "attributeSelectors": [{"key": "k"}]}
                            ]
                        }
                    }
                ]
            },
            "celExpressions cannot be combined",
        ),
        (
            "dra value with two types",
            {
                "draResources": [
                    {
                        "claimCreationSpec": {
                            "devices": [
                                {
                                    "name": "gpu",
                                    "attributeSelectors": [{"key": "k", "value": {"intValue": 1, "stringValue": "a"}}],
                                }
                            ]
                        }
                    }
                ]
            },
            "exactly one of boolValue",
        ),
        (
            "dra capacity not a quantity",
            {
                "draResources": [
                    {
                        "claimCreationSpec": {
                            "devices": [{"name": "gpu", "capacitySelectors": [{"key": "memory", "value": "lots"}]}]
                        }
                    }
                ]
            },
            "must be a quantity",
        ),
        (
            "router ingress and gateway",
            {
                "expose": {
                    "router": {
                        "hostDomainName": "example.com",
                        "ingress": {"ingressClass": "nginx"},
                        "gateway": {"name": "g", "namespace": "n"},
                    }
                }
            },
            "not both",
        ),
        ("router in both places", {"router": {}, "expose": {"router": {}}}, "not both"),
        (
            "legacy and router ingress",
            {
                "expose": {
                    "ingress": {"enabled": True},
                    "router": {"hostDomainName": "example.com", "ingress": {"ingressClass": "nginx"}},
                }
            },
            "set one",
        ),
        (
            "epp config twice",
            {
                "expose": {
                    "router": {
                        "eppConfig": {
                            "containerSpec": {"name": "epp", "image": IMAGE},
                            "config": {},
                            "configMapRef": {"key": "k"},
                        }
                    }
                }
            },
            "not both",
        ),
        (
            "backendRef to a Service without port",
            {
                "expose": {
                    "router": {
                        "hostDomainName": "example.com",
                        "gateway": {"name": "g", "namespace": "n", "backendRef": {"name": "svc"}},
                    }
                }
            },
            "needs port",
        ),
        ("memory not a quantity", {"resources": {"limits": {"memory": "lots"}}}, "must be a quantity"),
        ("shm not a quantity", {"storage": {"sharedMemorySizeLimit": "big"}}, "must be a quantity"),
    ],
)
def test_refused(case: str, spec: dict[str, Any], message: str) -> None:
    refusals = _refusals({"image": IMAGE, **spec})
    assert len(refusals) == 1, refusals
    assert message in refusals[0]
    assert "error evaluating" not in refusals[0]


def _sample_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "NIMService":
                out.append((f"{path.relative_to(SAMPLES)}:{doc['metadata']['name']}", doc["spec"]))
    return out


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="NVIDIA's samples are not beside this checkout")
def test_every_nvidia_sample_passes_every_rule() -> None:
    samples = _sample_specs()
    assert len(samples) == 29
    refused = {name: r for name, spec in samples if (r := _refusals(spec))}
    assert refused == {}
