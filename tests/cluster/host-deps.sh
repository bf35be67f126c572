#!/usr/bin/env bash
# Installs the host packages the real nodes and the image builds use, from Debian's archive:
# containerd and runc (the container runtime), the CNI plugins, nftables and conntrack (kube-proxy),
# mmdebstrap (base images). A no-op when all are present; needs root, as the real nodes do.
set -euo pipefail
need=()
for pair in containerd:containerd runc:runc nft:nftables conntrack:conntrack mmdebstrap:mmdebstrap \
    nsenter:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
((${#need[@]} == 0)) && exit 0
if ((EUID != 0)); then
    echo "the real test nodes need root and these Debian packages: ${need[*]}" >&2
    exit 1
fi
echo "installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
