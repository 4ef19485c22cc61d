"""`moe-policy-ros results`: the docs table and figures from real evaluate outputs (in-process
runs of the shipped bundle) and from a dataset with phase labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moe_policy_ros.cli import main
from moe_policy_ros.data.episodes import ALOHA_JOINT_NAMES, Episode, episode_path, write_episode
from moe_policy_ros.evaluation.metrics import normalized_mutual_information

pytest.importorskip("mujoco")

REPO = Path(__file__).resolve().parents[2]


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(np.std(img)) > 0.01  # not a blank canvas


def test_results_from_evaluate_outputs_and_phases(tmp_path: Path) -> None:
    runs = []
    for name, routing in (("dense", ["--routing", "dense"]),
                          ("top1", ["--routing", "topk", "--k", "1"])):
        out = tmp_path / name
        rc = main(["evaluate", "--in-process", "--episodes", "1", "--seed-start", "1000",
                   "--max-steps", "10", "--out", str(out), "--no-progress", *routing])
        assert rc == 0
        runs.append(out)
    phases = ("reach", "grasp", "lift")
    t, j = 30, len(ALOHA_JOINT_NAMES)
    for i in range(2):
        ph = np.repeat(np.arange(3), 10).astype(np.int16)
        q = (ph[:, None] * 0.2 + np.zeros((t, j))).astype(np.float32)
        img = np.repeat((ph * 80).astype(np.uint8)[:, None, None, None], 3, axis=3)
        img = np.broadcast_to(img, (t, 96, 128, 3)).copy()
        write_episode(episode_path(tmp_path / "data", i), Episode(
            joint_names=ALOHA_JOINT_NAMES, qpos=q, action=q, images={"top": img}, fps=50.0,
            phase=ph, phase_names=phases, seed=i))
    figs = tmp_path / "figs"
    rc = main(["results", "--eval", *map(str, runs), "--phases-bundle",
               str(REPO / "models" / "demo_smp"), "--phases-data", str(tmp_path / "data"),
               "--out", str(figs)])
    assert rc == 0
    table = (figs / "results_table.md").read_text().splitlines()
    assert len(table) == 4  # header, rule, two runs
    dense = json.loads((runs[0] / "eval.json").read_text())
    assert "| dense |" in table[2] and "| top-1 |" in table[3]
    assert f"| {dense['summary']['mean_active_experts']:.2f} |" in table[2]
    assert "| 1.00 |" in table[3] and table[2].endswith("| 1000 |")
    _png_ok(figs / "success_vs_experts.png")
    _png_ok(figs / "expert_phases.png")
    doc = json.loads((figs / "phases.json").read_text())
    dom = [d for e in doc["episodes"] for d in e["dominant"]]
    ph = [p for e in doc["episodes"] for p in e["phase"]]
    assert len(dom) == 2 * 6  # every 5th of 30 steps, two episodes
    assert doc["nmi"] == pytest.approx(normalized_mutual_information(dom, ph))
    assert doc["phase_names"] == list(phases)


def test_results_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "eval.json"
    bad.write_text(json.dumps({"task": "transfer_cube"}))
    assert main(["results", "--eval", str(bad), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'summary'" in err
