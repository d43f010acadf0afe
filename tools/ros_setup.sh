#!/usr/bin/env bash
# Make a virtual environment ROS-ready: ROS 2 Kilted wheels, the wheels' CMake path fix,
# vgssl_msgs built into the venv (importable with nothing to source), vgssl_ros editable.
#
# Usage: bash tools/ros_setup.sh VENV_DIR
#
# Idempotent and silent when nothing changed; each step that does work prints one line.
# On failure: one line on stderr naming the log to read, exit status 1.
# Background: shared/ROS2.md ("Building an interface package").
set -euo pipefail

die() { echo "ros_setup.sh: error: $*" >&2; exit 1; }
note() { echo "ros_setup.sh: $*"; }

[[ $# -eq 1 ]] || die "usage: bash tools/ros_setup.sh VENV_DIR"
[[ -x "$1/bin/python" ]] || die "'$1' is not a virtual environment (no $1/bin/python); create it with: python3 -m venv $1"

VENV="$(cd "$1" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$VENV/bin/python"
BUILD="$REPO/build/vgssl_msgs"
LOG="$REPO/build/ros_setup.log"
mkdir -p "$REPO/build"
[[ -f "$REPO/build/COLCON_IGNORE" ]] || : >"$REPO/build/COLCON_IGNORE"  # as colcon marks its own build/

# One setup at a time per checkout: engineers and CI share build/vgssl_msgs.
exec 9>"$REPO/build/.ros_setup.lock"
flock 9

# Everything below runs the venv's own tools; a sourced system ROS would mix libraries.
export PATH="$VENV/bin:$PATH"
unset PYTHONPATH PYTHONHOME _ROS_WHEELS_BOOTSTRAP_COMPLETE
export PIP_DISABLE_PIP_VERSION_CHECK=1

log_started=0
run_logged() {  # run_logged WHAT CMD...: output to the log (fresh each run), one line on failure
    local what="$1"; shift
    [[ $log_started -eq 1 ]] || { : >"$LOG"; log_started=1; }
    { echo "### $(date -Is) $what: $*"; } >>"$LOG"
    "$@" >>"$LOG" 2>&1 || die "$what failed; see $LOG"
}

# (a) ROS wheels from requirements-ros.txt, (b) CMake path fix, and the checks for
# (c)/(d), in one Python start (the ROS bootstrapper re-executes every Python once).
STATE="$("$PY" "$REPO/tools/ros_venv_check.py" "$REPO" "$VENV")" \
    || die "checking $VENV failed (run: $PY $REPO/tools/ros_venv_check.py $REPO $VENV)"

if grep -qx "missing-requirements" <<<"$STATE"; then
    run_logged "pip install -r requirements-ros.txt" \
        "$PY" -m pip install -q -r "$REPO/requirements-ros.txt"
    note "installed ROS 2 wheels from requirements-ros.txt"
    STATE="$("$PY" "$REPO/tools/ros_venv_check.py" "$REPO" "$VENV")" \
        || die "checking $VENV failed after installing requirements-ros.txt"
    if grep -qx "missing-requirements" <<<"$STATE"; then
        die "requirements-ros.txt still not satisfied after pip install; see $LOG"
    fi
fi
if grep -qx "missing-numpy" <<<"$STATE"; then
    die "numpy is not installed in $VENV (rosidl needs its headers); run: $PY -m pip install numpy"
fi
if grep -q "^fixed-cmake " <<<"$STATE"; then
    note "rewrote build-container paths in $(grep "^fixed-cmake " <<<"$STATE" | cut -d' ' -f2) CMake files"
fi

# (c) vgssl_msgs: rebuild when a source file, or a ROS generator wheel, is newer than the
# last install into this venv (the stamp), or when the generated module is missing.
SITE="$(sed -n 's/^site //p' <<<"$STATE")"
STAMP="$VENV/share/vgssl_msgs/vgssl_setup.stamp"
need_build=0
if [[ ! -f "$STAMP" || ! -f "$SITE/vgssl_msgs/msg/__init__.py" ]]; then
    need_build=1
elif [[ -n "$(find "$REPO/vgssl_msgs" -type f -newer "$STAMP" -print -quit)" ]] \
    || [[ -n "$(find "$SITE" -maxdepth 1 -name 'ros_rosidl_*.dist-info' -newer "$STAMP" -print -quit)" ]]; then
    need_build=1
fi
if [[ $need_build -eq 1 ]]; then
    # A build folder configured for another venv would install there: start it afresh.
    if [[ -f "$BUILD/CMakeCache.txt" ]] \
        && ! grep -qx "CMAKE_INSTALL_PREFIX:PATH=$VENV" "$BUILD/CMakeCache.txt"; then
        rm -rf "$BUILD"
    fi
    export AMENT_PREFIX_PATH="$VENV"
    export CMAKE_PREFIX_PATH="$VENV"
    run_logged "cmake configure vgssl_msgs" cmake -S "$REPO/vgssl_msgs" -B "$BUILD" \
        -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
        -DPython3_EXECUTABLE="$PY"
    run_logged "cmake build vgssl_msgs" cmake --build "$BUILD" -j2
    run_logged "cmake install vgssl_msgs" cmake --install "$BUILD"
    [[ -f "$SITE/vgssl_msgs/msg/__init__.py" ]] \
        || die "vgssl_msgs installed but its Python module is not in $SITE; see $LOG"
    touch "$STAMP"
    note "built and installed vgssl_msgs into $VENV"
fi

# (d) vgssl_ros, editable, so `python -m vgssl_ros.X` runs the checkout's code.
# compat mode puts a plain path entry on sys.path, so the checkout's top-level vgssl_ros/ folder
# (no __init__.py) never shadows the package when a node is started from the repository root.
if grep -qx "missing-vgssl-ros" <<<"$STATE"; then
    # Building in the venv is quicker and works offline, but needs a setuptools that can
    # make wheels by itself (>= 70.1); a fresh Python 3.11 venv has 65.x without `wheel`.
    if "$PY" -c 'import setuptools.command.bdist_wheel' >/dev/null 2>&1; then
        run_logged "pip install -e vgssl_ros" \
            "$PY" -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e "$REPO/vgssl_ros"
    else
        run_logged "pip install -e vgssl_ros" \
            "$PY" -m pip install -q --no-deps --config-settings editable_mode=compat -e "$REPO/vgssl_ros"
    fi
    note "installed vgssl_ros (editable) into $VENV"
fi

# setuptools' editable wheels skip data_files, so give the venv the layout that a
# `colcon build --symlink-install` makes, which the ROS tools look in once AMENT_PREFIX_PATH names
# the venv: share/vgssl_ros with a link per file into the checkout (ros2launch finds launch files
# with os.walk, which does not enter linked folders) and the console scripts in lib/vgssl_ros
# (where `ros2 run` and launch_ros look for a package's executables; pip puts them in bin/).
share_changed=0
link_into_share() {  # link_into_share TARGET LINK
    [[ "$(readlink "$2" 2>/dev/null || true)" == "$1" ]] && return 0
    rm -rf "$2"
    mkdir -p "$(dirname "$2")"
    ln -s "$1" "$2"
    share_changed=1
}
link_files() {  # link_files FROM_DIR TO_DIR GLOB...: a link per matching file, stale links removed
    local from="$1" to="$2" f; shift 2
    [[ -L "$to" ]] && { rm -f "$to"; share_changed=1; }  # the folder link of an older set-up
    mkdir -p "$to"
    for f in "$to"/*; do
        if [[ -L "$f" && ! -e "$f" ]]; then rm -f "$f"; share_changed=1; fi
    done
    for pattern in "$@"; do
        for f in "$from"/$pattern; do
            if [[ -f "$f" ]]; then link_into_share "$f" "$to/$(basename "$f")"; fi
        done
    done
}
SHARE="$VENV/share/vgssl_ros"
link_into_share "$REPO/vgssl_ros/package.xml" "$SHARE/package.xml"
link_files "$REPO/launch" "$SHARE/launch" '*.launch.py'  # the files vgssl_ros/setup.py installs
link_files "$REPO/config" "$SHARE/config" '*.yaml' '*.yml' '*.xml'
# the console_scripts of vgssl_ros/setup.py ("name = vgssl_ros.module:function")
scripts="$(sed -n 's/^ *"\([A-Za-z0-9_]*\) = vgssl_ros\.[A-Za-z0-9_.]*:[A-Za-z0-9_]*",*$/\1/p' "$REPO/vgssl_ros/setup.py")"
[[ -n "$scripts" ]] || die "no console_scripts found in $REPO/vgssl_ros/setup.py"
for script in $scripts; do
    [[ -x "$VENV/bin/$script" ]] || die "$VENV/bin/$script is missing: reinstall with $PY -m pip install -e $REPO/vgssl_ros"
    link_into_share "$VENV/bin/$script" "$VENV/lib/vgssl_ros/$script"
done
MARKER="$VENV/share/ament_index/resource_index/packages/vgssl_ros"
if [[ ! -f "$MARKER" ]]; then
    mkdir -p "$(dirname "$MARKER")" && : >"$MARKER"
    share_changed=1
fi
[[ $share_changed -eq 0 ]] || note "linked share/vgssl_ros and lib/vgssl_ros of $VENV to the checkout's launch/, config/ and nodes"
