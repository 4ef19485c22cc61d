"""The command-line tests' runner: ``moe-policy-ros`` as a user runs it, as a fixture."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from helpers import REPO


@pytest.fixture
def cli(node_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args, timeout=120)``: ``python -m moe_policy_ros.cli ARGS`` (the console
    script's entry point) in a subprocess, output captured."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "moe_policy_ros.cli", *args], cwd=REPO, env=node_env,
            capture_output=True, text=True, timeout=timeout,
        )

    return run
