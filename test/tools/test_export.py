"""`moe-policy-ros export` (:mod:`moe_policy_ros.tools.export`): flags -> a fresh model's
bundle, then the same model again from its checkpoint with other routing flags."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest

pytest.importorskip("torch")

from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.tools import export


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_family_then_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    size = (
        "--context-dim 32 --expert-hidden 16 --trunk-layers 1 --trunk-heads 2 "
        "--vision-channels 4 --chunk-length 4 --camera wrist:16x16 --top-k 1"
    ).split()
    args = parser.parse_args(
        ["--family", "dibm", "--experts", "3", "--out", str(tmp_path / "a"),
         "--save-checkpoint", str(tmp_path / "a.pt"), *size]
    )
    assert export.run(args) == 0
    assert "parity max abs error" in capsys.readouterr().out
    m = read_manifest(tmp_path / "a")
    assert m.name == "a" and m.experts.count == 3 and m.routing.k == 1
    assert m.observation.cameras[0].name == "wrist" and m.observation.cameras[0].height == 16
    args = parser.parse_args(
        ["--checkpoint", str(tmp_path / "a.pt"), "--out", str(tmp_path / "b"),
         "--name", "again", "--routing", "mass", "--tau", "0.7"]
    )  # fmt: skip
    assert export.run(args) == 0
    m2 = read_manifest(tmp_path / "b")
    assert m2.name == "again" and m2.routing.strategy == "mass" and m2.routing.tau == 0.7
    assert m2.provenance.source.endswith("a.pt") and m2.experts.count == 3
    assert m.provenance.checkpoint_sha256 == _sha(tmp_path / "a.pt")
    assert m2.provenance.checkpoint_sha256 == _sha(tmp_path / "a.pt")
    # the AdaMoE weighting variant is a named option and lands in the manifest
    args = parser.parse_args(
        ["--family", "adamoe", "--experts", "2", "--adamoe-weighting", "adapter_sigmoid",
         "--out", str(tmp_path / "v"), *size]
    )  # fmt: skip
    assert export.run(args) == 0
    assert read_manifest(tmp_path / "v").combination == "adapter"
