"""Does a bundle fit the robot and cameras a parameter file describes?

One function, :func:`bundle_mismatches`, returns every mismatch at once (joint names, cameras,
image sizes), each a sentence that names the bundle's value and the parameter's, so a failed
configure lists everything to fix instead of the first problem only. The policy node and the
in-process evaluator call it before loading a backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from moe_policy_ros.core.config import CameraConfig
from moe_policy_ros.core.manifest import Manifest

__all__ = ["bundle_mismatches", "with_bundle_sizes"]


def bundle_mismatches(
    manifest: Manifest,
    robot_joints: Sequence[str],
    cameras: Sequence[CameraConfig] | None,
    bundle: str = "bundle",
) -> list[str]:
    """Every way ``manifest`` does not fit; empty when it fits.

    ``cameras`` None skips the camera checks (a caller that renders its own images at the
    bundle's size, as the in-process evaluator does).
    """
    robot = list(robot_joints)
    problems = []
    unknown = sorted({j for j in (*manifest.action.joints, *manifest.observation.proprio.joints)
                      if j not in robot})
    if unknown:
        problems.append(
            f"{bundle} uses joints {unknown} that robot.arms does not have "
            f"(robot joints: {robot})"
        )
    if cameras is None:
        return problems
    by_name = {c.name: c for c in cameras}
    for spec in manifest.observation.cameras:
        cam = by_name.get(spec.name)
        if cam is None:
            problems.append(
                f"bundle camera {spec.name!r} is not configured (cameras.names: "
                f"{sorted(by_name)})"
            )
        elif cam.width and (cam.height, cam.width) != (spec.height, spec.width):
            problems.append(
                f"cameras.{spec.name}: size {cam.width}x{cam.height} differs from the "
                f"bundle's {spec.width}x{spec.height}"
            )
    return problems


def with_bundle_sizes(cameras: Sequence[CameraConfig], manifest: Manifest) -> list[CameraConfig]:
    """``cameras`` with every size the parameters leave out (0) set to the bundle's: the
    size the node brings that camera's frames to."""
    specs = {c.name: c for c in manifest.observation.cameras}
    return [c.model_copy(update={"width": specs[c.name].width, "height": specs[c.name].height})
            if not c.width and c.name in specs else c for c in cameras]
