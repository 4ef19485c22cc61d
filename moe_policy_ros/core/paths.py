"""The one resolver of package-relative paths (config files, bundles, the DDS profile).

A relative path is looked up in the source checkout first (the folder holding
``package.xml`` above this package), then in the package's installed share directory: the
``share/moe_policy_ros`` of the first ``AMENT_PREFIX_PATH`` prefix that registers the package
in its ament resource index (what ``ament_index_python.get_package_share_directory`` finds;
the core imports no ROS module, so it reads the index itself).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PACKAGE", "package_file", "resolve_share_path", "share_dir", "source_root"]

PACKAGE = "moe_policy_ros"


def source_root() -> Path | None:
    """The source checkout this package runs from, or None (an installed package)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "package.xml").is_file() else None


def share_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The installed share directory the ament index finds for the package, or None."""
    env = os.environ if env is None else env
    for prefix in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and (
            Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
        ).is_file():
            return Path(prefix) / "share" / PACKAGE
    return None


def package_file(relative: str | Path, env: Mapping[str, str] | None = None) -> Path | None:
    """``relative`` in the source checkout, else in the installed share; None if in neither."""
    for base in (source_root(), share_dir(env)):
        if base is not None and (base / relative).exists():
            return base / relative
    return None


def resolve_share_path(relative: str | Path) -> Path:
    """A path as the nodes resolve ``policy.bundle`` and other file parameters: absolute as
    given, then relative to the working directory, then :func:`package_file`; a path found
    nowhere comes back unchanged (its reader names it in the error)."""
    p = Path(relative).expanduser()
    if p.is_absolute():
        return p
    if p.exists():
        return p.resolve()
    return package_file(p) or p
