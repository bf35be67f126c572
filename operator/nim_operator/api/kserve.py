"""KServe facts the NIMService API and the renderer share: the deployment-mode annotation and the admission
rules of ``inferencePlatform: kserve``.

KServe reads its deployment mode from the InferenceService's ``serving.kserve.io/deploymentMode``
annotation, which NVIDIA's samples set in ``spec.annotations``. Knative mode hands scaling and routing to
Knative, so the NIMService fields that would do either are refused there, as NVIDIA's webhook refuses them.
"""

from __future__ import annotations

from typing import Literal

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
#: KServe's names for a Deployment-backed predictor; RawDeployment is the older name of Standard.
STANDARD_MODES = ("Standard", "RawDeployment")
#: KServe's names for a Knative Service predictor; Serverless is the older name of Knative.
KNATIVE_MODES = ("Knative", "Serverless")
Mode = Literal["Standard", "Knative"]
#: What the operator writes when the spec names no mode (and no Knative autoscaling): KServe's own default,
#: and the mode that needs neither Knative nor Istio in the cluster.
DEFAULT_MODE: Mode = "Standard"

_KSERVE = "has(self.inferencePlatform) && self.inferencePlatform == 'kserve'"
_HAS_MODE = f"has(self.annotations) && '{DEPLOYMENT_MODE_ANNOTATION}' in self.annotations"
_MODE = f"self.annotations['{DEPLOYMENT_MODE_ANNOTATION}']"
_KNATIVE = f"{_KSERVE} && {_HAS_MODE} && {_MODE} in {list(KNATIVE_MODES)}"
_ROUTED = " || ".join(
    f"({path} && has({router}.{kind}))"
    for path, router in (
        ("has(self.expose) && has(self.expose.router)", "self.expose.router"),
        ("has(self.router)", "self.router"),
    )
    for kind in ("ingress", "gateway")
)

#: Rules of the NIMService spec about KServe (each evaluates, true or false, whatever key is absent).
SPEC_RULES: tuple[tuple[str, str], ...] = (
    (
        f"!({_KSERVE} && {_HAS_MODE}) || {_MODE} in {list(STANDARD_MODES + KNATIVE_MODES)}",
        f"annotation {DEPLOYMENT_MODE_ANNOTATION} must be Standard, RawDeployment, Knative or Serverless with "
        "inferencePlatform kserve (ModelMesh serves models through ServingRuntimes, not a NIM container)",
    ),
    (
        f"!({_KSERVE} && has(self.multiNode))",
        "spec.multiNode cannot be used with inferencePlatform kserve (an InferenceService predictor is one pod "
        "per replica): remove multiNode or set inferencePlatform to standalone",
    ),
    (
        f"!({_KNATIVE} && has(self.scale) && has(self.scale.enabled) && self.scale.enabled)",
        "spec.scale.enabled cannot be true when KServe runs in Knative mode (Knative's autoscaler scales it, "
        "configured by autoscaling.knative.dev annotations): disable it, or set the deploymentMode to Standard",
    ),
    (
        f"!({_KNATIVE} && ({_ROUTED} || (has(self.expose) && has(self.expose.ingress) && "
        "has(self.expose.ingress.enabled) && self.expose.ingress.enabled)))",
        "router.ingress, router.gateway and spec.expose.ingress cannot be used when KServe runs in Knative mode "
        "(Knative routes the InferenceService itself): remove them, or set the deploymentMode to Standard",
    ),
    (
        f"!({_KNATIVE} && has(self.metrics) && has(self.metrics.enabled) && self.metrics.enabled)",
        "spec.metrics.enabled cannot be true when KServe runs in Knative mode (its queue-proxy aggregates the "
        "metrics): disable it, or set the deploymentMode to Standard",
    ),
)


#: Annotations of Knative's autoscaler: a spec that sets them and names no mode means Knative.
KNATIVE_AUTOSCALING_PREFIX = "autoscaling.knative.dev/"


def deployment_mode(annotations: dict[str, str]) -> Mode:
    """The mode the InferenceService runs in, in KServe's current names: the annotation's, else Knative
    when the spec configures Knative's autoscaler (NVIDIA's Knative sample does, naming no mode), else
    Standard.

    NVIDIA's operator falls back to the default of KServe's inferenceservice-config ConfigMap instead;
    reading it needs cluster-wide reads of KServe's namespace, and the result would change with it. The
    operator writes the mode it chose into the annotation, so KServe and this renderer agree on it.
    """
    named = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if named is not None:
        return "Knative" if named in KNATIVE_MODES else "Standard"
    knative = any(key.startswith(KNATIVE_AUTOSCALING_PREFIX) for key in annotations)
    return "Knative" if knative else DEFAULT_MODE
