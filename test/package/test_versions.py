"""The version gate: with a distro's pydantic 1.10 the package stops at start with one line
that names the package, the version found, the version needed and the fix command.

pydantic 1.10.14 (Ubuntu 24.04's python3-pydantic) is really installed, into a folder put
first on PYTHONPATH: from ``$MOE_POLICY_ROS_PYDANTIC1`` (``make test-distro`` prepares it), or
with pip into a temporary folder (skips with the reason when pip cannot fetch it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_policy_ros import _requirements
from moe_policy_ros._requirements import DependencyVersionError, parse_version

REPO = Path(__file__).resolve().parents[2]
DISTRO_PYDANTIC = "1.10.14"


@pytest.mark.parametrize(
    ("text", "want"),
    [("1.10.14", (1, 10, 14)), ("2.6.0b1", (2, 6, 0)), ("2", (2,)), ("2.14.4.post1", (2, 14, 4)),
     ("1.26.4+ubuntu", (1, 26, 4)), ("dev", ())],
)
def test_parse_version(text: str, want: tuple[int, ...]) -> None:
    assert parse_version(text) == want


def test_this_environment_passes_the_gate() -> None:
    assert _requirements.problems() == []
    _requirements.check()


def test_gate_error_is_a_system_exit_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_requirements.MINIMUM, "pydantic", ((99, 0), "pydantic>=99", "test"))
    with pytest.raises(DependencyVersionError) as info:
        _requirements.check()
    assert isinstance(info.value, SystemExit)
    assert "\n" not in info.value.message and "pydantic>=99.0" in info.value.message


@pytest.fixture(scope="module")
def pydantic1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ready = os.environ.get("MOE_POLICY_ROS_PYDANTIC1", "")
    if ready:
        return Path(ready)
    target = tmp_path_factory.mktemp("pydantic1")
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
             f"pydantic=={DISTRO_PYDANTIC}"], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip could not fetch pydantic {DISTRO_PYDANTIC} in 180 s")
    if res.returncode != 0:
        pytest.skip(f"pip could not fetch pydantic {DISTRO_PYDANTIC}: "
                    f"{res.stderr.strip().splitlines()[-1:]}")
    return target


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import moe_policy_ros.core.config"],
        ["-m", "moe_policy_ros.nodes.policy_node"],
        ["-m", "moe_policy_ros.cli", "inspect", "models/demo_adamoe"],
    ],
    ids=["import", "policy_node", "cli"],
)
def test_distro_pydantic_1_stops_with_one_line(pydantic1: Path, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": f"{pydantic1}{os.pathsep}{REPO}"}
    probe = subprocess.run([sys.executable, "-c", "import pydantic; print(pydantic.VERSION)"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == DISTRO_PYDANTIC, "premise: pydantic 1.10 is the one imported"
    res = subprocess.run([sys.executable, *argv], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    (line,) = lines
    assert line.startswith("moe_policy_ros needs pydantic>=2.0")
    assert f"found pydantic {DISTRO_PYDANTIC}" in line
    assert "pip install" in line and "'pydantic>=2,<3'" in line
    assert "Traceback" not in res.stderr and "field_validator" not in res.stderr
