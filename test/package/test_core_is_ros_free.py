"""The core must never import rclpy or a message package (house style backbone)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "moe_policy_ros" / "core"
ROS_MODULES = (
    "rclpy", "rcl_interfaces", "std_msgs", "sensor_msgs", "trajectory_msgs", "diagnostic_msgs",
    "std_srvs", "lifecycle_msgs", "builtin_interfaces", "rosgraph_msgs", "launch", "launch_ros",
    "ament_index_python", "geometry_msgs", "rosidl_runtime_py",
)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_sources_import_no_ros_module() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert files, "core/ has no Python files"
    offenders = {
        str(f.relative_to(REPO)): sorted(_imported_modules(f) & set(ROS_MODULES)) for f in files
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"core modules import ROS: {offenders}"


def test_importing_every_core_module_loads_no_ros_module() -> None:
    mods = [
        "moe_policy_ros.core." + ".".join(f.relative_to(CORE).with_suffix("").parts)
        for f in sorted(CORE.rglob("*.py"))
        if f.name != "__init__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as e:\n"
        "        print('SKIP', m, e, file=sys.stderr)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {ROS_MODULES!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"ROS modules loaded by core: {out.stdout.strip()}"
