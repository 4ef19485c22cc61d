"""`moe-policy-ros demo` (what `make demo` runs), shortened: the whole graph, then a report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ros_helpers import REPO, node_env

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]


def test_demo_runs_the_graph_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "moe_policy_ros.cli", "demo", "--duration", "6",
         "--out", str(out)],
        cwd=REPO, env=node_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for needle in ("control rate", "jitter p99", "observation-to-command latency",
                   "inference median", "Expert usage", "task success", "Result: OK"):
        assert needle in text, f"{needle!r} missing from the summary:\n{text}"
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] is True
    assert "AUTONOMY" in report["modes"]
    assert report["control"]["commands_received"] > 100
    assert report["control"]["achieved_hz_recorder"] > 25
    assert report["router"]["chunks"] > 10
    assert 1.0 <= report["router"]["mean_active_experts"] <= 8.0
    assert report["router"]["family"] == "smp"
    png = (out / "router.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "report.md").read_text().startswith("# moe_policy_ros demo report")
