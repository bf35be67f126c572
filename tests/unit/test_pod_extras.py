"""What NVIDIA's NIMService adds to the pod: gRPC and metrics ports, proxy env and a CA bundle, init and
sidecar containers with the restricted security context unless they set one. Pure, except that the CA
bundle's script runs in a real shell on real files (with its fixed paths moved under a temporary dir)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import Placement
from nim_operator.render import Owner, render_deployment
from nim_operator.render.pod_extras import CA_BUNDLE, restricted_security_context

OWNER = Owner("llama", "team-a", "uid-1")
IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3", "pullPolicy": "IfNotPresent"}
PROXY = {
    "httpsProxy": "http://proxy.corp:3128",
    "httpProxy": "http://proxy.corp:3128",
    "noProxy": ".svc,.cluster.local",
    "certConfigMap": "corp-ca",
}


def _pod(**fields: Any) -> dict[str, Any]:
    spec = NIMServiceSpec.model_validate({"image": IMAGE, **fields})
    pod: dict[str, Any] = render_deployment(OWNER, spec, Placement(None))["spec"]["template"]["spec"]
    return pod


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_grpc_and_metrics_ports_are_named_ports_with_nvidias_env() -> None:
    pod = _pod(expose={"service": {"port": 9000, "grpcPort": 50051, "metricsPort": 8002}})
    nim = pod["containers"][0]
    assert nim["ports"] == [
        {"name": "api", "containerPort": 9000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8002, "protocol": "TCP"},
    ]
    env = _env(nim)
    assert (env["NIM_GRPC_API_PORT"], env["NIM_TRITON_GRPC_PORT"], env["NIM_TRITON_METRICS_PORT"]) == (
        "50051",
        "50051",
        "8002",
    )


def test_proxy_env_in_both_cases_and_the_users_env_wins() -> None:
    pod = _pod(proxy={"httpsProxy": "http://p:3128", "noProxy": ".svc"}, env=[{"name": "NO_PROXY", "value": "mine"}])
    env = _env(pod["containers"][0])
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://p:3128"
    assert env["NO_PROXY"] == "mine"
    assert env["no_proxy"] == ".svc"
    assert env["NIM_SDK_USE_NATIVE_TLS"] == "1"
    assert "HTTP_PROXY" not in env, "an unset proxy is not set to an empty string"
    assert "SSL_CERT_FILE" not in env
    assert "initContainers" not in pod


def test_ca_bundle_is_built_by_a_non_root_init_container_and_mounted_over_etc_ssl() -> None:
    pod = _pod(proxy=PROXY)
    (init,) = pod["initContainers"]
    assert init["name"] == "update-ca-certificates"
    assert init["image"] == "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"
    assert init["imagePullPolicy"] == "IfNotPresent"
    assert init["securityContext"] == restricted_security_context()
    assert "runAsUser" not in init["securityContext"], "runs as the pod's non-root user, not as root"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["custom-ca"] == {"name": "custom-ca", "configMap": {"name": "corp-ca"}}
    assert volumes["ca-cert-volume"] == {"name": "ca-cert-volume", "emptyDir": {}}
    nim = pod["containers"][0]
    assert {"name": "ca-cert-volume", "mountPath": "/etc/ssl", "readOnly": True} in nim["volumeMounts"]
    env = _env(nim)
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == CA_BUNDLE


def _pem(workdir: Path, name: str) -> str:
    key, cert = workdir / f"{name}.key", workdir / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert.read_text()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (Debian's openssl package)")
def test_ca_script_appends_the_configmaps_certificates_to_the_images_bundle(tmp_path: Path) -> None:
    """The init container's own script, run by /bin/sh as this (any) user: the image's bundle is kept, the
    ConfigMap's .crt and .pem files are added, other keys are not, and OpenSSL trusts the result."""
    system, custom, out = tmp_path / "etc-ssl", tmp_path / "custom", tmp_path / "ca-certs"
    (system / "certs").mkdir(parents=True)
    custom.mkdir()
    image_ca = _pem(tmp_path, "image-ca")
    (system / "certs" / "ca-certificates.crt").write_text(image_ca)
    (system / "openssl.cnf").write_text("# image config\n")
    (custom / "proxy.crt").write_text(_pem(tmp_path, "proxy-ca"))
    (custom / "other.pem").write_text(_pem(tmp_path, "other-ca"))
    (custom / "README").write_text("not a certificate")
    init = _pod(proxy=PROXY)["initContainers"][0]
    script = init["command"][2]
    for fixed, moved in (("/etc/ssl", system), ("/custom", custom), ("/ca-certs", out)):
        script = script.replace(fixed, str(moved))
    proc = subprocess.run([init["command"][0], "-c", script], capture_output=True, text=True, check=True)
    assert "added 2 CA certificate file(s) of ConfigMap corp-ca" in proc.stdout
    bundle = (out / "certs" / "ca-certificates.crt").read_text()
    assert bundle.startswith(image_ca)
    assert bundle.count("BEGIN CERTIFICATE") == 3
    assert (out / "openssl.cnf").read_text() == "# image config\n"
    leaf = tmp_path / "proxy-ca.crt"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "certs" / "ca-certificates.crt"), str(leaf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    hashed = subprocess.run(
        ["openssl", "verify", "-CApath", str(out / "certs"), str(leaf)], capture_output=True, text=True, check=False
    )
    assert hashed.returncode == 0, f"rehashed directory: {hashed.stderr}"


def test_init_and_sidecar_containers_get_the_nims_env_mounts_and_restricted_defaults() -> None:
    pod = _pod(
        proxy=PROXY,
        env=[{"name": "NIM_LOG_LEVEL", "value": "DEBUG"}],
        initContainers=[
            {
                "name": "fetch",
                "image": {"repository": "busybox", "tag": "1.36"},
                "command": ["sh", "-c"],
                "args": ["cp -r /src /model-store"],
                "env": [{"name": "NIM_LOG_LEVEL", "value": "INFO"}],
            }
        ],
        sidecarContainers=[
            {
                "name": "shipper",
                "image": {"repository": "fluent-bit", "tag": "3", "pullPolicy": "Always"},
                "workingDir": "/scratch",
                "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": False},
                "resources": {"limits": {"cpu": "100m"}},
            }
        ],
    )
    ca, fetch = pod["initContainers"]
    assert ca["name"] == "update-ca-certificates", "the CA bundle is there before any user init container"
    assert fetch["image"] == "busybox:1.36"
    assert fetch["imagePullPolicy"] == "IfNotPresent", "the NIMService's pull policy when the container names none"
    assert fetch["securityContext"] == restricted_security_context()
    env = _env(fetch)
    assert env["NIM_LOG_LEVEL"] == "INFO", "the container's own env wins"
    assert env["HTTPS_PROXY"] == "http://proxy.corp:3128"
    assert {m["mountPath"] for m in fetch["volumeMounts"]} == {"/model-store", "/tmp", "/scratch", "/etc/ssl"}
    nim, shipper = pod["containers"]
    assert nim["name"] == "nim"
    assert shipper["imagePullPolicy"] == "Always"
    assert shipper["securityContext"] == {"runAsNonRoot": True, "readOnlyRootFilesystem": False}
    assert shipper["resources"] == {"limits": {"cpu": "100m"}}
    assert shipper["workingDir"] == "/scratch"
    assert shipper["volumeMounts"] == nim["volumeMounts"]
    assert _env(shipper)["NIM_LOG_LEVEL"] == "DEBUG"
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    assert pod["securityContext"]["runAsNonRoot"] is True, "the pod stays non-root whatever a container sets"


def test_no_extras_no_scratch() -> None:
    pod = _pod()
    assert "initContainers" not in pod
    assert len(pod["containers"]) == 1
    assert "scratch" not in {v["name"] for v in pod["volumes"]}
