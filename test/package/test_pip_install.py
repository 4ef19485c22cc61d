"""`pip install .` and `pip install -e .` lay the package out the way `ros2 run` and launch_ros
look for it, in a fresh virtual environment.

The venv is made without pip and sees this environment's site-packages through a plain
``.pth`` path line (rclpy, numpy, ... are not reinstalled: fast and offline); the package
itself is installed into it with ``--no-deps``. Every executable the launch files can start
(``graph.node_graph`` of the shipped files plus a ``realsense_<camera>`` section) is then
resolved through ``ament_index_python`` exactly as launch_ros' ``ExecutableInPackage`` and
``ros2 run`` do (``get_package_prefix(pkg)/lib/<pkg>/<executable>``, executable bit), and
started from that path until it shows up as a node on DDS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from helpers import REPO

from moe_policy_ros.graph import node_graph, read_params_doc

if TYPE_CHECKING:
    from helpers.ros import RosClient

pytestmark = [pytest.mark.slow]

PACKAGE = "moe_policy_ros"


def _launch_executables() -> set[str]:
    doc = read_params_doc(REPO / "config" / "sim_dual_arm.yaml")
    doc["realsense_top"] = {"ros__parameters": {"source": "software"}}
    return {s.executable for s in node_graph(doc)}


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user of ``venv``: no PYTHONPATH to the checkout, its prefix in
    AMENT_PREFIX_PATH, its bin/ on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env["AMENT_PREFIX_PATH"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


@pytest.fixture(scope="module", params=["plain", "editable"])
def venv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(f"venv_{request.param}")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python3*/site-packages"))
    (site / "_moe_policy_ros_test_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cmd = [sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
           "-q", "--no-deps", "--no-build-isolation"]
    cmd += ["-e", str(REPO)] if request.param == "editable" else [str(REPO)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(root))
    assert res.returncode == 0, res.stdout + res.stderr
    return root


def _in_venv(venv: Path, code: str) -> str:
    res = subprocess.run([str(venv / "bin" / "python"), "-c", code], env=_clean_env(venv),
                         cwd=venv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_layout_share_index_and_console_scripts(venv: Path) -> None:
    share = venv / "share" / PACKAGE
    assert (venv / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (share / "package.xml").is_file()
    for f in ("launch/dual_arm.launch.py", "launch/sim_dual_arm.launch.py",
              "config/dual_arm.yaml", "config/sim_dual_arm.yaml",
              "rqt/moe_policy.perspective", "models/demo_smp/policy.yaml"):
        assert (share / f).is_file(), f
    for exe in ("moe-policy-ros", *sorted(_launch_executables())):
        assert os.access(venv / "bin" / exe, os.X_OK), f"console script {exe} missing"
    # the imported package is the one installed in this venv (editable: the checkout)
    where = Path(_in_venv(venv, "import moe_policy_ros; print(moe_policy_ros.__file__)").strip())
    if "editable" in venv.name:
        assert where == REPO / PACKAGE / "__init__.py"
    else:
        assert where.is_relative_to(venv), where
    # the CLI on PATH works as the README says
    res = subprocess.run([str(venv / "bin" / "moe-policy-ros"), "inspect",
                          str(REPO / "models" / "demo_adamoe")], env=_clean_env(venv),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "demo_adamoe" in res.stdout


def test_launch_executables_resolve_through_the_ament_index(venv: Path) -> None:
    wanted = _launch_executables()
    assert wanted == {"policy_node", "aloha_sim", "realsense_camera"}
    # launch_ros ExecutableInPackage / ros2 run: package prefix + lib/<package>/<executable>
    code = (
        "import os\n"
        "from ament_index_python.packages import get_package_prefix\n"
        f"prefix = get_package_prefix({PACKAGE!r})\n"
        "print(prefix)\n"
        f"d = os.path.join(prefix, 'lib', {PACKAGE!r})\n"
        "for f in sorted(os.listdir(d)):\n"
        "    p = os.path.join(d, f)\n"
        "    print(p if os.path.isfile(p) and os.access(p, os.X_OK) else '')\n"
    )
    prefix, *paths = _in_venv(venv, code).split("\n")
    assert Path(prefix) == venv
    found = {Path(p).name: Path(p) for p in paths if p}
    assert set(found) == wanted, f"lib/{PACKAGE}/ has {sorted(found)}"


@pytest.mark.ros
@pytest.mark.parametrize("exe", ["policy_node", "aloha_sim", "realsense_camera"])
def test_each_executable_starts_from_its_lib_path(
    venv: Path, exe: str, ros_client: RosClient, ros: ModuleType, wait_for: Callable[..., Any]
) -> None:
    if exe == "aloha_sim" and "editable" in venv.name:
        pytest.skip("aloha_sim started from the plain install already (MuJoCo start is slow)")
    path = venv / "lib" / PACKAGE / exe
    ns = f"/pipcheck_{venv.name.split('_')[1]}_{os.getpid()}"
    args = ["--ros-args", "-r", f"__ns:={ns}", "--log-level", "warn"]
    if exe == "realsense_camera":
        args += ["-p", "source:=software"]
    proc = subprocess.Popen([str(path), *args], env=_clean_env(venv), cwd=venv,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{exe} exited {proc.returncode}: "
                                     f"{proc.stdout.read().decode() if proc.stdout else ''}")
            return any(n == ns for _name, n in ros_client.node.get_node_names_and_namespaces())

        wait_for(up, 90, f"{exe} from {path} to appear on DDS in {ns}", poll=0.2)
    finally:
        ros.stop_process(proc, grace_s=15.0)
    assert proc.returncode in (0, -signal.SIGINT), proc.returncode
