"""What the cluster lacks for a service's optional integrations, said as a fix. Pure.

An Ingress is accepted by any cluster, whether or not anything routes it: with no IngressClass of the
name it asks for (or none at all, and no default class), it sits there silently. The operator knows the
cluster's IngressClasses from their watch and says so in the Degraded condition; the service serves
through its Service meanwhile, and the condition clears by itself when a class appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The annotation that marks the cluster's default IngressClass.
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"


@dataclass(frozen=True)
class IngressClasses:
    """The cluster's IngressClasses: their names, and which are marked default."""

    names: frozenset[str]
    defaults: frozenset[str]

    @classmethod
    def of(cls, objects: Iterable[Mapping[str, Any]]) -> IngressClasses:
        names, defaults = set(), set()
        for obj in objects:
            meta = obj.get("metadata") or {}
            names.add(str(meta.get("name")))
            if (meta.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                defaults.add(str(meta.get("name")))
        return cls(frozenset(names), frozenset(defaults))


def ingress_problems(bodies: Iterable[Mapping[str, Any]], classes: IngressClasses | None) -> list[str]:
    """A Degraded text for every Ingress no IngressClass of the cluster will route (none when unknown)."""
    if classes is None:
        return []
    problems = []
    for body in bodies:
        if body.get("kind") != "Ingress":
            continue
        name = body["metadata"]["name"]
        legacy = (body["metadata"].get("annotations") or {}).get("kubernetes.io/ingress.class")
        wanted = (body.get("spec") or {}).get("ingressClassName") or legacy
        known = ", ".join(sorted(classes.names)) or "none"
        if wanted and wanted not in classes.names:
            problems.append(
                f"Ingress {name} names IngressClass {wanted}, which the cluster does not have (it has: {known}): "
                "install that ingress controller or name one of these; the Service serves meanwhile"
            )
        elif not wanted and not classes.defaults:
            problems.append(
                f"Ingress {name} names no IngressClass and the cluster marks none as default (it has: {known}): "
                "nothing routes it; set its ingressClassName, or mark a class default"
            )
    return problems
