# Source me (bash): `. scripts/env.sh` — the environment for the tests, the demo and the nodes.
#
# Runs scripts/setup.sh first (quiet, and quick when nothing changed; PART_POINT_SKIP_SETUP=1 skips
# it), then: activates .venv, sources the colcon workspace ros2_ws/install/setup.bash (no system
# ROS needed), adds the venv's ROS 2 wheels to AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH and the
# library path, and puts src/ first on PYTHONPATH so edits take effect without a rebuild (the
# generated part_point_ros.msg / .srv are still found in the workspace: see part_point_ros/__init__.py).

_pp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_pp_venv="${PART_POINT_VENV:-$_pp_root/.venv}"

_pp_env() {
  if [[ "${PART_POINT_SKIP_SETUP:-0}" != "1" ]]; then
    "$_pp_root/scripts/setup.sh" || return 1
  fi
  if [[ ! -f "$_pp_venv/bin/activate" || ! -f "$_pp_root/ros2_ws/install/setup.bash" ]]; then
    echo "env.sh: $_pp_venv or ros2_ws/install is missing: run scripts/setup.sh" >&2
    return 1
  fi
  # shellcheck disable=SC1091
  . "$_pp_venv/bin/activate"

  # The ROS wheels' shared libraries live in the venv; set the path here so that Python does not
  # re-exec itself on every start to set it (ros_wheels_bootstrapper).
  local libs="$_pp_venv/lib" d
  for d in "$_pp_venv"/lib/python3.11/site-packages/ros_*.libs; do
    [[ -d "$d" ]] && libs="$libs:$d"
  done
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$_pp_venv/lib:"*) ;;
    *) export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  esac
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1

  # colcon's setup scripts reference unset variables; source them without `set -u`
  local had_u=0
  [[ $- == *u* ]] && had_u=1 && set +u
  # shellcheck disable=SC1091
  . "$_pp_root/ros2_ws/install/setup.bash"
  ((had_u)) && set -u

  # the venv is the underlay (it has no local_setup.* of its own, so append it by hand)
  case ":${AMENT_PREFIX_PATH:-}:" in
    *":$_pp_venv:"*) ;;
    *) export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$_pp_venv" ;;
  esac
  case ":${CMAKE_PREFIX_PATH:-}:" in
    *":$_pp_venv:"*) ;;
    *) export CMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH:}$_pp_venv" ;;
  esac
  # src/ first (also when sourced again after the workspace put itself in front)
  local pp=":${PYTHONPATH:-}:"
  pp="${pp//:$_pp_root\/src:/:}"
  pp="${pp#:}"
  pp="${pp%:}"
  export PYTHONPATH="$_pp_root/src${pp:+:$pp}"
  return 0
}

_pp_env
_pp_status=$?
unset -f _pp_env
unset _pp_root _pp_venv
return $_pp_status 2>/dev/null || exit $_pp_status
