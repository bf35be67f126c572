"""How a NIMService is reached: its Service, the legacy Ingress and the router (Ingress, Gateway API routes,
the inference extension's endpoint picker), with NVIDIA's field names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from nim_operator import constants as c
from nim_operator.api.common import DNS_LABEL, DNS_SUBDOMAIN, ContainerSpec, Model, k8s_object, k8s_objects, rules


def _ports_differ(a: str, b: str) -> tuple[str, str]:
    """A rule: ports a and b of spec.expose.service differ (port has the model's default when absent)."""
    value_b = f"(has(self.port) ? self.port : {c.DEFAULT_PORT})" if b == "port" else f"self.{b}"
    present = f"!has(self.{a})" if b == "port" else f"!has(self.{a}) || !has(self.{b})"
    return (
        f"{present} || self.{a} != {value_b}",
        f"spec.expose.service.{a} must differ from {b}: each is its own port of the Service and the pods",
    )


class ServiceExpose(Model):
    """The Service in front of the pods: the api port, and NVIDIA's optional gRPC and metrics ports.

    Each port is a port of the Service and of the container, so two of them may not share a number (the
    API server would refuse the Service, after the NIMService had been accepted).
    """

    model_config = rules(
        _ports_differ("grpcPort", "port"),
        _ports_differ("metricsPort", "port"),
        _ports_differ("metricsPort", "grpcPort"),
    )

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(default="ClusterIP", description="Service type.")
    port: int = Field(default=c.DEFAULT_PORT, ge=1, le=65535, description="Service and container port (named api).")
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="gRPC port (named grpc) on the Service and the container, for NIMs that serve a gRPC "
        "endpoint (Riva, Triton); given to the NIM as NIM_GRPC_API_PORT and NIM_TRITON_GRPC_PORT. A GRPCRoute "
        "(router.gateway.grpcRoutesEnabled) sends here.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of a separate metrics endpoint (named metrics) on the Service and the container, for "
        "NIMs whose Triton server has one; given to the NIM as NIM_TRITON_METRICS_PORT. Our runtime serves "
        "metrics on the api port.",
    )
    name: str | None = Field(default=None, description="Service name; defaults to the NIMService name.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Service annotations.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra Service labels.")


class IngressExpose(Model):
    """Deprecated by NVIDIA in favour of expose.router.ingress; still honoured."""

    enabled: bool = Field(default=False, description="Create an Ingress.")
    spec: dict[str, Any] | None = k8s_object(
        "networking.k8s.io/v1 IngressSpec; rules without a backend get the Service."
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Ingress annotations.")


class RouterIngress(Model):
    ingress_class: str = Field(min_length=1, description="IngressClass of the Ingress the router creates.")
    tls_secret_name: str | None = Field(default=None, description="Secret with the TLS certificate and key.")


class BackendRef(Model):
    """A Gateway API BackendRef: where matched requests go instead of the NIMService's Service."""

    model_config = rules(
        (
            "((has(self.group) && self.group != '') || (has(self.kind) && self.kind != 'Service')) || has(self.port)",
            "a backendRef to a Service needs port",
        )
    )

    group: str | None = Field(
        default=None, max_length=253, pattern=r"^$|" + DNS_SUBDOMAIN, description="API group; empty for core."
    )
    kind: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$",
        description="Kind of the referent (default Service), e.g. InferencePool.",
    )
    name: str = Field(min_length=1, max_length=253, description="Name of the referent.")
    namespace: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=DNS_LABEL, description="Namespace; the route's if unset."
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="Destination port; required for a Service.")
    weight: int | None = Field(default=None, ge=0, le=1000000, description="Share of the traffic (default 1).")


class Gateway(Model):
    namespace: str = Field(min_length=1, description="Namespace of the Gateway the routes attach to.")
    name: str = Field(min_length=1, description="Name of the Gateway.")
    http_routes_enabled: bool = Field(default=True, description="Create an HTTPRoute.")
    grpc_routes_enabled: bool = Field(default=False, description="Create a GRPCRoute (needs expose.service.grpcPort).")
    backend_ref: BackendRef | None = Field(
        default=None, description="Backend of the HTTPRoute instead of the Service, e.g. an InferencePool."
    )


class ConfigMapKeyRef(Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="ConfigMap name.")
    key: str = Field(min_length=1, description="Key holding the EndpointPickerConfig YAML.")
    optional: bool | None = Field(default=None, description="Whether the ConfigMap may be absent.")


class EPPConfig(Model):
    """The Gateway API Inference Extension's endpoint picker in front of an InferencePool of the pods."""

    model_config = rules(
        ("!(has(self.configMapRef) && has(self.config))", "set configMapRef or config, not both"),
        (
            "has(self.configMapRef) || has(self.config)",
            "eppConfig needs its EndpointPickerConfig: inline in config, or a ConfigMap key in configMapRef",
        ),
    )

    container_spec: ContainerSpec = Field(description="The endpoint picker's container.")
    readiness_probe: dict[str, Any] | None = k8s_object("core/v1 Probe of the endpoint picker.")
    liveness_probe: dict[str, Any] | None = k8s_object("core/v1 Probe of the endpoint picker.")
    startup_probe: dict[str, Any] | None = k8s_object("core/v1 Probe of the endpoint picker.")
    ports: list[dict[str, Any]] = k8s_objects("core/v1 ContainerPorts of the endpoint picker.")
    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="A ConfigMap key with an EndpointPickerConfig (not with config)."
    )
    config: dict[str, Any] | None = k8s_object(
        "An EndpointPickerConfig, written to a ConfigMap (not with configMapRef)."
    )


class Router(Model):
    """Routes to the NIMService at <name>.<namespace>.<hostDomainName>."""

    model_config = rules(
        ("!(has(self.gateway) && has(self.ingress))", "set router.ingress or router.gateway, not both"),
        (
            "!(has(self.gateway) || has(self.ingress)) || has(self.hostDomainName)",
            "router.ingress and router.gateway need router.hostDomainName: they route the host "
            "<name>.<namespace>.<hostDomainName>",
        ),
    )

    host_domain_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^(([a-z0-9][a-z0-9\-]*[a-z0-9])|[a-z0-9]+\.)*([a-z]+|xn\-\-[a-z0-9]+)\.?$",
        description="Domain under which the host <name>.<namespace>.<hostDomainName> is routed.",
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the Ingress or routes.")
    ingress: RouterIngress | None = Field(default=None, description="Route through an Ingress.")
    gateway: Gateway | None = Field(default=None, description="Route through a Gateway (HTTPRoute, GRPCRoute).")
    epp_config: EPPConfig | None = Field(
        default=None, description="Pick endpoints with the inference extension's picker."
    )


class Expose(Model):
    model_config = rules(
        (
            "!(has(self.ingress) && has(self.ingress.enabled) && self.ingress.enabled"
            " && has(self.router) && has(self.router.ingress))",
            "spec.expose.ingress (deprecated) and spec.expose.router.ingress both create an Ingress: set one",
        )
    )

    service: ServiceExpose = Field(default_factory=ServiceExpose, description="The Service in front of the pods.")
    ingress: IngressExpose | None = Field(default=None, description="Optional Ingress (deprecated: use router).")
    router: Router | None = Field(default=None, description="Ingress or Gateway API routes to the Service.")


def _grpc_routes_need_a_port(router: str, field: str) -> tuple[str, str]:
    """A spec-level rule: a GRPCRoute needs the gRPC port it sends to (NVIDIA's webhook asks the same).

    ``router`` is the CEL path of the router, every step of which is tested with has() first.
    """
    steps = router.split(".")
    present = " && ".join(f"has({'.'.join(steps[:n])})" for n in range(2, len(steps) + 1))
    gateway = f"{router}.gateway"
    return (
        f"!({present} && has({gateway}) && has({gateway}.grpcRoutesEnabled) && {gateway}.grpcRoutesEnabled)"
        " || (has(self.expose) && has(self.expose.service) && has(self.expose.service.grpcPort))",
        f"{field}.gateway.grpcRoutesEnabled needs spec.expose.service.grpcPort, the port the GRPCRoute sends to: "
        "set it, or set grpcRoutesEnabled to false",
    )


#: Rules of the NIMService spec that read the router and the Service together (the router has two homes).
SPEC_RULES = (
    _grpc_routes_need_a_port("self.expose.router", "spec.expose.router"),
    _grpc_routes_need_a_port("self.router", "spec.router"),
)
