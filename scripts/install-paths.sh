# Where scripts/setup.sh installs a3s-box; sourced by setup.sh, demo.sh and test.sh so the
# three agree. Never the system Python (PEP 668): a virtual environment of our own.
#   root:   /opt/a3s-box/venv, with `box` linked into /usr/local/bin
#   others: ~/.local/share/a3s-box-venv, with `box` linked into ~/.local/bin
# A3S_BOX_VENV and A3S_BOX_BIN_DIR choose other places (the tests use them).
if [ "$(id -u)" -eq 0 ]; then
  A3S_BOX_VENV=${A3S_BOX_VENV:-/opt/a3s-box/venv}
  A3S_BOX_BIN_DIR=${A3S_BOX_BIN_DIR:-/usr/local/bin}
else
  A3S_BOX_VENV=${A3S_BOX_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/a3s-box-venv}
  A3S_BOX_BIN_DIR=${A3S_BOX_BIN_DIR:-$HOME/.local/bin}
fi
