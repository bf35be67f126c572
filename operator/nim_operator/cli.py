"""`nim-operator`: run the operator, plan a placement, or print the CRD."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence

import yaml


def _run(args: argparse.Namespace) -> int:
    import kopf

    from nim_operator import handlers  # noqa: F401  (registers the handlers)
    from nim_operator.malloc_settings import tune_malloc

    tune_malloc()
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.metrics_port:
        from nim_operator.metrics import serve_metrics

        serve_metrics(args.metrics_port)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.json_logs else kopf.LogFormat.PLAIN)
    priority = args.priority
    if priority is None and args.peering:
        # kopf pauses every peer of equal priority: replicas left at the default would all wait forever.
        priority = random.SystemRandom().randint(1, 2**31 - 1)
    kopf.run(
        priority=priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=args.standalone,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        # Handlers read the watched namespaces from the memo to scope their own LISTs.
        memo=kopf.Memo(namespaces=list(args.namespace or ())),
    )
    return 0


def _plan(args: argparse.Namespace) -> int:
    """Show the decision the operator would make, without applying anything: the same facts (nodes, the
    GPUs pods hold, NodePools, node groups, the GPU catalogue) through the same functions."""
    from pydantic import ValidationError

    from nim_operator.api.spec import NIMServiceSpec
    from nim_operator.cluster_capacity import ClusterCapacity
    from nim_operator.kube import Kube, api_client
    from nim_operator.placement import (
        PLACEMENT,
        decide,
        manifest_for,
        node_facts,
        node_schedulable,
        pod_tolerations,
        runs_our_runtime,
    )
    from nim_runtime.profiles import ProfileError, ProfileSet, parse_manifest_document, pool_order

    with open(args.file) if args.file != "-" else sys.stdin as stream:
        docs = [d for d in yaml.safe_load_all(stream) if d]
    kube = Kube(api_client(args.kubeconfig))
    nodes = [node_facts(n) for n in kube.list_nodes() if node_schedulable(n)]
    cluster = ClusterCapacity(kube)
    cluster.prime(pods=True)
    worst = 0
    rows: list[tuple[str, str, str, str]] = []
    for doc in docs:
        meta = doc.get("metadata") or {}
        name = meta.get("name", "?")
        try:
            spec = NIMServiceSpec.model_validate(doc.get("spec") or {})
        except ValidationError as err:
            print(f"{name}: invalid spec: {err}")
            worst = 2
            continue
        manifest: ProfileSet | None = None
        if args.manifest:
            with open(args.manifest) as text:
                manifest = parse_manifest_document(text.read(), fallback_name=spec.image.repository)
        elif runs_our_runtime(spec.image.repository):
            manifest = manifest_for(spec)
        else:
            print(
                f"{name}: the operator reads the manifest of {spec.image.repository}:{spec.image.tag} from the "
                "image itself (a probe Job); give it here with --manifest FILE to see the decision"
            )
            continue
        if manifest is None:
            print(f"{name}: no manifest known for {spec.image.repository}; the runtime would choose its profile")
            continue
        key = (meta.get("namespace", "default"), name)
        free, pools = cluster.for_service(key, nodes, pod_tolerations(spec))
        try:
            decision = decide(spec, manifest, free, previous=None, capacity=pools)
        except ProfileError as err:
            print(f"{name}: {err}")
            rows.append((name, "-", "Nowhere", "-"))
            worst = max(worst, 1)
            continue
        where = ", ".join(pool_order(decision.pools)) or "-"
        rows.append((name, decision.profile.id, PLACEMENT[decision.availability], where))
        print(f"{name}: {decision.reason}")
        print(f"  profile: {decision.profile.label}  tags: {json.dumps(decision.profile.tags, sort_keys=True)}")
        print(f"  placement: {PLACEMENT[decision.availability]}  pools: {where}")
        print(f"  gpu products: {', '.join(decision.gpu_products) or '-'}  nodes: {', '.join(decision.nodes) or '-'}")
        for rejected in decision.rejected:
            print(f"  not {rejected.id}: {rejected.why}")
    if args.table and rows:
        print(_table(("NIMSERVICE", "PROFILE", "PLACEMENT", "POOLS"), rows))
    return worst


def _table(header: tuple[str, ...], rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _crd(args: argparse.Namespace) -> int:
    from nim_operator.api.crd import render_cache_crd_yaml, render_crd_yaml

    text = render_cache_crd_yaml() if args.kind == "NIMCache" else render_crd_yaml()
    if args.output:
        with open(args.output, "w") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nim-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the cluster of KUBECONFIG")
    run.add_argument("--namespace", "-n", action="append", help="watch only this namespace (repeatable)")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    run.add_argument("--standalone", action="store_true", help="no peering: act even if another operator runs")
    run.add_argument("--peering", default=None, help="kopf peering object name (leader election)")
    run.add_argument("--priority", type=int, default=None, help="peering priority (default: random when peering)")
    run.add_argument("--liveness", default=None, help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port")
    run.add_argument("--verbose", action="store_true", help="log at debug level")
    run.add_argument("--json-logs", action="store_true", help="log JSON lines")
    run.set_defaults(func=_run)

    plan = commands.add_parser("plan", help="print the profile decision for NIMService manifests")
    plan.add_argument("-f", "--file", required=True, help="NIMService YAML file, or - for stdin")
    plan.add_argument("--kubeconfig", help="kubeconfig file")
    plan.add_argument("--table", action="store_true", help="end with one line per NIMService: profile, placement")
    plan.add_argument("--manifest", help="a model manifest (ours, or NIM's v1/v2 model_manifest.yaml) to plan with")
    plan.set_defaults(func=_plan)

    crd = commands.add_parser("crd", help="print the CRD generated from the typed spec")
    crd.add_argument("-o", "--output", help="write to this file instead of stdout")
    crd.add_argument("--kind", choices=["NIMService", "NIMCache"], default="NIMService", help="which CRD")
    crd.set_defaults(func=_crd)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
