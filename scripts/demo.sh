#!/usr/bin/env bash
# The README's main command: the whole ROS 2 graph on the synthetic RGB-D world, end to end.
# On first use it sets everything up (Debian packages, .venv, pinned packages, ROS 2 Jazzy wheels,
# colcon build: see scripts/setup.sh), then runs `part-point demo` with the arguments given, e.g.
#   scripts/demo.sh --seeds 200000:200005 --queries-per-scene 4 --out runs/demo5
# Until an A2P head for the shipped tiny-tabletop backbone is in models/, it runs the attention-
# pointing baseline on that backbone (README, status).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. scripts/env.sh
args=("$@")
if [[ ! -d models/tiny-tabletop-a2p && " $* " != *" --head "* && " $* " != *" --method "* &&
  " $* " != *" --untrained "* ]]; then
  echo "demo.sh: no A2P head in models/ yet: running the attention baseline (--method attention)" >&2
  args+=(--method attention)
fi
exec part-point demo "${args[@]}"
