"""Generate the NIMService CustomResourceDefinition from the typed spec.

Kubernetes wants a *structural* schema: no ``$ref``, no ``anyOf`` around types, explicit
``x-kubernetes-preserve-unknown-fields`` for free-form objects. Pydantic's JSON schema is close;
this module closes the gap. Defaults are deliberately left out of the CRD: they live once, in the
models, and the CEL rules rely on telling "unset" from "set to the default" (``replicas``).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec, NIMServiceStatus

_DROP = {"title", "default", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        # Optional[X] arrives as anyOf [X, {type: null}]: a missing field says the same thing.
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            return _structural({**rest, "x-kubernetes-int-or-string": True}, defs)
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a structural schema: {node}")
        return _structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out[key] = _structural(value, defs)
        elif key == "enum" and node.get("type") is None:
            out[key] = value
            out["type"] = "string"
        elif key == "const":
            # A one-value Literal: OpenAPI v3 in Kubernetes knows enum, not const.
            out["enum"] = [value]
        else:
            out[key] = _structural(value, defs)
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = "object"
        out.pop("additionalProperties", None)
    return out


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, by alias (the names users write)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return schema


def spec_schema() -> dict[str, Any]:
    """The spec's schema; its CEL rules come with the models (``api.common.rules``)."""
    return schema_of(NIMServiceSpec)


def build_crd() -> dict[str, Any]:
    """The whole CRD object, ready for `kubectl apply`."""
    status = schema_of(NIMServiceStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{c.PLURAL}.{c.GROUP}"},
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": c.KIND,
                "listKind": f"{c.KIND}List",
                "plural": c.PLURAL,
                "singular": c.SINGULAR,
                "shortNames": list(c.SHORT_NAMES),
                "categories": ["nim"],
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "State", "type": "string", "jsonPath": ".status.state"},
                        {"name": "Profile", "type": "string", "jsonPath": ".status.profile.id"},
                        {"name": "GPUs", "type": "integer", "jsonPath": ".status.profile.gpuCount"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.availableReplicas"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "NIMService runs a NIM-compatible LLM server on the GPUs that suit it.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated by `nim-operator crd` from nim_operator/api/ (spec.py and its models). Do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


_READY_REASON = ".status.conditions[?(@.type=='Ready')].reason"


def build_cache_crd() -> dict[str, Any]:
    """The NIMCache CRD: NVIDIA's fields, our catalog source, state/progress/size columns for `kubectl get`."""
    from nim_operator.api.nimcache import NIMCacheSpec, NIMCacheStatus

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{c.CACHE_PLURAL}.{c.GROUP}"},
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": c.CACHE_KIND,
                "listKind": f"{c.CACHE_KIND}List",
                "plural": c.CACHE_PLURAL,
                "singular": c.CACHE_SINGULAR,
                "shortNames": list(c.CACHE_SHORT_NAMES),
                "categories": ["nim"],
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "State", "type": "string", "jsonPath": ".status.state"},
                        {"name": "PVC", "type": "string", "jsonPath": ".status.pvc"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
                        {"name": "Size", "type": "string", "jsonPath": ".status.size"},
                        {"name": "Reason", "type": "string", "jsonPath": _READY_REASON},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "NIMCache fetches a model's weights once into a claim NIMServices mount.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": schema_of(NIMCacheSpec),
                                "status": schema_of(NIMCacheStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_cache_crd_yaml() -> str:
    header = "# Generated by `nim-operator crd --kind NIMCache` from nim_operator/api/nimcache.py. Do not edit.\n"
    return header + yaml.safe_dump(build_cache_crd(), sort_keys=False, width=120)
