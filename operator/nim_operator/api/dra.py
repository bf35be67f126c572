"""Dynamic Resource Allocation (resource.k8s.io) claims a NIMService's pods use, with NVIDIA's field names.

A claim is named (an existing ResourceClaim or ResourceClaimTemplate) or described (``claimCreationSpec``:
devices by class, attribute and capacity selectors, from which a ResourceClaimTemplate is made).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nim_operator.api.common import DNS_SUBDOMAIN, Model, quantity, rules

#: The DeviceClass and driver of NVIDIA's DRA driver for GPUs.
NVIDIA_GPU_DRIVER = "gpu.nvidia.com"

Comparison = Literal["Equal", "NotEqual", "GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual"]


def _one_of(*fields: str) -> str:
    """CEL: exactly one of these fields is present."""
    return " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields) + " == 1"


class AttributeValue(Model):
    model_config = rules(
        (
            _one_of("boolValue", "intValue", "stringValue", "versionValue"),
            "set exactly one of boolValue, intValue, stringValue or versionValue",
        )
    )

    bool_value: bool | None = Field(default=None, description="A true/false attribute.")
    int_value: int | None = Field(default=None, description="A number attribute.")
    string_value: str | None = Field(default=None, max_length=64, description="A string attribute.")
    version_value: str | None = Field(default=None, max_length=64, description="A semantic version (semver 2.0.0).")


class AttributeSelector(Model):
    key: str = Field(
        min_length=1,
        max_length=64,
        description="Device attribute, qualified (gpu.nvidia.com/productName) or relative to the driver (productName).",
    )
    op: Comparison = Field(default="Equal", description="How the device's attribute compares with value.")
    value: AttributeValue | None = Field(default=None, description="The value compared with.")


class CapacitySelector(Model):
    key: str = Field(
        min_length=1, max_length=64, description="Device capacity, qualified or relative to the driver (memory)."
    )
    op: Comparison = Field(default="Equal", description="How the device's capacity compares with value.")
    value: int | str = quantity("The quantity compared with, e.g. 40Gi.", required=True)


class DeviceRequest(Model):
    model_config = rules(
        (
            "!has(self.celExpressions) || !(has(self.attributeSelectors) || has(self.capacitySelectors))",
            "celExpressions cannot be combined with attributeSelectors or capacitySelectors",
        )
    )

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Request name in the generated claim."
    )
    count: int = Field(default=1, ge=1, description="Devices to allocate.")
    device_class_name: str = Field(
        default=NVIDIA_GPU_DRIVER, min_length=1, description=f"DeviceClass (default {NVIDIA_GPU_DRIVER})."
    )
    driver_name: str = Field(
        default=NVIDIA_GPU_DRIVER,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Driver that relative attribute and capacity keys belong to.",
    )
    attribute_selectors: list[AttributeSelector] = Field(
        default_factory=list, max_length=20, description="Conditions on device attributes (all must hold)."
    )
    capacity_selectors: list[CapacitySelector] = Field(
        default_factory=list, max_length=12, description="Conditions on device capacities (all must hold)."
    )
    cel_expressions: list[str] = Field(
        default_factory=list, description="Raw CEL device selectors, instead of the selectors above."
    )


class ClaimCreationSpec(Model):
    generate_name: str | None = Field(
        default=None, min_length=1, max_length=16, description="Name prefix of the generated ResourceClaimTemplate."
    )
    # Bounded so that the API server's cost estimate of the per-item CEL rules stays within its budget.
    devices: list[DeviceRequest] = Field(
        min_length=1, max_length=32, description="Device requests of the generated claim."
    )


class DRAResource(Model):
    model_config = rules(
        (
            _one_of("resourceClaimName", "resourceClaimTemplateName", "claimCreationSpec"),
            "set exactly one of resourceClaimName, resourceClaimTemplateName or claimCreationSpec",
        )
    )

    resource_claim_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="An existing ResourceClaim (shared).",
    )
    resource_claim_template_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="An existing ResourceClaimTemplate (a claim per pod).",
    )
    claim_creation_spec: ClaimCreationSpec | None = Field(
        default=None, description="Devices from which the operator makes a ResourceClaimTemplate."
    )
    requests: list[str] = Field(
        default_factory=list, description="Requests of the claim the model container gets; all when empty."
    )
