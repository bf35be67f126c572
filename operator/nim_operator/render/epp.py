"""The Gateway API Inference Extension for ``router.eppConfig``: an InferencePool of the NIM pods and the
endpoint picker (EPP) that a Gateway asks which pod gets each request. Pure.

Objects, names, ports, default arguments and probes are NVIDIA's: ServiceAccount, Role and RoleBinding
``<name>-epp`` (the picker watches the pool and its pods), a ConfigMap ``<name>-epp-config`` when the
EndpointPickerConfig is given inline, a Service and a Deployment ``<name>-epp``, and the InferencePool
``<name>`` selecting the NIM pods on the api port. Ours: the picker's pod is restricted like the NIM's, and
its labels keep it out of the NIMService's Service, pod selector and pod health.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from nim_operator import constants as c
from nim_operator.api.expose import EPPConfig
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.render.meta import Owner, child_labels, child_metadata, selector_labels
from nim_operator.render.pod_extras import restricted_security_context

INFERENCE_API = "inference.networking.k8s.io/v1"
EXT_PROC_PORT = 9002
HEALTH_PORT = 9003
METRICS_PORT = 9090
EXT_PROC_PORT_NAME = "grpc-ext-proc"
CONFIG_DIR = "/config"
#: The key of the operator-made ConfigMap (NVIDIA's name for it).
CONFIG_FILE = "default-plugins.yaml"
COMPONENT = "endpoint-picker"
_DEFAULT_PORTS = ((EXT_PROC_PORT_NAME, EXT_PROC_PORT), ("grpc-health", HEALTH_PORT), ("http-metrics", METRICS_PORT))


def epp_name(owner: Owner) -> str:
    return f"{owner.name}-epp"


def config_map_name(owner: Owner) -> str:
    return f"{owner.name}-epp-config"


def epp_selector(owner: Owner) -> dict[str, str]:
    """The picker's pod labels: its own name, so no selector of the NIM pods ever matches them."""
    return {c.LABEL_NAME: epp_name(owner), c.LABEL_INSTANCE: owner.name, c.LABEL_COMPONENT: COMPONENT}


def _epp(spec: NIMServiceSpec) -> EPPConfig | None:
    router = spec.effective_router
    if router is None or spec.inference_platform == "kserve":
        return None
    return router.epp_config


def _labels(owner: Owner, spec: NIMServiceSpec) -> dict[str, str]:
    return {**child_labels(owner, spec.labels), **epp_selector(owner)}


def _meta(owner: Owner, spec: NIMServiceSpec, name: str) -> dict[str, Any]:
    return {**child_metadata(owner, name, spec.labels), "labels": _labels(owner, spec)}


def _ports(epp: EPPConfig) -> list[dict[str, Any]]:
    if epp.ports:
        return copy.deepcopy(epp.ports)
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in _DEFAULT_PORTS]


def _ext_proc_port(epp: EPPConfig) -> int:
    """The picker's gRPC ext-proc port: the one named so among the given ports, else NVIDIA's 9002."""
    named = [p.get("containerPort") for p in epp.ports if p.get("name") == EXT_PROC_PORT_NAME]
    return int(named[0]) if named and named[0] else EXT_PROC_PORT


def _config_file(owner: Owner, epp: EPPConfig) -> tuple[str, str]:
    """(ConfigMap name, key) holding the EndpointPickerConfig."""
    if epp.config_map_ref is not None:
        return epp.config_map_ref.name, epp.config_map_ref.key
    return config_map_name(owner), CONFIG_FILE


def _args(owner: Owner, epp: EPPConfig) -> list[str]:
    if epp.container_spec.args:
        return list(epp.container_spec.args)
    _, key = _config_file(owner, epp)
    return [
        "--pool-name", owner.name,
        "--pool-namespace", owner.namespace,
        "--pool-group", INFERENCE_API.split("/")[0],
        "--zap-encoder", "json",
        "--config-file", f"{CONFIG_DIR}/{key}",
        "--v", "6",
        "--model-server-metrics-path", c.METRICS_PATH,
    ]  # fmt: skip


def _grpc_probe() -> dict[str, Any]:
    return {"grpc": {"port": HEALTH_PORT}, "initialDelaySeconds": 5, "periodSeconds": 10}


def _container(owner: Owner, spec: NIMServiceSpec, epp: EPPConfig) -> dict[str, Any]:
    user = epp.container_spec
    container: dict[str, Any] = {
        "name": "epp",
        "image": f"{user.image.repository}:{user.image.tag}",
        "args": _args(owner, epp),
        "ports": _ports(epp),
        "readinessProbe": copy.deepcopy(epp.readiness_probe) or _grpc_probe(),
        "livenessProbe": copy.deepcopy(epp.liveness_probe) or _grpc_probe(),
        "volumeMounts": [
            {"name": "epp-config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": copy.deepcopy(user.security_context) or restricted_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    optional = {
        "command": list(user.command) or None,
        "env": copy.deepcopy(user.env) or None,
        "workingDir": user.working_dir,
        "resources": copy.deepcopy(user.resources),
        "startupProbe": copy.deepcopy(epp.startup_probe),
        "imagePullPolicy": user.image.pull_policy or spec.image.pull_policy,
    }
    container.update({k: v for k, v in optional.items() if v})
    return container


def _deployment(owner: Owner, spec: NIMServiceSpec, epp: EPPConfig) -> dict[str, Any]:
    config_map, _ = _config_file(owner, epp)
    pod: dict[str, Any] = {
        "serviceAccountName": epp_name(owner),
        "containers": [_container(owner, spec, epp)],
        "volumes": [{"name": "epp-config", "configMap": {"name": config_map}}, {"name": "tmp", "emptyDir": {}}],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.image.pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.image.pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, spec, epp_name(owner)),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": epp_selector(owner)},
            "template": {"metadata": {"labels": _labels(owner, spec)}, "spec": pod},
        },
    }


def _rbac(owner: Owner, spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """The picker reads its pool and the pool's pods, in this namespace only."""
    name = epp_name(owner)
    read = ["get", "watch", "list"]
    rules = [
        {"apiGroups": [group], "resources": ["inferencepools", "inferenceobjectives"], "verbs": read}
        for group in ("inference.networking.k8s.io", "inference.networking.x-k8s.io")
    ] + [{"apiGroups": [""], "resources": ["pods"], "verbs": read}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(owner, spec, name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(owner, spec, name),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(owner, spec, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
        },
    ]


def _service(owner: Owner, spec: NIMServiceSpec, epp: EPPConfig) -> dict[str, Any]:
    # Given ports are all published; of the defaults, NVIDIA's Service leaves the health port out.
    published = epp.ports or [p for p in _ports(epp) if p["containerPort"] != HEALTH_PORT]
    ports = [
        {
            "name": p.get("name"),
            "port": p["containerPort"],
            "targetPort": p["containerPort"],
            "protocol": p.get("protocol", "TCP"),
        }
        for p in published
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, spec, epp_name(owner)),
        "spec": {"type": "ClusterIP", "selector": epp_selector(owner), "ports": ports},
    }


def _pool(owner: Owner, spec: NIMServiceSpec, epp: EPPConfig) -> dict[str, Any]:
    return {
        "apiVersion": INFERENCE_API,
        "kind": "InferencePool",
        "metadata": child_metadata(owner, owner.name, spec.labels),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "targetPorts": [{"number": spec.expose.service.port}],
            "endpointPickerRef": {"name": epp_name(owner), "port": {"number": _ext_proc_port(epp)}},
        },
    }


def render_epp(owner: Owner, spec: NIMServiceSpec) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(apiVersion, kind, name, body or None) of every object of the picker, in apply order."""
    epp = _epp(spec)
    name = epp_name(owner)
    keys = [
        ("v1", "ServiceAccount", name),
        ("rbac.authorization.k8s.io/v1", "Role", name),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", name),
        ("v1", "ConfigMap", config_map_name(owner)),
        ("v1", "Service", name),
        ("apps/v1", "Deployment", name),
        (INFERENCE_API, "InferencePool", owner.name),
    ]
    if epp is None:
        return [(api, kind, n, None) for api, kind, n in keys]
    config_map: dict[str, Any] | None = None
    if epp.config is not None:
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(owner, spec, config_map_name(owner)),
            "data": {CONFIG_FILE: yaml.safe_dump(epp.config, sort_keys=True)},
        }
    bodies = [
        *_rbac(owner, spec),
        config_map,
        _service(owner, spec, epp),
        _deployment(owner, spec, epp),
        _pool(owner, spec, epp),
    ]
    return [(api, kind, n, body) for (api, kind, n), body in zip(keys, bodies, strict=True)]
