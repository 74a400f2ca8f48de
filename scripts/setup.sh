#!/usr/bin/env bash
# Set up a3s-box on a fresh Debian/Ubuntu machine: system packages, a3s-box in a virtual
# environment of its own (never the system Python, which PEP 668 marks externally
# managed), `box` on the login PATH, and (unless --no-guest) the guest kernel + init.
# Idempotent: every step checks first and does nothing when already done.
#   scripts/setup.sh            # for using a3s-box: installs this checkout (a copy, not a link)
#   scripts/setup.sh --test     # for running the tests: an editable install with the test
#                               # tools in $A3S_BOX_VENV (scripts/test.sh: ./.venv), no link
# People who manage their own Python can instead `pip install .` or `pipx install .`, then
# run `box setup`.
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
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# shellcheck source=scripts/install-paths.sh
. scripts/install-paths.sh

# --- a Python 3.11+ to build the virtual environment from ----------------------------
find_python() {
  local c
  for c in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 \
       && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  return 1
}

# --- system packages ---------------------------------------------------------------
pkgs=(qemu-system-x86 qemu-utils e2fsprogs busybox-static musl-tools cpio iproute2 iptables uidmap)
[ "$want_test" -eq 1 ] && pkgs+=(docker-registry skopeo umoci libvirglrenderer1 curl containerd)
command -v node >/dev/null 2>&1 || { [ "$want_test" -eq 1 ] && pkgs+=(nodejs npm); }
if ! BASE_PY=$(find_python) || ! "$BASE_PY" -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian and Ubuntu ship venv's pip bootstrap separately; without it `python3 -m venv` fails.
  pkgs+=(python3 python3-venv)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_ apt-get update -q >/dev/null
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
BASE_PY=$(find_python) || die "no Python 3.11 or newer found (a3s-box needs 3.11+); install python3 >= 3.11"

# --- a3s-box in its own virtual environment ------------------------------------------
VPY=$A3S_BOX_VENV/bin/python
if [ ! -x "$VPY" ] || ! "$VPY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "creating a virtual environment in $A3S_BOX_VENV (from $BASE_PY)"
  rm -rf "$A3S_BOX_VENV"
  mkdir -p "$(dirname "$A3S_BOX_VENV")"
  "$BASE_PY" -m venv "$A3S_BOX_VENV" || die "could not create a virtual environment in $A3S_BOX_VENV"
fi

# What is installed is recorded as a hash of its sources, so a second run installs nothing
# and a changed checkout is installed again. An editable install needs only its
# dependencies checked (the code is the checkout itself).
if [ "$want_test" -eq 1 ]; then
  spec=(-e '.[test]'); stamp_of=(pyproject.toml)
else
  spec=(.); stamp_of=(pyproject.toml README.md a3s_box)
fi
stamp="${spec[*]} $(find "${stamp_of[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
stamp_file=$A3S_BOX_VENV/.a3s-box-installed
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ] || [ ! -x "$A3S_BOX_VENV/bin/box" ]; then
  say "installing a3s-box (${spec[*]}) into $A3S_BOX_VENV"
  rm -f "$stamp_file"
  "$VPY" -m pip install -q --disable-pip-version-check "${spec[@]}" \
    || die "pip could not install a3s-box into $A3S_BOX_VENV"
  printf '%s\n' "$stamp" >"$stamp_file"
fi

# --- a real libkrun for the libkrun driver tests (Debian 12 packages none) ----------
if [ "$want_test" -eq 1 ] && ! "$VPY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("smol") is None)' 2>/dev/null; then
  say "installing smolmachines (ships libkrun + libkrunfw) with pip"
  "$VPY" -m pip install -q --disable-pip-version-check smolmachines || die "pip could not install smolmachines"
fi

# --- `box` where a new login shell finds it -------------------------------------------
if [ "$want_test" -eq 0 ]; then
  mkdir -p "$A3S_BOX_BIN_DIR"
  if [ "$(readlink "$A3S_BOX_BIN_DIR/box" 2>/dev/null)" != "$A3S_BOX_VENV/bin/box" ]; then
    say "linking $A3S_BOX_BIN_DIR/box -> $A3S_BOX_VENV/bin/box"
    ln -sfn "$A3S_BOX_VENV/bin/box" "$A3S_BOX_BIN_DIR/box"
  fi
  login_box=$(env -i HOME="$HOME" USER="$(id -un)" LOGNAME="$(id -un)" TERM=dumb bash -lc 'command -v box' 2>/dev/null </dev/null || true)
  if [ "$login_box" != "$A3S_BOX_BIN_DIR/box" ]; then
    if [ "$A3S_BOX_BIN_DIR" = "$HOME/.local/bin" ]; then
      # As `pipx ensurepath` does: the login profile bash reads first gets ~/.local/bin.
      profile=$HOME/.profile
      for f in "$HOME/.bash_profile" "$HOME/.bash_login"; do [ -f "$f" ] && { profile=$f; break; }; done
      say "adding ~/.local/bin to PATH in $profile (open a new shell to use box)"
      printf '\n# added by a3s-box scripts/setup.sh\nexport PATH="$HOME/.local/bin:$PATH"\n' >>"$profile"
    else
      say "note: a login shell finds '${login_box:-no box}' first; put $A3S_BOX_BIN_DIR early on your PATH"
    fi
  fi
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
  "$A3S_BOX_VENV/bin/box" setup
fi
