#!/usr/bin/env bash
# Set everything up on a fresh machine and run the demo: two microVMs from an image
# built offline, declared in examples/hello/Boxfile.yaml. Safe to run again: a second run
# installs nothing and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck source=scripts/install-paths.sh
. scripts/install-paths.sh
# The commands below read as a user types them; `box` is the link setup.sh just made.
export PATH="$A3S_BOX_BIN_DIR:$PATH"
"$A3S_BOX_VENV/bin/python" examples/hello/make_image.py >/dev/null
set -x
box plan -f examples/hello/Boxfile.yaml
box apply -f examples/hello/Boxfile.yaml
box ps
box exec agent -- uname -r
box exec agent -- sh -c 'echo "agent sees: $(ps -o pid,comm | wc -l) processes"; cat /etc/motd'
box exec --ns business agent -- sh -c 'echo "business sees: $(ps -o pid,comm | wc -l) processes"'
{ set +x; } 2>/dev/null
cat <<MSG

Demo done. Two microVMs are running, db and agent (project "hello"); they keep running.
  box ps                                        # see them
  box exec -it agent -- sh                      # a shell inside the agent box
  box logs agent                                # its console and agent output
  box delete -f examples/hello/Boxfile.yaml     # stop and remove both
MSG
login_box=$(env -i HOME="$HOME" USER="$(id -un)" TERM=dumb bash -lc 'command -v box' 2>/dev/null </dev/null || true)
if [ "$login_box" = "$A3S_BOX_BIN_DIR/box" ]; then
  echo "\`box\` is $login_box (a3s-box in $A3S_BOX_VENV); a new login shell finds it."
else
  echo "\`box\` is $A3S_BOX_BIN_DIR/box: put $A3S_BOX_BIN_DIR on your PATH to use it."
fi
