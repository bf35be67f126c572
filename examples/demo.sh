#!/usr/bin/env bash
# The main job, end to end on this machine:
#   1. the local control plane with simulated H100 / L40S / A10G / CPU node pools,
#   2. the operator placing three NIMServices from the nodes' GPU labels,
#   3. our runtime image on a real node (kubelet + containerd), serving the embedded model on the CPU
#      and answering an OpenAI chat request through its Service.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export KUBECONFIG=$REPO/.cache/cluster/kubeconfig
KUBECTL=(.venv/bin/kubectl)
LOGS=$REPO/.cache/demo
mkdir -p "$LOGS"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Local cluster (control plane, kwok GPU pools, two real nodes, CoreDNS, local-path storage)"
tests/cluster/up.sh
"${KUBECTL[@]}" get nodes -L nvidia.com/gpu.product -L nvidia.com/gpu.count

step "CRD and operator"
"${KUBECTL[@]}" apply --server-side --force-conflicts -f crds/
"${KUBECTL[@]}" wait --for condition=established crd/nimservices.apps.nimoperator.dev --timeout=60s
.venv/bin/nim-operator run --standalone --liveness http://127.0.0.1:18080/healthz >"$LOGS/operator.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 1; done

step "What the operator would choose (nim-operator plan)"
.venv/bin/nim-operator plan -f examples/llama-3.1-70b-l40s.yaml

step "Apply three NIMServices"
"${KUBECTL[@]}" create namespace demo --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -
"${KUBECTL[@]}" -n demo apply -f examples/llama-3.1-8b.yaml -f examples/llama-3.1-70b-l40s.yaml -f examples/smollm2.yaml
for name in llama-3-1-8b llama-3-1-70b smollm2; do
  "${KUBECTL[@]}" -n demo wait --for=jsonpath='{.status.state}'=Ready "nimservice/$name" --timeout=120s
done
"${KUBECTL[@]}" -n demo get nimservices
"${KUBECTL[@]}" -n demo get pods -o custom-columns='POD:.metadata.name,NODE:.spec.nodeName,GPUS:.spec.containers[0].resources.limits.nvidia\.com/gpu,READY:.status.containerStatuses[0].ready'
echo "why llama-3-1-70b runs where it runs:"
"${KUBECTL[@]}" -n demo get nimservice llama-3-1-70b -o jsonpath='{.status.profile.reason}{"\n"}'
echo "llama-3-1-8b (NVIDIA's image; its manifest is read from the image, which kwok's fake nodes cannot run):"
"${KUBECTL[@]}" -n demo get nimservice llama-3-1-8b -o jsonpath='{.status.profile.reason}{"\n"}'

step "Our images, built from our Dockerfiles with BuildKit into the real nodes (make images)"
tests/cluster/images.sh

step "SmolLM2 on a real node: a kubelet runs the runtime image; the probes gate readiness"
"${KUBECTL[@]}" -n demo apply -f examples/smollm2-real-node.yaml
started=$SECONDS
"${KUBECTL[@]}" -n demo wait --for=jsonpath='{.status.state}'=Ready nimservice/smollm2-cpu --timeout=600s
echo "Ready after $((SECONDS - started)) s"
"${KUBECTL[@]}" -n demo get pods -l app.kubernetes.io/instance=smollm2-cpu -o wide

step "Chat through the Service (kubectl port-forward svc/smollm2-cpu)"
PORT=18000
"${KUBECTL[@]}" -n demo port-forward svc/smollm2-cpu "$PORT:8000" >"$LOGS/port-forward.log" 2>&1 &
pids+=($!)
for _ in $(seq 30); do curl -sf "http://127.0.0.1:$PORT/v1/health/ready" >/dev/null && break; sleep 1; done
# The metadata's headline (the whole document is long; cutting a pipe short would fail under pipefail).
curl -sf "http://127.0.0.1:$PORT/v1/metadata" | .venv/bin/python -c '
import json, sys
meta = json.load(sys.stdin)
print(json.dumps({"version": meta["version"], "phase": meta.get("phase"), "model": meta["modelInfo"][0]["name"],
                  "profile": meta["profile"]["id"], "tags": meta["profile"]["tags"]}, indent=2))'
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
  "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
  "max_tokens": 16, "temperature": 0}' | .venv/bin/python -m json.tool
echo "the runtime's JSON logs (kubectl logs):"
"${KUBECTL[@]}" -n demo logs deploy/smollm2-cpu --tail=3

step "Done. The cluster keeps running: make cluster-down stops it. Logs: $LOGS"
