#!/usr/bin/env bash
# The README's test command. On first use it sets everything up (Debian packages, .venv, pinned
# packages, ROS 2 Jazzy wheels, colcon build: see scripts/setup.sh), then lints and runs every test.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k grounding -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. scripts/env.sh
ruff check src tests scripts launch
python -m pytest tests -q "$@"
