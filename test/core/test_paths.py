"""core.paths: one resolver for package-relative files (checkout first, then the share the
ament index names), on real folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moe_policy_ros.core.paths import (
    PACKAGE,
    package_file,
    resolve_share_path,
    share_dir,
    source_root,
)

REPO = Path(__file__).resolve().parents[2]


def _prefix(root: Path, registered: bool = True) -> Path:
    """An install prefix with share/moe_policy_ros/ (and its ament index marker)."""
    (root / "share" / PACKAGE / "only_in_share").mkdir(parents=True)
    (root / "share" / PACKAGE / "only_in_share" / "x.yaml").write_text("a: 1\n")
    if registered:
        marker = root / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
        marker.parent.mkdir(parents=True)
        marker.write_text("")
    return root


def test_the_checkout_comes_first() -> None:
    assert source_root() == REPO
    assert package_file("config/sim_dual_arm.yaml") == REPO / "config" / "sim_dual_arm.yaml"


def test_share_dir_is_the_first_registered_prefix(tmp_path: Path) -> None:
    unregistered = _prefix(tmp_path / "a", registered=False)
    registered = _prefix(tmp_path / "b")
    env = {"AMENT_PREFIX_PATH": os.pathsep.join(["", str(unregistered), str(registered)])}
    assert share_dir(env) == registered / "share" / PACKAGE
    assert package_file("only_in_share/x.yaml", env) == (
        registered / "share" / PACKAGE / "only_in_share" / "x.yaml")
    assert share_dir({"AMENT_PREFIX_PATH": str(unregistered)}) is None
    assert share_dir({}) is None
    assert package_file("only_in_share/x.yaml", {}) is None


def test_resolve_share_path_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = _prefix(tmp_path / "prefix")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.chdir(tmp_path)
    assert resolve_share_path(str(tmp_path / "abs.yaml")) == tmp_path / "abs.yaml"  # as given
    (tmp_path / "here.yaml").write_text("")
    assert resolve_share_path("here.yaml") == (tmp_path / "here.yaml").resolve()
    assert resolve_share_path("models/demo_adamoe") == REPO / "models" / "demo_adamoe"
    assert resolve_share_path("only_in_share/x.yaml") == (
        prefix / "share" / PACKAGE / "only_in_share" / "x.yaml")
    assert resolve_share_path("nowhere/x.yaml") == Path("nowhere/x.yaml")  # the reader names it
