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

.PHONY: setup demo test test-jazzy test-distro lint clean

setup:
	@./scripts/setup_env.sh

demo: setup
	$(PY) -m moe_policy_ros.cli demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -ra --durations=15

# The ROS-facing tests again on ROS 2 Jazzy's rclpy (PyPI wheels), in .venv-jazzy.
test-jazzy:
	@VENV=.venv-jazzy ROS_REQ=requirements/ros-jazzy.txt ./scripts/setup_env.sh
	.venv-jazzy/bin/python -m pytest -q -ra test/nodes test/integration test/tools/test_cli.py \
	  test/package/test_launch.py

# The core and node tests on the libraries a ROS 2 robot gets from rosdep (requirements/
# distro.txt: numpy 1.26, OpenCV 4.6, onnx 1.15, ONNX Runtime 1.17, pydantic 2.6) with Jazzy's
# rclpy, in .venv-distro; and the one-line stop on the distro's pydantic 1.10.
test-distro:
	@VENV=.venv-distro ROS_REQ=requirements/ros-jazzy.txt RUNTIME_REQ=requirements/distro.txt \
	  TORCH_REQ=requirements/torch-distro.txt ./scripts/setup_env.sh
	@test -d .venv-distro/pydantic1 || .venv-distro/bin/python -m pip install -q --no-deps \
	  --target .venv-distro/pydantic1 pydantic==1.10.14
	AMENT_PREFIX_PATH=$(CURDIR)/.venv-distro MOE_POLICY_ROS_PYDANTIC1=$(CURDIR)/.venv-distro/pydantic1 \
	  .venv-distro/bin/python -m pytest -q -ra test/core test/nodes test/integration \
	  test/package/test_versions.py test/tools/test_cli.py test/package/test_launch.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy moe_policy_ros

clean:
	rm -rf build install log *.egg-info .pytest_cache .mypy_cache .ruff_cache out
