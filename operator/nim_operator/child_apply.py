"""Applying one NIMService's rendered children: all or nothing, and no write for what is unchanged.

The shell half of a reconcile that writes children (``render/`` is the pure half that says what they
are): dry runs before the first write where something runs already, the workload first, a roll-back of
what this pass created when a later child is refused, optional integrations left out and named when
their API is absent, and the hand-over of ``spec.replicas`` when an autoscaler takes or leaves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec, ProfileStatus
from nim_operator.applied import key_of
from nim_operator.kube import ChildRejected, EventSink, KindNotServed, Kube
from nim_operator.render import Child, Owner
from nim_operator.slim import owns_replicas
from nim_operator.status import Failure

#: Children that may be deleted and created again when an edit by someone else blocks our apply: nothing
#: of theirs is lost (a Deployment's pods, a claim's data would be).
RECREATABLE_KINDS = frozenset({"Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy"})
#: The kinds that run the pods: applied before every other child.
WORKLOAD_KINDS = frozenset({"Deployment", "InferenceService"})


class Refusal(Exception):
    """This generation of the spec cannot be reconciled: report the failure, touch nothing more."""

    def __init__(self, failure: Failure, profile: ProfileStatus | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.profile = profile


@dataclass
class Applied:
    """What one pass wrote: children applied and deleted (``Kind/name``), the service's own children as
    the API server returned them (by kind), and the Degraded texts of optional children left out."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _missing_api(child: Child, err: KindNotServed) -> str:
    """The Degraded text for an optional child whose API is absent; a required one refuses the spec."""
    if child.requires is None:
        text = child.unserved or (
            f"the {child.kind} this spec asks for cannot be created; install its CRDs (retried without a spec "
            "edit) or remove the field that asks for it"
        )
        raise Refusal(Failure("MissingAPI", f"{err}: {text}"))
    return f"{err}: {child.requires}"


def _replicas_owners(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The managedFields entries that own ``spec.replicas``."""
    return [entry for entry in deployment.get("metadata", {}).get("managedFields") or [] if owns_replicas(entry)]


def _applies_replicas(deployment: Mapping[str, Any]) -> bool:
    """Whether our field manager's apply owns ``spec.replicas`` of this Deployment (and no one else does)."""
    owners = _replicas_owners(deployment)
    ours = any(e.get("manager") == c.FIELD_MANAGER and e.get("operation") == "Apply" for e in owners)
    return ours and len(owners) == 1


class ChildApplier:
    """Writes children through ``kube``; reads each service's Deployment as the watch delivered it."""

    def __init__(
        self,
        kube: Kube,
        emit: EventSink,
        deployment_of: Callable[[tuple[str, str]], dict[str, Any] | None],
    ) -> None:
        self.kube = kube
        self.emit = emit
        self.deployment_of = deployment_of

    def apply(self, owner: Owner, children: list[Child]) -> Applied:
        """Apply what changed and delete what is off, all or nothing; optional integrations degrade.

        When something of this service exists already, every changed child is first validated by a
        server-side dry run, so a refused one leaves every running object as it was. A service created
        from nothing skips the dry runs (they would double the writes of every creation): its children are
        applied Deployment first, and if a later one is refused, the ones this pass created are deleted.
        An optional child whose API the cluster does not serve is left out and named (``missing``).
        """
        changed = [ch for ch in children if ch.body is not None and self.kube.needs_apply(ch.body)]
        for child in changed:
            if child.kind == "PersistentVolumeClaim" and child.body is not None and not self.kube.knows(child.body):
                self._refuse_foreign_claim(owner, child.name)
        missing: list[str] = []
        recreate: set[str] = set()
        if any(ch.body is not None and self.kube.knows(ch.body) for ch in changed):
            missing, recreate = self._dry_run(changed)
        for child in changed:
            if child.kind == "Deployment" and child.body is not None and self.kube.knows(child.body):
                self._hand_over_replicas(owner, child.body)
        done = Applied(missing=missing)
        created: list[dict[str, Any]] = []
        try:
            # The workload first (a Deployment, or KServe's InferenceService): if it is refused, or its API is
            # absent, nothing else was created, and nothing is created and rolled back on every retry.
            for child in sorted(changed, key=lambda ch: ch.kind not in WORKLOAD_KINDS):
                body = child.body or {}
                if child.kind in recreate:
                    self._recreate(owner, child)
                try:
                    obj, was_created = self.kube.apply(body)
                except KindNotServed as err:
                    done.missing.append(_missing_api(child, err))
                    continue
                if child.name == owner.name:  # not the endpoint picker's Deployment or Service
                    done.live[child.kind] = obj
                done.applied.append(f"{child.kind}/{child.name}")
                if was_created:
                    created.append(body)
        except (ChildRejected, Refusal) as err:
            for body in created:
                self.kube.delete(body["apiVersion"], body["kind"], owner.namespace, body["metadata"]["name"])
            if isinstance(err, Refusal):
                raise
            raise Refusal(Failure("InvalidSpec", str(err))) from err
        for child in children:
            if child.body is None and self.kube.delete_owned(
                child.api_version, child.kind, owner.namespace, child.name, owner.uid
            ):
                done.deleted.append(f"{child.kind}/{child.name}")
        return done

    def _dry_run(self, changed: list[Child]) -> tuple[list[str], set[str]]:
        """Validate every changed child before the first write; drops the optional ones the cluster does
        not serve from ``changed``. Returns their Degraded texts, and the kinds to re-create.

        A child someone else edited may refuse our apply although our spec is valid: their fields stay
        (server-side apply keeps what another manager owns), and ours beside them can be invalid (a port
        renumbered by hand duplicates our port's name). Such a child is re-created from the spec.
        """
        missing: list[str] = []
        recreate: set[str] = set()
        for child in list(changed):
            body = child.body or {}
            try:
                self.kube.apply(body, dry_run=True)
            except KindNotServed as err:
                changed.remove(child)
                missing.append(_missing_api(child, err))
            except ChildRejected as err:
                if child.kind in RECREATABLE_KINDS and self.kube.applied.edited_by_others(key_of(body)):
                    recreate.add(child.kind)
                    continue
                raise Refusal(Failure("InvalidSpec", str(err))) from err
        return missing, recreate

    def _recreate(self, owner: Owner, child: Child) -> None:
        meta = {"metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid}}
        body = {"apiVersion": c.API_VERSION, "kind": c.KIND, **meta}
        self.emit(
            body,
            "Warning",
            "Recreated",
            f"{child.kind} {child.name} was edited by someone else into a shape the spec cannot be applied "
            "over; it was deleted and created again from the spec",
        )
        self.kube.delete(child.api_version, child.kind, owner.namespace, child.name)

    def keep_replicas(self, owner: Owner, spec: NIMServiceSpec, children: list[Child]) -> list[Child]:
        """Autoscaling turned off with no ``spec.replicas``: the count the autoscaler left is kept (the
        Deployment is applied without the field, which stays with its current owner) instead of falling to
        the default of one. A count in the spec, or a new Deployment, is applied as rendered."""
        if spec.autoscaling or spec.replicas is not None:
            return children
        current = self.deployment_of((owner.namespace, owner.name))
        if current is None or _applies_replicas(current) or not _replicas_owners(current):
            return children
        kept = []
        for child in children:
            if child.kind == "Deployment" and child.body is not None and "replicas" in child.body["spec"]:
                body = {**child.body, "spec": {k: v for k, v in child.body["spec"].items() if k != "replicas"}}
                child = dataclasses.replace(child, body=body)
            kept.append(child)
        return kept

    def _hand_over_replicas(self, owner: Owner, body: dict[str, Any]) -> None:
        """Before an apply that stops setting ``spec.replicas`` (autoscaling turned on), give the field to
        another manager at its current value.

        Server-side apply removes a field its manager no longer sets when no other manager owns it, and the
        Deployment's default (1) would then replace, say, 3 running replicas until the autoscaler acts. With
        a second owner the field keeps its value; the autoscaler takes it over from there.
        """
        if "replicas" in body["spec"]:
            return
        current = self.deployment_of((owner.namespace, owner.name)) or self.kube.get(
            "apps/v1", "Deployment", owner.namespace, owner.name
        )
        if current is None or not _applies_replicas(current):
            return
        self.kube.hand_over(
            "apps/v1", "Deployment", owner.namespace, owner.name, {"spec": {"replicas": current["spec"]["replicas"]}}
        )

    def _refuse_foreign_claim(self, owner: Owner, name: str) -> None:
        """A claim to create that already exists must be this NIMService's: a user's claim of the same name
        is never taken over (server-side apply would, and the NIMService's settings would land on it)."""
        live = self.kube.get("v1", "PersistentVolumeClaim", owner.namespace, name)
        labels = (live or {}).get("metadata", {}).get("labels") or {}
        ours = labels.get(c.LABEL_MANAGED_BY) == c.MANAGED_BY and labels.get(c.LABEL_INSTANCE) == owner.name
        if live is None or ours:
            return
        raise Refusal(
            Failure(
                "PVCNotOwned",
                f"PersistentVolumeClaim {name} exists and was not created for this NIMService: set "
                "spec.storage.pvc.create to false to mount it as it is, or name another claim in spec.storage.pvc.name",
            )
        )
