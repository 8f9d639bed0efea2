#!/usr/bin/env bash
# The README's test command: set up on first use (venv, pinned packages, ROS 2 wheels, colcon build),
# then lint and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. scripts/env.sh
ruff check src tests scripts launch
python -m pytest tests -q "$@"
