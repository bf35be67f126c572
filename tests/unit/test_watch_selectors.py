"""Every watch of our children and pods carries a server-side label selector (kopf sends it to the API)."""

from __future__ import annotations

import kopf

from nim_operator.handlers import OURS, select_our_objects
from nim_operator.kube import PLURALS


def test_every_child_kind_and_pods_are_watched_by_label() -> None:
    settings = kopf.OperatorSettings()
    select_our_objects(settings)
    kinds = [*PLURALS.items(), (("v1", "Pod"), "pods")]
    for (api_version, kind), plural in kinds:
        group, _, version = api_version.rpartition("/")
        resource = kopf.Resource(group=group, version=version, plural=plural, kind=kind, namespaced=True)
        assert list(settings.watching.label_selectors.collect(resource)) == [OURS], kind
    nodes = kopf.Resource(group="", version="v1", plural="nodes", kind="Node", namespaced=False)
    assert list(settings.watching.label_selectors.collect(nodes)) == [], "nodes are watched whole"
