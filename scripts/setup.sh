#!/usr/bin/env bash
# Set up part_point_ros on a fresh Debian 12 / Ubuntu machine with Python 3.11 and nothing else:
# Debian packages (only the missing ones), the virtual environment .venv, the pinned Python
# packages (requirements.txt + requirements-ros.txt: ROS 2 Jazzy from PyPI wheels, colcon), the
# editable install of this package, and the colcon build of its ROS 2 interfaces in ros2_ws.
#
# Idempotent and quiet: every step is skipped when its inputs did not change (stamp files with a
# hash); it prints only on failure (with the log) or when it needs something it cannot do itself.
#
#   scripts/setup.sh            set up what is missing or outdated
#   scripts/setup.sh --rebuild  force the colcon build
#
# Environment: PYTHON (interpreter for a new .venv, default python3.11), PART_POINT_VENV (default
# <repo>/.venv), PART_POINT_SETUP_VERBOSE=1 to see every step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PART_POINT_VENV:-$ROOT/.venv}"
WS="$ROOT/ros2_ws"
LOG_DIR="$WS/log"
LOG="$LOG_DIR/setup.log"
REBUILD=0
[[ "${1:-}" == "--rebuild" ]] && REBUILD=1

mkdir -p "$LOG_DIR"
# one setup at a time per checkout (tests started in parallel all source env.sh)
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOG_DIR/.setup.lock"
  flock 9
fi
: >"$LOG"

say() { [[ "${PART_POINT_SETUP_VERBOSE:-0}" == "1" ]] && echo "setup: $*" >&2 || true; }
fail() {
  echo "setup: FAILED: $*" >&2
  if [[ -s "$LOG" ]]; then
    echo "setup: last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
  fi
  exit 1
}
# run a step with its output in the log; on failure show the log and stop
step() {
  local what="$1"
  shift
  say "$what"
  echo "### $what: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1 || fail "$what"
}
hash_files() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- 1. Debian packages
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  if [[ -x "$VENV/bin/python" ]]; then echo "$VENV/bin/python"; return; fi
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then echo "$cand"; return; fi
  done
  fail "no python3.11 found: install Python 3.11 (Debian 12: apt-get install python3 python3-venv)"
}
PY="$(pick_python)"
PY_VER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" ||
  fail "cannot run $PY"
[[ "$PY_VER" == "3.11" ]] ||
  fail "$PY is Python $PY_VER; the ROS 2 Jazzy wheels need Python 3.11 (set PYTHON=/path/to/python3.11)"

missing=()
dpkg_has() { dpkg -s "$1" >/dev/null 2>&1; }
if command -v dpkg >/dev/null 2>&1; then
  dpkg_has libusb-1.0-0 || missing+=(libusb-1.0-0) # open3d imports it
fi
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
# Python.h: the generated interfaces are a C extension of this interpreter
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
  missing+=("python$PY_VER-dev")
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=("python$PY_VER-venv")
fi
if ((${#missing[@]})); then
  apt_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    step "apt-get update" apt-get update -qq
    # shellcheck disable=SC2086
    step "apt-get install ${missing[*]}" $apt_cmd
  else
    echo "setup: missing system packages: ${missing[*]}. Install them with:" >&2
    echo "    sudo $apt_cmd" >&2
    exit 1
  fi
fi

# ---------------------------------------------------------------- 2. virtual environment
if [[ ! -x "$VENV/bin/python" ]]; then
  step "create $VENV" "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# the ROS wheels re-exec Python on start unless this is set; env.sh sets the library path itself
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---------------------------------------------------------------- 3. pinned Python packages
REQ_STAMP="$VENV/.part_point_requirements.sha256"
req_hash="$(hash_files "$ROOT/requirements.txt" "$ROOT/requirements-ros.txt" "$ROOT/pyproject.toml")-$ROOT"
if [[ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$req_hash" ]]; then
  say "installing pinned packages (first run: several minutes)"
  step "pip install -r requirements.txt -r requirements-ros.txt" \
    "$VPY" -m pip install --disable-pip-version-check -q \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements-ros.txt"
  step "pip install -e . --no-deps" \
    "$VPY" -m pip install --disable-pip-version-check -q --no-deps -e "$ROOT"

  # The wheels' CMake files name include dirs of the machine they were built on; point them at
  # this interpreter's headers and numpy's. Only files inside the venv are touched.
  py_inc="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_inc="$("$VPY" -c 'import numpy; print(numpy.get_include())')"
  mapfile -t cmake_files < <(grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$VENV" || true)
  if ((${#cmake_files[@]})); then
    step "fix CMake include paths in ${#cmake_files[@]} files" sed -i \
      -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g" \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
      "${cmake_files[@]}"
  fi
  echo "$req_hash" >"$REQ_STAMP"
  REBUILD=1
fi

# ---------------------------------------------------------------- 4. colcon build of ros2_ws
# colcon finds package.xml at the repo root through this link
mkdir -p "$WS/src"
[[ -L "$WS/src/part_point_ros" ]] || ln -sfn ../.. "$WS/src/part_point_ros"

BUILD_STAMP="$WS/install/.part_point_build.sha256"
# content of what CMake generates from, names of the data files it installs (--symlink-install
# keeps the content of installed files live, so a new or removed file is what needs a rebuild).
# Python sources: only their names count (a new module needs its link in install/; content is live).
build_hash="$(
  cd "$ROOT"
  {
    cat package.xml CMakeLists.txt msg/*.msg srv/*.srv 2>/dev/null
    find launch config calib rviz models src -type f \
      -not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null | LC_ALL=C sort
    echo "$VPY"
  } | sha256sum | cut -d' ' -f1
)"
if ((REBUILD)) || [[ ! -f "$WS/install/setup.bash" ]] || [[ "$(cat "$BUILD_STAMP" 2>/dev/null)" != "$build_hash" ]]; then
  say "colcon build in $WS"
  (
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    cd "$WS"
    step "colcon build" colcon --log-base "$LOG_DIR" build --symlink-install \
      --event-handlers console_cohesion- summary- status- console_start_end- \
      --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VPY"
  ) || exit 1
  # the generated interfaces must import from this environment
  (
    set +u
    # shellcheck disable=SC1091
    PART_POINT_SKIP_SETUP=1 . "$ROOT/scripts/env.sh"
    step "import the generated interfaces" python -c \
      'from part_point_ros.msg import PartPoint, PartPointArray; from part_point_ros.srv import PointPart'
  ) || exit 1
  echo "$build_hash" >"$BUILD_STAMP"
fi
say "done"
