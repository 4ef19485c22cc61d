"""The colcon path of the README: `colcon build` (with and without --symlink-install) in a
temporary workspace, the layout it installs, and the policy node started from the install in
a shell that sourced ``install/setup.bash``, seen on DDS.

colcon-core, colcon-ros and colcon-bash come from PyPI (pinned in requirements/dev.txt). The
workspace gets a copy of the tracked files (``git ls-files``), so the build never writes into
the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from helpers import REPO

if TYPE_CHECKING:
    from helpers.ros import RosClient

pytestmark = [pytest.mark.slow]

PACKAGE = "moe_policy_ros"
COLCON = Path(sys.executable).parent / "colcon"
EXECUTABLES = ("policy_node", "aloha_sim", "realsense_camera")

if not COLCON.is_file():
    pytest.skip(f"colcon is not installed next to {sys.executable} "
                "(pip install -r requirements/dev.txt)", allow_module_level=True)


def _env() -> dict[str, str]:
    """A fresh shell's environment: nothing points at the checkout or another prefix."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH")}
    env["PATH"] = f"{COLCON.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _copy_sources(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():  # (a file deleted in the work tree but not yet in the index)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module", params=["copy", "symlink"])
def workspace(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp(f"ws_{request.param}")
    _copy_sources(ws / "src" / PACKAGE)
    cmd = [str(COLCON), "build", "--event-handlers", "console_direct-"]
    if request.param == "symlink":
        cmd.append("--symlink-install")
    res = subprocess.run(cmd, cwd=ws, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return ws


def test_colcon_install_layout(workspace: Path) -> None:
    prefix = workspace / "install" / PACKAGE
    for exe in EXECUTABLES:
        assert os.access(prefix / "lib" / PACKAGE / exe, os.X_OK), exe
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    share = prefix / "share" / PACKAGE
    for f in ("package.xml", "launch/dual_arm.launch.py", "launch/sim_dual_arm.launch.py",
              "config/dual_arm.yaml", "config/sim_dual_arm.yaml", "models/demo_smp/policy.yaml"):
        assert (share / f).exists(), f
    launch = share / "launch" / "dual_arm.launch.py"
    assert launch.is_symlink() == workspace.name.startswith("ws_symlink")
    assert (workspace / "install" / "setup.bash").is_file()


def _sourced(workspace: Path, body: str) -> list[str]:
    return ["bash", "-c", f"set -e; source {workspace}/install/setup.bash; {body}"]


_RESOLVE = (
    "python -c 'import os; from ament_index_python.packages import get_package_prefix as g; "
    f"print(os.path.join(g(\"{PACKAGE}\"), \"lib\", \"{PACKAGE}\", \"policy_node\"))'"
)


def test_sourced_environment_finds_the_install(workspace: Path) -> None:
    out = subprocess.run(
        _sourced(workspace, f"{_RESOLVE}; python -c 'import moe_policy_ros as m; "
                            "print(m.__file__)'"),
        env=_env(), cwd=workspace, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    exe, module = out.stdout.split()
    assert Path(exe) == workspace / "install" / PACKAGE / "lib" / PACKAGE / "policy_node"
    # the sourced workspace wins over this venv's editable install of the checkout
    assert Path(module).resolve().is_relative_to(workspace), module


@pytest.mark.ros
def test_policy_node_from_the_install_comes_up_on_dds(
    workspace: Path, ros_client: RosClient, ros: ModuleType, wait_for: Callable[..., Any]
) -> None:
    from lifecycle_msgs.srv import GetState

    ns = f"/colcon_{workspace.name.split('_')[1]}_{os.getpid()}"
    log = workspace / "policy_node.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            _sourced(workspace, f'exec "$({_RESOLVE})" --ros-args -r __ns:={ns} '
                                "--log-level warn"),
            env=_env(), cwd=workspace, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        res = ros_client.call(GetState, f"{ns}/moe_policy/get_state", GetState.Request(),
                              timeout=90.0)
        assert res.current_state.label == "unconfigured"
        wait_for(lambda: ("moe_policy", ns) in ros_client.node.get_node_names_and_namespaces(),
                 10, f"moe_policy in {ns}")
    finally:
        ros.stop_process(proc, grace_s=15.0)
    assert proc.returncode in (0, -signal.SIGINT), log.read_text()
