"""`moe-policy-ros demo` (what `make demo` runs), shortened: two whole episodes through the
graph with a sim reset between them, then the report, the router plot and a decodable video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]


def test_demo_runs_the_graph_and_writes_the_report(
    tmp_path: Path, node_env: dict[str, str]
) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "moe_policy_ros.cli", "demo", "--episodes", "2",
         "--max-steps", "150", "--out", str(out)],
        cwd=REPO, env=node_env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for needle in ("control rate", "jitter p99", "observation-to-command latency",
                   "inference median", "Expert usage", "task success (episodes)", "Result: OK",
                   "[demo] episode 1/2 seed 1000:", "[demo] episode 2/2 seed 1001:",
                   "| 2 | 1001 |", "demo.mp4"):
        assert needle in text, f"{needle!r} missing from the summary:\n{text}"
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] is True
    assert report["modes"].count("AUTONOMY") == 2  # engaged once per episode
    assert [e["seed"] for e in report["episodes"]] == [1000, 1001]
    # Each episode ran under autonomy; on a loaded machine the node may hold on its own
    # (stale inputs), which the report names; nothing else may go wrong.
    for e in report["episodes"]:
        assert e["steps"] >= 1
        assert e["error"] == "" or e["error"].startswith("policy node left AUTONOMY for HOLD")
        assert "stopped publishing" not in e["error"]
    assert report["task"]["episodes"] == 2
    assert report["control"]["commands_received"] > 100
    assert report["control"]["achieved_hz_recorder"] > 25
    assert report["router"]["chunks"] > 10
    assert 1.0 <= report["router"]["mean_active_experts"] <= 8.0
    assert report["router"]["family"] == _default_bundle_family()
    png = (out / "router.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "report.md").read_text().startswith("# moe_policy_ros demo report")
    import cv2

    from moe_policy_ros.evaluation.video import count_frames

    video = out / "demo.mp4"
    assert report["video"] == str(video)
    frames = count_frames(video)
    assert frames == report["video_frames"] and frames >= 30  # >= 2 s of camera at 15 fps
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (360, 480, 3)  # 640x480 camera scaled to 480 wide


def _default_bundle_family() -> str:
    """The family of the bundle make demo's parameter file names."""
    from moe_policy_ros.core.config import load_config
    from moe_policy_ros.core.manifest import read_manifest

    cfg = load_config(REPO / "config" / "sim_dual_arm.yaml")
    return str(read_manifest(REPO / cfg.policy.bundle).family)
