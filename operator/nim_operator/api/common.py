"""Building blocks shared by the NIMService models: the base model, pass-through objects, CEL rules.

CEL rules live on the model they check (``rules(...)`` in its ``model_config``), so the generated CRD
carries each one at the node it is about. The CRD has no defaults (they live in the models), so a rule
must never read a key it has not proven present with ``has()``: the API server answers a missing key
with "no such key" instead of evaluating the rule.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict, JsonValue

#: A DNS subdomain (RFC 1123), as Kubernetes names most objects.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS label (RFC 1123): a namespace, a Service name.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Model(BaseModel):
    """Field names by camelCase alias; unknown fields are an error (the API server prunes none for us)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def rules(*pairs: tuple[str, str]) -> ConfigDict:
    """A ``model_config`` that puts CEL rules, as (rule, message) pairs, on the model's schema node."""
    validations: list[JsonValue] = [{"rule": rule, "message": message} for rule, message in pairs]
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": validations})


def k8s_object(description: str) -> Any:
    """A pass-through Kubernetes object: kept verbatim, validated where it is used."""
    return Field(
        default=None, description=description, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )


def k8s_objects(description: str) -> Any:
    """A list of pass-through Kubernetes objects (EnvVars, Tolerations, ContainerPorts ...)."""
    return Field(
        default_factory=list,
        description=description,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


_QUANTITIES = "self.all(k, type(self[k]) == int || isQuantity(self[k]))"


def quantities(description: str) -> Any:
    """A map of resource name to quantity (``2``, ``"500m"``, ``"64Gi"``), checked at admission."""
    return Field(
        default=None,
        description=description,
        json_schema_extra={
            # Bounds keep the CEL rule's estimated cost inside the API server's budget.
            "maxProperties": 16,
            "additionalProperties": {"x-kubernetes-int-or-string": True, "maxLength": 64},
            "x-kubernetes-validations": [
                {"rule": _QUANTITIES, "message": "every value must be a quantity such as 2, 500m or 64Gi"}
            ],
        },
    )


def quantity(description: str, *, required: bool = False) -> Any:
    """One quantity (``2``, ``"64Gi"``) as Kubernetes writes it: an int or a string."""
    rule: JsonDict = {
        "rule": "type(self) == int || isQuantity(self)",
        "message": "must be a quantity such as 2, 500m or 64Gi",
    }
    extra: JsonDict = {"maxLength": 64, "x-kubernetes-validations": [rule]}
    if required:
        return Field(description=description, json_schema_extra=extra)
    return Field(default=None, description=description, json_schema_extra=extra)


class Image(Model):
    repository: str = Field(
        min_length=1, description="Runtime image repository, e.g. nvcr.io/nim/meta/llama-3.1-8b-instruct."
    )
    tag: str = Field(min_length=1, description="Runtime image tag.")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy."
    )
    pull_secrets: list[str] = Field(default_factory=list, description="Names of image pull Secrets.")


class ContainerSpec(Model):
    """An extra container of the pod (init, sidecar, endpoint picker), in NVIDIA's short form."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Container name, unique in the pod.")
    image: Image = Field(description="Container image.")
    command: list[str] = Field(default_factory=list, description="Entrypoint; the image's when empty.")
    args: list[str] = Field(default_factory=list, description="Arguments to the entrypoint.")
    env: list[dict[str, Any]] = k8s_objects("Container env (core/v1 EnvVar).")
    working_dir: str | None = Field(default=None, description="Working directory; the image's when unset.")
    # Ours, beyond NVIDIA's short form: without them the operator's defaults apply.
    security_context: dict[str, Any] | None = k8s_object(
        "core/v1 SecurityContext; default: restricted (non-root, no privilege escalation, no capabilities, "
        "RuntimeDefault seccomp, read-only root filesystem with a writable /tmp)."
    )
    resources: dict[str, Any] | None = k8s_object("core/v1 ResourceRequirements of this container.")


#: Names the operator gives containers of its own in the pod: the NIM, and the CA bundle's init container.
RESERVED_CONTAINER_NAMES = ("nim", "update-ca-certificates")
#: Bounds the cost estimate of the rules below (a pod with more extra containers is a mistake anyway).
MAX_EXTRA_CONTAINERS = 32


def extra_containers(description: str) -> Any:
    """A list of extra containers, unique by name as the API server checks a pod's (a duplicate is refused
    at admission, not when the Deployment is applied)."""
    return Field(
        default_factory=list,
        max_length=MAX_EXTRA_CONTAINERS,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


def _not_reserved(field: str) -> tuple[str, str]:
    return (
        f"!has(self.{field}) || self.{field}.all(x, !(x.name in {list(RESERVED_CONTAINER_NAMES)}))",
        f"spec.{field}: the names {', '.join(RESERVED_CONTAINER_NAMES)} belong to the operator's containers: "
        "rename the container",
    )


#: Spec-level rules: every container of the pod needs a name of its own.
CONTAINER_RULES = (
    _not_reserved("initContainers"),
    _not_reserved("sidecarContainers"),
    (
        "!has(self.initContainers) || !has(self.sidecarContainers) || "
        "self.sidecarContainers.all(s, !self.initContainers.exists(i, i.name == s.name))",
        "spec.initContainers and spec.sidecarContainers share a container name: names must be unique in the pod",
    ),
)
