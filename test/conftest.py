"""Shared test setup: repository root on sys.path, isolated DDS domain per session, and the
shared helpers as fixtures (tests request them; no test imports another test file)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from types import ModuleType

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
