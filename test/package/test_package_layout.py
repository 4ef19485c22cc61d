"""The ament_python layout, and `pip install .` into a prefix that ament_index finds."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_package_xml_is_format_3_with_required_dependencies() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "moe_policy_ros"
    execs = {e.text for e in root.findall("exec_depend")}
    for dep in (
        "rclpy", "sensor_msgs", "std_msgs", "std_srvs", "trajectory_msgs", "diagnostic_msgs",
        "python3-numpy", "python3-yaml", "python3-pydantic",
    ):
        assert dep in execs, f"package.xml lacks exec_depend {dep}"
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}
    assert root.findtext("export/build_type") == "ament_python"


def test_versions_agree() -> None:
    xml_version = ET.parse(REPO / "package.xml").getroot().findtext("version")
    assert f'version="{xml_version}"' in (REPO / "setup.py").read_text()


def test_layout_directories_exist() -> None:
    for d in ("moe_policy_ros/core", "moe_policy_ros/nodes", "launch", "config", "models",
              "test", "resource"):
        assert (REPO / d).is_dir(), d
    assert (REPO / "resource" / "moe_policy_ros").is_file()
    assert "script_dir=$base/lib/moe_policy_ros" in (REPO / "setup.cfg").read_text()


@pytest.mark.slow
def test_pip_install_into_prefix_is_found_by_ament_index(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--prefix", str(prefix), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    site = next(prefix.glob("lib/python3*/site-packages"))
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "PYTHONPATH": str(site)}
    code = (
        "from ament_index_python.packages import get_package_share_directory as g\n"
        "import moe_policy_ros, pathlib\n"
        "share = pathlib.Path(g('moe_policy_ros'))\n"
        "print(share)\n"
        "print(pathlib.Path(moe_policy_ros.__file__).parent)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        check=True,
    )
    share_line, pkg_line = out.stdout.split()
    share = Path(share_line)
    assert share == prefix / "share" / "moe_policy_ros"
    assert Path(pkg_line).is_relative_to(prefix), "imported the source tree, not the install"
    assert (share / "package.xml").is_file()
    assert (share / "config" / "dual_arm.yaml").is_file()
    for launch in ("dual_arm.launch.py", "sim_dual_arm.launch.py"):
        assert (share / "launch" / launch).is_file()
    manifests = list((share / "models").rglob("policy.yaml"))
    assert manifests, "bundled models were not installed"
    for exe in ("policy_node", "aloha_sim", "realsense_camera", "moe-policy-ros"):
        assert (prefix / "bin" / exe).is_file(), f"console script {exe} missing"
    # where ros2 run / launch_ros look (test_pip_install.py starts them from there)
    for exe in ("policy_node", "aloha_sim", "realsense_camera"):
        launcher = prefix / "lib" / "moe_policy_ros" / exe
        assert os.access(launcher, os.X_OK), f"lib/moe_policy_ros/{exe} missing"
        assert f"/bin/{exe}" in launcher.read_text()
