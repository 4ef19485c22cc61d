"""Security properties that hold by construction: no pickle, an SROS2 policy that covers the
node's interface, bundles pinned by hash."""

from __future__ import annotations

import ast
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.manifest import BundleError

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted((REPO / "moe_policy_ros").rglob("*.py"))


def test_no_pickle_anywhere() -> None:
    offenders = []
    for f in SOURCES:
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]
                if any(m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for m in mods):
                    offenders.append(f"{f.name}:{node.lineno} imports pickle")
            if isinstance(node, ast.Call):
                fn = ast.unparse(node.func)
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if fn.endswith("torch.load") and kw.get("weights_only") != "True":
                    offenders.append(f"{f.name}:{node.lineno} torch.load without weights_only")
                if fn.endswith(("np.load", "numpy.load")) and kw.get("allow_pickle") == "True":
                    offenders.append(f"{f.name}:{node.lineno} np.load(allow_pickle=True)")
    assert offenders == []


def test_checkpoints_are_loaded_with_weights_only() -> None:
    uses = [
        f for f in SOURCES
        for node in ast.walk(ast.parse(f.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load")
    ]
    assert uses, "expected the checkpoint loader to use torch.load (checked above)"


def test_sros2_policy_covers_the_policy_node_interface() -> None:
    root = ET.parse(REPO / "security" / "moe_policy_ros.policy.xml").getroot()
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    enclave = root.find("enclaves/enclave[@path='/moe_policy_ros/moe_policy']")
    assert enclave is not None
    profile = enclave.find("profiles/profile[@node='moe_policy']")
    assert profile is not None
    pubs = {t.text for t in profile.findall("topics[@publish='ALLOW']/topic")}
    subs = {t.text for t in profile.findall("topics[@subscribe='ALLOW']/topic")}
    srvs = {t.text for t in profile.findall("services[@reply='ALLOW']/service")}
    node_src = (REPO / "moe_policy_ros" / "nodes" / "policy_node.py").read_text()
    for name in re.findall(r'"(~/[a-z_/]+)"', node_src):
        assert name in pubs | srvs, f"{name} is not in the SROS2 policy"
    for topic in ("left_arm_controller/commands", "right_arm_controller/joint_trajectory",
                  "diagnostics"):
        assert topic in pubs
    assert {"joint_states", "cameras/top/image_raw", "teleop/joint_command"} <= subs


def test_pinned_manifest_hash_refuses_a_swapped_bundle(tmp_path: Path) -> None:
    a = load_bundle(REPO / "models" / "demo_adamoe")
    # pinned to demo_adamoe, but the directory now holds another (valid) bundle
    swapped = tmp_path / "demo_adamoe"
    shutil.copytree(REPO / "models" / "demo_smp", swapped)
    with pytest.raises(BundleError, match=r"policy\.yaml"):
        load_bundle(swapped, expected_sha256=a.manifest_sha256)
    assert load_bundle(REPO / "models" / "demo_adamoe",
                       expected_sha256=a.manifest_sha256).manifest.name == "demo_adamoe"


def test_bundles_ship_onnx_and_manifest_only() -> None:
    """No pickle-based file (torch checkpoint or otherwise) is tracked under models/."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "models"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    if not tracked:  # not a git checkout (an installed copy): check the files on disk
        tracked = [str(p.relative_to(REPO)) for p in (REPO / "models").rglob("*") if p.is_file()]
    allowed = (".onnx", "policy.yaml", "README.md")
    assert tracked and all(f.endswith(allowed) for f in tracked), tracked
