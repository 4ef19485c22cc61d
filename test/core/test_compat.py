"""core.compat.bundle_mismatches: every mismatch between a bundle and the parameters."""

from __future__ import annotations

from pathlib import Path

from moe_policy_ros.core.compat import bundle_mismatches
from moe_policy_ros.core.config import load_config
from moe_policy_ros.core.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]


def test_shipped_bundle_fits_the_sim_parameters() -> None:
    """make demo's file and the bundle it names agree (joints, cameras, sizes)."""
    cfg = load_config(REPO / "config" / "sim_dual_arm.yaml")
    manifest = read_manifest(REPO / cfg.policy.bundle)
    assert bundle_mismatches(manifest, cfg.robot.joint_names, cfg.cameras) == []
    # and the dual-arm file with its own bundle
    cfg = load_config(REPO / "config" / "dual_arm.yaml")
    manifest = read_manifest(REPO / cfg.policy.bundle)
    assert bundle_mismatches(manifest, cfg.robot.joint_names, cfg.cameras) == []


def test_every_mismatch_is_reported_with_both_values() -> None:
    cfg = load_config(REPO / "config" / "sim_dual_arm.yaml")
    manifest = read_manifest(REPO / "models" / "demo_adamoe")
    spec = manifest.observation.cameras[0]
    wrong_size = cfg.cameras[0].model_copy(
        update={"name": spec.name, "width": spec.width + 2, "height": spec.height}
    )
    robot = [j for j in cfg.robot.joint_names if j != manifest.action.joints[0]]
    problems = bundle_mismatches(manifest, robot, [wrong_size], "bundle X")
    assert len(problems) == 1 + len(manifest.observation.cameras)
    assert problems[0].startswith(f"bundle X uses joints ['{manifest.action.joints[0]}']")
    assert f"size {spec.width + 2}x{spec.height} differs from the bundle's " \
           f"{spec.width}x{spec.height}" in problems[1]
    for other in manifest.observation.cameras[1:]:
        assert any(f"bundle camera {other.name!r} is not configured" in p for p in problems)


def test_camera_checks_can_be_skipped() -> None:
    cfg = load_config(REPO / "config" / "sim_dual_arm.yaml")
    manifest = read_manifest(REPO / "models" / "demo_adamoe")
    assert bundle_mismatches(manifest, cfg.robot.joint_names, None) == []
    assert bundle_mismatches(manifest, cfg.robot.joint_names, []) != []


def test_a_file_without_a_camera_size_takes_the_bundle_s_and_a_set_one_is_checked() -> None:
    """dual_arm.yaml leaves the size out: the untrained demo bundle (128x96) and a trained
    one (160x120) both fit it; the same file with a size set refuses the other one."""
    cfg = load_config(REPO / "config" / "dual_arm.yaml")
    assert cfg.cameras[0].width == cfg.cameras[0].height == 0
    for name in ("demo_adamoe", "tc_adamoe"):
        manifest = read_manifest(REPO / "models" / name)
        assert bundle_mismatches(manifest, cfg.robot.joint_names, cfg.cameras) == [], name
    sized = [cfg.cameras[0].model_copy(update={"width": 128, "height": 96})]
    (problem,) = bundle_mismatches(read_manifest(REPO / "models" / "tc_adamoe"),
                                   cfg.robot.joint_names, sized)
    assert "128x96 differs from the bundle's 160x120" in problem


def test_a_camera_size_is_both_or_neither() -> None:
    import pytest

    from moe_policy_ros.core.config import CameraConfig

    with pytest.raises(ValueError, match="width 128 and height 0"):
        CameraConfig(name="top", topic="/t", width=128)
