"""Shared test setup: repository root on sys.path, isolated DDS domain per session, and the
shared helpers as fixtures (tests request them; no test imports another test file).

The helpers live in the ``helpers`` package beside this file. Tests reach them through the
fixtures below; a test module imports from ``helpers`` only what it needs at import time
(constants such as ``helpers.REPO``, a class it subclasses or names in annotations).
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Tests isolate their DDS traffic: one random domain per test session (0..101 are valid
# for Fast DDS on loopback without port clashes), unless the caller pinned one.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(20, 100)))
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture(scope="session")
def hand_bundle() -> ModuleType:
    """The hand-built bundle and its numpy reference (test/helpers/hand_bundle.py):
    ``write_bundle(root, family, ...)``, ``rehash(root)``, ``reference_encoder``,
    ``reference_chunk``."""
    from helpers import hand_bundle as module

    return module


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., Any]:
    """``wait_for(pred, timeout, what, poll=0.02)``: poll until ``pred()`` is truthy and
    return it, or fail naming ``what`` (test/helpers/ros.py)."""
    from helpers.ros import wait_for as function

    return function


@pytest.fixture
def node_env() -> dict[str, str]:
    """The environment for a child process of this repository (``PYTHONPATH`` with the
    repository first, unbuffered output), read from ``os.environ`` when the test asks."""
    from helpers.ros import node_env as environment

    return environment()


@pytest.fixture(scope="session")
def ros() -> ModuleType:
    """The helpers for tests that talk to nodes in other processes over DDS
    (test/helpers/ros.py): ``node_process``, ``stop_process``, ``RosClient``, ``FakeRobot``,
    the policy node's ``policy_node``, ``policy_params``, ``bundle_home``, ``engage``,
    ``change_state``, ``lifecycle_state``, and ``UpProcess``/``pids_with`` for ``up``."""
    from helpers import ros as module

    return module


@pytest.fixture(scope="module")
def ros_client(request: pytest.FixtureRequest, ros: ModuleType) -> Iterator[Any]:
    """One :class:`helpers.ros.RosClient` for the test module, its node named after the
    module; the module's tests skip without rclpy."""
    pytest.importorskip("rclpy")
    client = ros.RosClient(request.module.__name__.rpartition(".")[2] + "_client")
    yield client
    client.close()
