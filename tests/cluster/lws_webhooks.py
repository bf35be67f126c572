"""Point the LeaderWorkerSet module's webhook registrations at its controller on the host.

Reads the module's MutatingWebhookConfiguration and ValidatingWebhookConfiguration (as kubectl prints
them in JSON on stdin, converted from the YAML that ships in sigs.k8s.io/lws) and prints them as a List that
``kubectl apply`` takes, changed only where the module's own kustomize overlay changes them for a
deployment:

- names get the ``lws-`` prefix (the overlay's namePrefix);
- each webhook calls ``--url`` plus its path, trusting the cluster CA (``--ca``), instead of an
  in-cluster Service: the controller runs on the host, not in a pod;
- the pod webhooks are narrowed to pods that carry the ``leaderworkerset.sigs.k8s.io/name`` label (the
  overlay's mutating/validating patches), so no other pod of the cluster depends on this controller.

Standard library only: up.sh runs it with whatever python3 the host has.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

NAME_PREFIX = "lws-"
GROUP_LABEL = "leaderworkerset.sigs.k8s.io/name"


def _targets_pods(webhook: dict[str, Any]) -> bool:
    return any("pods" in rule.get("resources", []) for rule in webhook.get("rules", []))


def rewrite(items: list[dict[str, Any]], url: str, ca_bundle: str) -> list[dict[str, Any]]:
    out = []
    for config in items:
        config["metadata"] = {"name": NAME_PREFIX + config["metadata"]["name"]}
        for webhook in config.get("webhooks", []):
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": url.rstrip("/") + path, "caBundle": ca_bundle}
            if _targets_pods(webhook):
                webhook["objectSelector"] = {"matchExpressions": [{"key": GROUP_LABEL, "operator": "Exists"}]}
        out.append(config)
    return out


def read_objects(text: str) -> list[dict[str, Any]]:
    """Objects from ``kubectl create --dry-run=client -o json``: one JSON document after another, or a List."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        doc, index = decoder.raw_decode(text, index)
        objects += doc["items"] if doc.get("kind") == "List" else [doc]
    return objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="https://host:port of the controller's webhook server")
    parser.add_argument("--ca", required=True, type=Path, help="PEM file of the CA that signed its certificate")
    args = parser.parse_args()
    items = read_objects(sys.stdin.read())
    ca_bundle = base64.b64encode(args.ca.read_bytes()).decode()
    json.dump({"apiVersion": "v1", "kind": "List", "items": rewrite(items, args.url, ca_bundle)}, sys.stdout)


if __name__ == "__main__":
    main()
