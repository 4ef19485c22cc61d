"""Expert names from demonstration phases: the assignment, the NMI gate, and the exporter's
``--expert-labels-from-phases`` writing a bundle that loads and names its experts."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.data.episodes import ALOHA_JOINT_NAMES, Episode, episode_path, write_episode
from moe_policy_ros.evaluation.phases import EpisodeRouting, PhaseAlignment, router_on_dataset

PHASES = ("reach", "grasp", "lift", "hand_over")


def alignment(dominant: list[int], phase: list[int], experts: int = 4) -> PhaseAlignment:
    ep = EpisodeRouting(index=0, seed=0, steps=list(range(len(phase))), dominant=dominant,
                        active=[[d] for d in dominant], phase=phase)
    return PhaseAlignment(tuple(f"skill_{i}" for i in range(experts)), PHASES, [ep])


def test_each_expert_is_named_after_the_phase_it_dominates() -> None:
    phase = [0] * 40 + [1] * 10 + [2] * 30 + [3] * 20
    # skill_2 reaches, skill_0 grasps (short phase), skill_3 lifts and hands over mostly,
    # skill_1 never dominates.
    dominant = [2] * 38 + [3] * 2 + [0] * 9 + [2] + [3] * 30 + [3] * 14 + [0] * 6
    labels, reason = alignment(dominant, phase).expert_labels()
    assert labels == ("grasp", "skill_1", "reach", "lift")
    assert reason.startswith("NMI") and ">=" in reason


def test_two_experts_on_one_phase_get_distinct_names() -> None:
    phase = [0] * 20 + [1] * 20
    dominant = [0] * 10 + [1] * 10 + [2] * 20
    labels, _ = alignment(dominant, phase).expert_labels(min_nmi=0.0)
    assert labels[2] == "grasp" and sorted(labels[:2]) == ["reach", "reach_2"]
    assert len(set(labels)) == 4


def test_no_alignment_keeps_the_labels_and_says_why() -> None:
    phase = [0, 1, 2, 3] * 25
    dominant = [0, 0, 0, 0, 1, 1, 1, 1] * 12 + [0] * 4  # independent of the phase
    a = alignment(dominant, phase)
    labels, reason = a.expert_labels()
    assert labels == a.expert_names
    assert f"NMI {a.nmi:.2f}" in reason and "below 0.3" in reason and "labels kept" in reason


def _dataset(root: Path, episodes: int = 3, t: int = 30) -> Path:
    rng = np.random.default_rng(0)
    j = len(ALOHA_JOINT_NAMES)
    for i in range(episodes):
        phase = np.minimum(np.arange(t) * len(PHASES) // t, len(PHASES) - 1).astype(np.int16)
        qpos = (phase[:, None] * 0.3 + rng.normal(0, 0.01, size=(t, j))).astype(np.float32)
        img = np.zeros((t, 24, 32, 3), np.uint8)
        img[:] = (phase[:, None, None, None] * 60).astype(np.uint8)
        write_episode(episode_path(root, i), Episode(
            joint_names=ALOHA_JOINT_NAMES, qpos=qpos, action=qpos.copy(),
            images={"top": img}, fps=50.0, phase=phase, phase_names=PHASES, seed=i,
        ))
    return root


def test_export_names_experts_from_phases_and_the_bundle_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from moe_policy_ros.tools import export

    data = _dataset(tmp_path / "data")
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    size = ("--context-dim 32 --expert-hidden 16 --trunk-layers 1 --trunk-heads 2 "
            "--vision-channels 4 --chunk-length 4 --camera top:12x16").split()
    common = ["--family", "smp", "--experts", "4", *size,
              "--expert-labels-from-phases", str(data)]
    # An NMI gate no alignment can pass: the labels stay and the reason is printed.
    assert export.run(parser.parse_args(
        [*common, "--out", str(tmp_path / "kept"), "--phase-min-nmi", "1.01"])) == 0
    assert "labels kept" in capsys.readouterr().out
    assert read_manifest(tmp_path / "kept").experts.labels == tuple(
        f"skill_{i}" for i in range(4))
    # No gate: every expert that dominates somewhere is named after its phase.
    assert export.run(parser.parse_args(
        [*common, "--out", str(tmp_path / "named"), "--phase-min-nmi", "0"])) == 0
    assert "experts named after the phases" in capsys.readouterr().out
    want, _ = router_on_dataset(tmp_path / "named", data).expert_labels(0.0)
    m = load_bundle(tmp_path / "named").manifest  # still a valid, verified bundle
    assert m.experts.labels == want
    named = [lbl for lbl in want if not lbl.startswith("skill_")]
    assert named and all(re.sub(r"_\d+$", "", lbl) in PHASES for lbl in named), want
    assert "Expert labels from the phases of data" in m.provenance.notes


def test_a_dataset_without_phases_is_an_error_naming_the_file(tmp_path: Path) -> None:
    t, j = 5, len(ALOHA_JOINT_NAMES)
    q = np.zeros((t, j), np.float32)
    write_episode(episode_path(tmp_path, 0), Episode(
        joint_names=ALOHA_JOINT_NAMES, qpos=q, action=q,
        images={"top": np.zeros((t, 96, 128, 3), np.uint8)}, fps=50.0))
    with pytest.raises(ValueError, match=r"episode_0\.hdf5: no 'phase' labels"):
        router_on_dataset(Path(__file__).resolve().parents[2] / "models" / "demo_smp",
                          tmp_path)
