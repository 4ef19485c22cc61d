# moe_policy_ros: two commands on a fresh machine.
#   make demo   simulated ALOHA dual-arm robot + bundled MoE model, then a report
#   make test   the whole test suite (unit, real ONNX Runtime, real rclpy/DDS across processes)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
DEMO_ARGS ?=

.PHONY: setup demo test test-jazzy lint clean

setup:
	@./scripts/setup_env.sh

demo: setup
	$(PY) -m moe_policy_ros.cli demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -ra --durations=15

# The ROS-facing tests again on ROS 2 Jazzy's rclpy (PyPI wheels), in .venv-jazzy.
test-jazzy:
	@VENV=.venv-jazzy ROS_REQ=requirements/ros-jazzy.txt ./scripts/setup_env.sh
	.venv-jazzy/bin/python -m pytest -q -ra test/nodes test/package/test_cli.py \
	  test/package/test_launch.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy moe_policy_ros

clean:
	rm -rf build install log *.egg-info .pytest_cache .mypy_cache .ruff_cache out
