"""What NVIDIA's NIMService adds to the pod around the NIM container: the gRPC and metrics ports, proxy
settings with a CA bundle, and the user's init and sidecar containers. Pure.

Shapes follow NVIDIA's operator (container and volume names, env names, mount points), with two changes
that our pod security demands:

- The CA bundle. NVIDIA runs ``update-ca-certificates`` as root in an init container. Ours runs as the
  pod's non-root user: it copies the image's ``/etc/ssl/certs`` into an emptyDir, appends the ConfigMap's
  ``*.crt`` and ``*.pem`` files to ``ca-certificates.crt`` (and rehashes the directory when the image has
  ``openssl``), and the NIM container mounts that emptyDir at ``/etc/ssl`` as NVIDIA's does. Like NVIDIA's,
  it runs at each pod start, so a changed ConfigMap reaches pods as they restart or roll.
  ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE`` point at the bundle, because Python's HTTP clients
  (huggingface_hub's among them) trust certifi's own bundle otherwise.
- User containers get the restricted security context of the NIM container unless they set one.
"""

from __future__ import annotations

import copy
from typing import Any

from nim_operator import constants as c
from nim_operator.api.common import RESERVED_CONTAINER_NAMES, ContainerSpec
from nim_operator.api.spec import NIMServiceSpec

ENV_GRPC_PORT = ("NIM_GRPC_API_PORT", "NIM_TRITON_GRPC_PORT")
ENV_METRICS_PORT = "NIM_TRITON_METRICS_PORT"
#: NVIDIA sets it with any proxy: NIM's own SDK then trusts the system bundle instead of its built-in one.
ENV_NATIVE_TLS = "NIM_SDK_USE_NATIVE_TLS"

CA_INIT_CONTAINER = RESERVED_CONTAINER_NAMES[1]
CA_VOLUME = "ca-cert-volume"
CUSTOM_CA_VOLUME = "custom-ca"
SSL_DIR = "/etc/ssl"
CA_BUNDLE = f"{SSL_DIR}/certs/ca-certificates.crt"
#: Where the init container builds the bundle, and where it finds the ConfigMap's files.
_CA_BUILD_DIR = "/ca-certs"
_CUSTOM_DIR = "/custom"
#: Shared by the NIM, init and sidecar containers when the user adds any (NVIDIA's /scratch).
SCRATCH_VOLUME = "scratch"
SCRATCH_DIR = "/scratch"


def restricted_security_context() -> dict[str, Any]:
    """The NIM container's security context, which user containers get unless they set their own."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_ports(spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """The NIM container's ports beyond ``api``: NVIDIA's named gRPC and metrics ports."""
    service = spec.expose.service
    named = ((c.GRPC_PORT_NAME, service.grpc_port), (c.METRICS_PORT_NAME, service.metrics_port))
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in named if port is not None]


def service_ports(spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """The Service's ports beyond ``api``, each to the container port of its name."""
    return [
        {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"], "protocol": "TCP"}
        for p in container_ports(spec)
    ]


def nim_env(spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """Operator env for the ports, the proxy and the CA bundle (the user's env still wins over it)."""
    service = spec.expose.service
    env: list[dict[str, Any]] = []
    if service.grpc_port is not None:
        env += [{"name": name, "value": str(service.grpc_port)} for name in ENV_GRPC_PORT]
    if service.metrics_port is not None:
        env.append({"name": ENV_METRICS_PORT, "value": str(service.metrics_port)})
    proxy = spec.proxy
    if proxy is None:
        return env
    env.append({"name": ENV_NATIVE_TLS, "value": "1"})
    # Both cases: curl and Go read the lower-case names, Python and many others the upper-case ones.
    for name, value in (
        ("HTTPS_PROXY", proxy.https_proxy),
        ("HTTP_PROXY", proxy.http_proxy),
        ("NO_PROXY", proxy.no_proxy),
    ):
        if value:
            env += [{"name": name, "value": value}, {"name": name.lower(), "value": value}]
    if proxy.cert_config_map:
        env += [{"name": "SSL_CERT_FILE", "value": CA_BUNDLE}, {"name": "REQUESTS_CA_BUNDLE", "value": CA_BUNDLE}]
    return env


def _ca_script(config_map: str) -> str:
    return (
        "set -eu; "
        f"mkdir -p {_CA_BUILD_DIR}/certs; "
        f"if [ -d {SSL_DIR}/certs ]; then cp -R {SSL_DIR}/certs/. {_CA_BUILD_DIR}/certs/; fi; "
        f"if [ -f {SSL_DIR}/openssl.cnf ]; then cp {SSL_DIR}/openssl.cnf {_CA_BUILD_DIR}/; fi; "
        f"bundle={_CA_BUILD_DIR}/certs/ca-certificates.crt; added=0; "
        f"for f in {_CUSTOM_DIR}/*.crt {_CUSTOM_DIR}/*.pem; do "
        '[ -f "$f" ] || continue; '
        'cat "$f" >> "$bundle"; echo >> "$bundle"; '
        f'cp "$f" "{_CA_BUILD_DIR}/certs/nim-custom-$(basename "$f").crt"; '
        "added=$((added + 1)); done; "
        "if command -v openssl >/dev/null 2>&1; then "
        f"openssl rehash {_CA_BUILD_DIR}/certs >/dev/null 2>&1 || true; fi; "
        f'echo "added $added CA certificate file(s) of ConfigMap {config_map} to {CA_BUNDLE}"'
    )


def _ca_init_container(spec: NIMServiceSpec, config_map: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CA_INIT_CONTAINER,
        "image": f"{spec.image.repository}:{spec.image.tag}",
        "command": ["/bin/sh", "-c", _ca_script(config_map)],
        "volumeMounts": [
            {"name": CA_VOLUME, "mountPath": _CA_BUILD_DIR},
            {"name": CUSTOM_CA_VOLUME, "mountPath": _CUSTOM_DIR, "readOnly": True},
        ],
        "securityContext": restricted_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image.pull_policy:
        container["imagePullPolicy"] = spec.image.pull_policy
    return container


def _merged_env(base: list[dict[str, Any]], own: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The NIM's env with the container's own entries replacing those of the same name (NVIDIA merges so)."""
    names = {e.get("name") for e in own}
    return [copy.deepcopy(e) for e in base if e.get("name") not in names] + [copy.deepcopy(e) for e in own]


def _user_container(
    user: ContainerSpec, spec: NIMServiceSpec, env: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": user.name,
        "image": f"{user.image.repository}:{user.image.tag}",
        "env": _merged_env(env, user.env),
        "volumeMounts": copy.deepcopy(mounts),
        "securityContext": copy.deepcopy(user.security_context) or restricted_security_context(),
    }
    pull_policy = user.image.pull_policy or spec.image.pull_policy
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    optional = {
        "command": list(user.command) or None,
        "args": list(user.args) or None,
        "workingDir": user.working_dir,
        "resources": copy.deepcopy(user.resources),
    }
    container.update({k: v for k, v in optional.items() if v})
    return container


def _model_mount(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in mounts if m.get("mountPath") == c.MODEL_STORE]


def with_extras(pod_spec: dict[str, Any], spec: NIMServiceSpec) -> dict[str, Any]:
    """The pod spec (whose first container is the NIM) with the CA bundle, init and sidecar containers.

    Init containers see the model store as the NIM does (one may fill it), /tmp and /scratch, and the
    finished CA bundle at /etc/ssl; sidecars see every mount of the NIM container.
    """
    pod = copy.deepcopy(pod_spec)
    nim = pod["containers"][0]
    volumes: list[dict[str, Any]] = pod.setdefault("volumes", [])
    mounts: list[dict[str, Any]] = nim.setdefault("volumeMounts", [])
    init: list[dict[str, Any]] = []
    config_map = spec.proxy.cert_config_map if spec.proxy else None
    if config_map:
        volumes += [
            {"name": CA_VOLUME, "emptyDir": {}},
            {"name": CUSTOM_CA_VOLUME, "configMap": {"name": config_map}},
        ]
        mounts.append({"name": CA_VOLUME, "mountPath": SSL_DIR, "readOnly": True})
        init.append(_ca_init_container(spec, config_map))
    if spec.init_containers or spec.sidecar_containers:
        volumes.append({"name": SCRATCH_VOLUME, "emptyDir": {}})
        mounts.append({"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR})
    env = nim.get("env", [])
    shared = [m for m in mounts if m["mountPath"] in ("/tmp", SCRATCH_DIR, SSL_DIR)]
    init += [_user_container(u, spec, env, _model_mount(mounts) + shared) for u in spec.init_containers]
    pod["containers"] += [_user_container(u, spec, env, mounts) for u in spec.sidecar_containers]
    if init:
        pod["initContainers"] = init
    return pod
