#!/bin/sh
# a3s-box on a Kubernetes node, as root in the node's own root (the DaemonSet runs it
# through chroot; by hand works too). Idempotent.
#   1. scripts/setup.sh: QEMU and tools from the distribution, a3s-box in its own venv,
#      the guest kernel and init into the shim's home ($A3S_BOX_HOME)
#   2. containerd-shim-a3sbox-v2 where containerd finds it
#   3. the runtime in containerd's config (once), then containerd restarted
set -eu
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CONFIG=${CONTAINERD_CONFIG:-/etc/containerd/config.toml}
BIN=${A3S_BOX_BIN_DIR:-/usr/local/bin}
export A3S_BOX_HOME="${A3S_BOX_HOME:-/var/lib/a3s-box}"   # the shim's default home
export A3S_BOX_VENV="${A3S_BOX_VENV:-/opt/a3s-box/venv}"
export A3S_BOX_BIN_DIR="$BIN"

[ "${A3S_SKIP_SETUP:-0}" = 1 ] || bash "$SRC/scripts/setup.sh"
mkdir -p "$BIN"
ln -sfn "$A3S_BOX_VENV/bin/containerd-shim-a3sbox-v2" "$BIN/containerd-shim-a3sbox-v2"

changed=0
if ! grep -q 'containerd.runtimes.a3sbox]' "$CONFIG" 2>/dev/null; then
  mkdir -p "$(dirname "$CONFIG")"
  [ -s "$CONFIG" ] || echo 'version = 2' > "$CONFIG"
  cat >> "$CONFIG" <<'CONF'

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.a3sbox]
  runtime_type = "io.containerd.a3sbox.v2"
  pod_annotations = ["a3s.dev/*"]
CONF
  changed=1
  echo "a3s-box: runtime a3sbox added to $CONFIG"
fi
if [ "$changed" = 1 ] && [ "${A3S_NO_RESTART:-0}" != 1 ] && command -v systemctl >/dev/null 2>&1; then
  systemctl restart containerd
fi
echo "a3s-box: installed (shim $BIN/containerd-shim-a3sbox-v2, home $A3S_BOX_HOME)"
