#!/usr/bin/env bash
# The README's main command: the whole ROS 2 graph on the synthetic RGB-D world, end to end.
# On first use it sets everything up (Debian packages, .venv, pinned packages, ROS 2 Jazzy wheels,
# colcon build: see scripts/setup.sh), then runs `part-point demo` with the arguments given, e.g.
#   scripts/demo.sh --seeds 200000:200005 --queries-per-scene 4 --out runs/demo5
#   scripts/demo.sh --method attention      # the attention-pointing baseline on the same backbone
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. scripts/env.sh
exec part-point demo "$@"
