#!/usr/bin/env bash
# Set everything up on a fresh machine and run the demo: two microVMs from an image
# built offline, declared in examples/hello/Boxfile.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 examples/hello/make_image.py >/dev/null
set -x
box plan -f examples/hello/Boxfile.yaml
box apply -f examples/hello/Boxfile.yaml
box ps
box exec agent -- uname -r
box exec agent -- sh -c 'echo "agent sees: $(ps -o pid,comm | wc -l) processes"; cat /etc/motd'
box exec --ns business agent -- sh -c 'echo "business sees: $(ps -o pid,comm | wc -l) processes"'
