#!/usr/bin/env bash
# Set up a3s-box on a fresh Debian/Ubuntu machine: system packages, the Python package,
# and (unless --no-guest) the guest kernel + guest init in the a3s-box cache.
# Idempotent: every step checks first and does nothing when already done.
#   scripts/setup.sh            # for using a3s-box
#   scripts/setup.sh --test     # also what the test suite needs (registry, skopeo, umoci, node's ajv)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0; want_guest=1
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --no-guest) want_guest=0 ;;
    *) echo "usage: $0 [--test] [--no-guest]" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*" >&2; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages ---------------------------------------------------------------
pkgs=(qemu-system-x86 qemu-utils e2fsprogs busybox-static musl-tools cpio)
[ "$want_test" -eq 1 ] && pkgs+=(docker-registry skopeo umoci libvirglrenderer1)
command -v node >/dev/null 2>&1 || { [ "$want_test" -eq 1 ] && pkgs+=(nodejs npm); }
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_ apt-get update -q >/dev/null
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python package ----------------------------------------------------------------
PY=${PYTHON:-python3}
if [ "$want_test" -eq 1 ]; then extra='.[test]'; else extra='.'; fi
if ! "$PY" -c 'import a3s_box, sys; sys.exit(0)' 2>/dev/null || [ "$want_test" -eq 1 ]; then
  say "installing a3s-box ($extra) with pip"
  "$PY" -m pip install -q --disable-pip-version-check -e "$extra" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi

# --- a real libkrun for the libkrun driver tests (Debian 12 packages none) ----------
if [ "$want_test" -eq 1 ] && ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("smol") is None)' 2>/dev/null; then
  say "installing smolmachines (ships libkrun + libkrunfw) with pip"
  "$PY" -m pip install -q --disable-pip-version-check smolmachines 2>&1 | grep -v "Running pip as the 'root' user" || true
fi

# --- node's ajv, a second JSON Schema validator for the schema tests ----------------
if [ "$want_test" -eq 1 ]; then
  AJV_DIR=${A3S_BOX_AJV_DIR:-$PWD/.cache/ajv}
  if [ ! -d "$AJV_DIR/node_modules/ajv" ]; then
    say "installing ajv (npm) into $AJV_DIR"
    mkdir -p "$AJV_DIR"
    npm install --silent --no-audit --no-fund --prefix "$AJV_DIR" ajv@8 ajv-formats@3 >/dev/null
  fi
  YLS_DIR=${A3S_BOX_YLS_DIR:-$PWD/.cache/yaml-language-server}
  if [ ! -d "$YLS_DIR/node_modules/yaml-language-server" ]; then
    say "installing yaml-language-server (npm) into $YLS_DIR, for the editor tests"
    mkdir -p "$YLS_DIR"
    npm install --silent --no-audit --no-fund --prefix "$YLS_DIR" yaml-language-server@1 \
      vscode-languageserver-textdocument@1 >/dev/null
  fi
fi

# --- guest kernel, guest init, accelerator probe -------------------------------------
if [ "$want_guest" -eq 1 ]; then
  # box setup fetches Debian's cloud kernel with apt-get download: it needs package lists
  if [ -z "${A3S_BOX_KERNEL:-}" ] && command -v apt-cache >/dev/null \
     && ! apt-cache policy linux-image-cloud-amd64 2>/dev/null | grep -q "Candidate: [0-9]"; then
    say "refreshing apt package lists (for the guest kernel)"
    sudo_ apt-get update -q >/dev/null
  fi
  say "provisioning the guest kernel and guest init (box setup)"
  "$PY" -m a3s_box.cli setup
fi
