"""Dynamic Resource Allocation (``resource.k8s.io/v1``) in a NIMService's pods. Pure.

Two sources of claims:

- ``spec.draResources`` (NVIDIA's field): an existing ResourceClaim (shared by every pod), an existing
  ResourceClaimTemplate (a claim per pod), or ``claimCreationSpec``, from which the operator makes a
  ResourceClaimTemplate whose device selectors are CEL built from the attribute and capacity selectors
  (NVIDIA's semantics: relative keys belong to ``driverName``; the driver itself is always matched);
- the chosen profile (see ``dra_inventory``), when the cluster offers its GPUs through DRA only: one
  request whose ``firstAvailable`` alternatives are the feasible profiles in rank order.

A template's spec is immutable, so its name carries a hash of its spec: a changed spec makes a new
template, and the reconciler removes the ones no longer rendered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nim_operator import constants as c
from nim_operator.api.dra import AttributeSelector, CapacitySelector, ClaimCreationSpec, DeviceRequest
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.render.meta import Owner, child_metadata

API_VERSION = "resource.k8s.io/v1"
TEMPLATE_KIND = "ResourceClaimTemplate"
CLAIM_KIND = "ResourceClaim"
DEVICE_CLASS_KIND = "DeviceClass"
FIELD = "spec.draResources"
#: The most alternatives one request's firstAvailable takes (resource.k8s.io/v1).
MAX_ALTERNATIVES = 8

_OPS = {
    "Equal": "==",
    "NotEqual": "!=",
    "GreaterThan": ">",
    "GreaterThanOrEqual": ">=",
    "LessThan": "<",
    "LessThanOrEqual": "<=",
}


class DraSpecError(ValueError):
    """A DRA field of the spec cannot be turned into a claim; the message names the field and the fix."""


@dataclass(frozen=True)
class PodClaim:
    """One entry of the pod's ``resourceClaims``, and the requests the model container uses."""

    name: str
    field: str
    claim: str | None = None
    template: str | None = None
    requests: tuple[str, ...] = ()

    def pod_entry(self) -> dict[str, Any]:
        ref = {"resourceClaimName": self.claim} if self.claim else {"resourceClaimTemplateName": self.template}
        return {"name": self.name, **ref}

    def container_entries(self) -> list[dict[str, Any]]:
        if not self.requests:
            return [{"name": self.name}]
        return [{"name": self.name, "request": r} for r in self.requests]


@dataclass(frozen=True)
class ClaimPlan:
    """What DRA adds to the pods, the templates the operator owns, and the DeviceClasses they need."""

    claims: tuple[PodClaim, ...] = ()
    templates: tuple[dict[str, Any], ...] = ()
    #: (field path, DeviceClass) for every class the operator's templates name: each must exist.
    device_classes: tuple[tuple[str, str], ...] = ()
    #: Why the claim looks as it does, for the ProfileSelected condition (empty for the user's claims).
    explanation: str = ""
    #: GPU requests through the device plugin are dropped: the claims bring the GPUs.
    replaces_gpu_requests: bool = field(default=True)
    #: The claim has fallbacks (firstAvailable): which one each pod got is read back from its claim.
    has_alternatives: bool = False

    @property
    def template_names(self) -> tuple[str, ...]:
        return tuple(t["metadata"]["name"] for t in self.templates)


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]


def _qualified(key: str, driver: str) -> tuple[str, str]:
    domain, _, name = key.rpartition("/")
    return (domain or driver), name


def _literal(value: Any) -> str:
    """A CEL literal: JSON's string escapes are CEL's."""
    return json.dumps(value)


def _attribute_expression(selector: AttributeSelector, driver: str, where: str) -> str:
    domain, name = _qualified(selector.key, driver)
    ref = f"device.attributes[{_literal(domain)}].{name}"
    op = _OPS[selector.op]
    value = selector.value
    if value is None:
        raise DraSpecError(f"{where}.value: a value to compare {selector.key} with is required")
    if value.version_value is not None:
        return f"{ref}.compareTo(semver({_literal(value.version_value)})) {op} 0"
    if value.int_value is not None:
        return f"{ref} {op} {value.int_value}"
    if selector.op not in ("Equal", "NotEqual"):
        kind = "a boolean" if value.bool_value is not None else "a string"
        raise DraSpecError(
            f"{where}.op: {selector.op} does not apply to {kind} value: use Equal or NotEqual "
            "(or intValue/versionValue to compare numbers or versions)"
        )
    if value.bool_value is not None:
        return f"{ref} {op} {str(value.bool_value).lower()}"
    return f"{ref} {op} {_literal(value.string_value)}"


def _capacity_expression(selector: CapacitySelector, driver: str) -> str:
    domain, name = _qualified(selector.key, driver)
    return (
        f"device.capacity[{_literal(domain)}].{name}.compareTo(quantity({_literal(str(selector.value))})) "
        f"{_OPS[selector.op]} 0"
    )


def selector_expressions(request: DeviceRequest, where: str) -> list[str]:
    """The CEL selectors of one request: the driver, then each attribute and capacity condition."""
    driver = request.driver_name
    exprs = [f"device.driver == {_literal(driver)}"]
    if request.cel_expressions:
        return exprs + list(request.cel_expressions)
    for i, sel in enumerate(request.attribute_selectors):
        exprs.append(_attribute_expression(sel, driver, f"{where}.attributeSelectors[{i}]"))
    exprs += [_capacity_expression(sel, driver) for sel in request.capacity_selectors]
    return exprs


def _exactly(device_class: str, count: int, expressions: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"deviceClassName": device_class, "allocationMode": "ExactCount", "count": count}
    if expressions:
        body["selectors"] = [{"cel": {"expression": e}} for e in expressions]
    return body


def template_body(owner: Owner, spec: NIMServiceSpec, prefix: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """A ResourceClaimTemplate named ``<prefix>-<hash of its spec>`` (its spec is immutable)."""
    claim_spec = {"spec": {"devices": {"requests": requests}}}
    name = f"{prefix[: 253 - 9]}-{_digest(claim_spec)}"
    return {
        "apiVersion": API_VERSION,
        "kind": TEMPLATE_KIND,
        "metadata": child_metadata(owner, name, spec.labels),
        "spec": claim_spec,
    }


def _created_template(
    owner: Owner, spec: NIMServiceSpec, creation: ClaimCreationSpec, index: int
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    where = f"{FIELD}[{index}].claimCreationSpec"
    requests = []
    classes = []
    for i, device in enumerate(creation.devices):
        exprs = selector_expressions(device, f"{where}.devices[{i}]")
        requests.append({"name": device.name, "exactly": _exactly(device.device_class_name, device.count, exprs)})
        classes.append((f"{where}.devices[{i}].deviceClassName", device.device_class_name))
    prefix = f"{owner.name}-{creation.generate_name or 'claim'}-{index}"
    return template_body(owner, spec, prefix, requests), classes


def user_claims(owner: Owner, spec: NIMServiceSpec) -> ClaimPlan:
    """The claims ``spec.draResources`` asks for. Raises :class:`DraSpecError` for selectors CEL cannot hold."""
    if not spec.dra_resources:
        return ClaimPlan()
    claims: list[PodClaim] = []
    templates: list[dict[str, Any]] = []
    classes: list[tuple[str, str]] = []
    for i, resource in enumerate(spec.dra_resources):
        name, where, requests = f"dra-{i}", f"{FIELD}[{i}]", tuple(resource.requests)
        if resource.resource_claim_name:
            claims.append(
                PodClaim(name, f"{where}.resourceClaimName", claim=resource.resource_claim_name, requests=requests)
            )
        elif resource.resource_claim_template_name:
            claims.append(
                PodClaim(
                    name,
                    f"{where}.resourceClaimTemplateName",
                    template=resource.resource_claim_template_name,
                    requests=requests,
                )
            )
        elif resource.claim_creation_spec is not None:
            body, needed = _created_template(owner, spec, resource.claim_creation_spec, i)
            templates.append(body)
            classes += needed
            claims.append(
                PodClaim(name, f"{where}.claimCreationSpec", template=body["metadata"]["name"], requests=requests)
            )
    return ClaimPlan(tuple(claims), tuple(templates), tuple(classes))


def _user_asks_gpus(spec: NIMServiceSpec) -> bool:
    r = spec.resources
    return r is not None and any(c.GPU_RESOURCE in (s or {}) for s in (r.limits, r.requests))


def apply_to_pod(pod: dict[str, Any], plan: ClaimPlan, spec: NIMServiceSpec) -> None:
    """Add the claims to a rendered pod spec (in place): pod ``resourceClaims``, the model container's
    ``resources.claims``, and the GPU taint's toleration (the claimed devices live on GPU nodes).

    GPUs the profile put in the container's resources go (the claims bring the GPUs; asking the device
    plugin too would take twice as many); ones the user wrote in ``spec.resources`` stay.
    """
    if not plan.claims:
        return
    pod["resourceClaims"] = [claim.pod_entry() for claim in plan.claims]
    container = pod["containers"][0]
    resources = container.setdefault("resources", {})
    resources["claims"] = [entry for claim in plan.claims for entry in claim.container_entries()]
    if plan.replaces_gpu_requests and not _user_asks_gpus(spec):
        for section in ("limits", "requests"):
            resources.get(section, {}).pop(c.GPU_RESOURCE, None)
            if section in resources and not resources[section]:
                del resources[section]
    tolerations = pod.setdefault("tolerations", [])
    if not any(t.get("key") == c.GPU_TAINT_KEY for t in tolerations):
        tolerations.append({"key": c.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
