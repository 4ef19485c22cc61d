"""Layering rules that hold: the core imports no ROS and no models/, models/ imports no
tools/ and no ROS, backends get the bundle, ROS outside nodes/ goes through one session
module."""

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


def _imports_anywhere(path: Path) -> set[str]:
    """Every module a file imports, at any depth (also inside functions), in full."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_core_never_imports_models() -> None:
    """The torch backend gets its model loader injected (moe_policy_ros.backend_factory)."""
    offenders = {
        str(f.relative_to(REPO)): sorted(m for m in _imports_anywhere(f)
                                         if m.startswith("moe_policy_ros.models"))
        for f in sorted(CORE.rglob("*.py"))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"core modules import models/: {offenders}"


def test_models_import_neither_tools_nor_ros() -> None:
    """models/ is the torch library (families, losses, the exporter): the command line that
    drives it lives in tools/ (``moe-policy-ros export``: tools/export.py), and it never
    talks ROS, so it runs on a training machine without either."""
    models = REPO / "moe_policy_ros" / "models"
    files = sorted(models.rglob("*.py"))
    assert files, "models/ has no Python files"
    offenders = {
        str(f.relative_to(REPO)): sorted(m for m in _imports_anywhere(f)
                                         if m.startswith("moe_policy_ros.tools")
                                         or m.split(".")[0] in ROS_MODULES)
        for f in files
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"models/ modules import tools/ or ROS: {offenders}"


def test_backends_never_look_for_the_bundle_on_disk() -> None:
    """Backend.load_stage receives the verified bundle: no backend loads or finds one."""
    banned = ("moe_policy_ros.core.bundle.load_bundle", "moe_policy_ros.core.manifest",
              "policy.yaml", "bundle_dir_of", "read_manifest")
    offenders = {}
    for f in sorted((CORE / "backends").glob("*.py")):
        text = f.read_text()
        hits = [b for b in banned if b in text or b in _imports_anywhere(f)]
        if hits:
            offenders[f.name] = hits
    assert not offenders, f"backends that find bundles themselves: {offenders}"


def test_ros_outside_nodes_goes_through_the_session_module() -> None:
    """Outside nodes/, nothing imports rclpy or nodes/ internals: moe_policy_ros.session is
    the one public module for talking ROS (message types are imported where used)."""
    package = REPO / "moe_policy_ros"
    session = package / "session.py"
    offenders = {}
    for f in sorted(package.rglob("*.py")):
        if f == session or (package / "nodes") in f.parents:
            continue
        bad = sorted(m for m in _imports_anywhere(f)
                     if m.split(".")[0] == "rclpy" or m.startswith("moe_policy_ros.nodes"))
        if bad:
            offenders[str(f.relative_to(REPO))] = bad
    assert not offenders, f"ROS outside nodes/ not through moe_policy_ros.session: {offenders}"


def test_no_module_imports_another_modules_private_names() -> None:
    """Modules share public functions (e.g. the demo starts the graph through up's
    start_graph/bring_up), never another module's ``_private`` names."""
    package = REPO / "moe_policy_ros"
    offenders = {}
    for f in sorted(package.rglob("*.py")):
        tree = ast.parse(f.read_text(), filename=str(f))
        bad = [
            f"{node.module}.{a.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("moe_policy_ros")
            for a in node.names
            if a.name.startswith("_") and not a.name.startswith("__")
            and a.name != "_requirements"  # the package's own import-time version gate
        ]
        if bad:
            offenders[str(f.relative_to(REPO))] = bad
    assert not offenders, f"imports of private names: {offenders}"


def test_no_test_imports_another_test_file() -> None:
    """Shared test helpers live in the test/helpers package and reach tests as fixtures
    (test/conftest.py); no file under test/ imports a test module, a conftest or a module
    loose in a test folder."""
    tests = REPO / "test"
    helpers = tests / "helpers"
    local = {f.stem for f in tests.rglob("*.py") if helpers not in f.parents}
    local |= {d.name for d in tests.iterdir() if d.is_dir() and d != helpers}
    offenders = {}
    for f in sorted(tests.rglob("*.py")):
        bad = sorted(m for m in _imports_anywhere(f) if m.split(".")[0] in local)
        if bad:
            offenders[str(f.relative_to(REPO))] = bad
    assert not offenders, f"imports of other test files: {offenders}"
    loose = sorted(str(f.relative_to(REPO)) for f in tests.rglob("*.py")
                   if helpers not in f.parents
                   and not f.name.startswith("test_") and f.name != "conftest.py")
    assert not loose, f"modules outside test/helpers that are neither tests nor conftest: {loose}"
