#!/usr/bin/env bash
# The main job, end to end on this machine:
#   1. the local control plane with simulated H100 / L40S / A10G / CPU node pools,
#   2. the operator placing three NIMServices from the nodes' GPU labels,
#   3. the runtime serving the embedded model on the CPU, answering an OpenAI chat request.
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

step "Local control plane (kube-apiserver, controller-manager, scheduler, kwok)"
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
echo "why llama-3-1-8b runs where it runs:"
"${KUBECTL[@]}" -n demo get nimservice llama-3-1-8b -o jsonpath='{.status.profile.reason}{"\n"}'

step "The runtime: the embedded SmolLM2 on the CPU, through the OpenAI API"
PORT=18000
NIM_SERVER_PORT=$PORT .venv/bin/nim-runtime >"$LOGS/runtime.log" 2>&1 &
pids+=($!)
printf 'waiting for /v1/health/ready'
for _ in $(seq 240); do
  curl -sf "http://127.0.0.1:$PORT/v1/health/ready" >/dev/null && break
  printf '.'; sleep 1
done
echo
curl -sf "http://127.0.0.1:$PORT/v1/metadata" | .venv/bin/python -m json.tool | head -20
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
  "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
  "max_tokens": 16, "temperature": 0}' | .venv/bin/python -m json.tool

step "Done. The cluster keeps running: make cluster-down stops it. Logs: $LOGS"
