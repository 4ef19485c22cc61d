"""`moe-policy-ros evaluate --in-process`: the real sim and the real runtime, no ROS; the
Wilson interval; an episode that fails inside is a failure with its cause."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moe_policy_ros.core.config import load_config
from moe_policy_ros.rollout import (
    EpisodeResult,
    InProcessRunner,
    LoopSettings,
    default_params_file,
    resolve_bundle,
    summarize,
    wilson_interval,
)

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^success: (\d+)/(\d+) \((\d+)%, 95% CI (\d+)-(\d+)%\)$")


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(40, 50) == pytest.approx((0.6696, 0.8876), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k=3, n=2"):
        wilson_interval(3, 2)


def test_summary_line_and_statistics() -> None:
    results = [
        EpisodeResult(seed=1, success=True, chunks=2, mean_active_experts=2.0, switches=1,
                      latencies_ms=[1.0, 3.0]),
        EpisodeResult(seed=2, success=False, chunks=2, mean_active_experts=1.0, switches=3,
                      latencies_ms=[2.0, 2.0], error="TimeoutError: x"),
    ]
    s = summarize(results)
    assert s.line() == "success: 1/2 (50%, 95% CI 9-91%)"
    assert s.mean_active_experts == 1.5 and s.switches_per_episode == 2.0
    assert s.latency_ms_p50 == 2.0 and s.errors == 1


def test_evaluate_in_process_end_to_end_without_torch(tmp_path: Path) -> None:
    """The default bundle (make demo's) through the CLI on one short episode, in a process
    that must never import torch or rclpy."""
    code = (
        "import sys\n"
        "from moe_policy_ros.cli import main\n"
        f"rc = main(['evaluate', '--in-process', '--episodes', '1', '--seed-start', '1000',"
        f" '--max-steps', '12', '--out', {str(tmp_path)!r}, '--no-progress'])\n"
        "assert rc == 0, rc\n"
        "heavy = [m for m in ('torch', 'rclpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-1]
    m = LINE.match(last)
    assert m, last
    assert m.group(2) == "1"
    doc = json.loads((tmp_path / "eval.json").read_text())
    bundle = resolve_bundle(load_config(default_params_file()).policy.bundle,
                            default_params_file())
    assert doc["bundle"] == str(bundle) and doc["seeds"] == [1000]
    ep = doc["episodes"][0]
    assert ep["steps"] == 12 and ep["chunks"] == 3  # inference every 5 steps at 50/10 Hz
    assert ep["error"] == "" and ep["engaged_step"] is not None
    assert doc["summary"]["line"] == last
    for key in ("mean_active_experts", "switches_per_episode", "latency_ms_p50",
                "latency_ms_p99"):
        assert doc["summary"][key] is not None, key


def test_an_episode_that_fails_inside_is_a_failure_with_its_cause() -> None:
    params = default_params_file()
    cfg = load_config(params)
    bundle = resolve_bundle(cfg.policy.bundle, params)
    settings = LoopSettings(max_steps=5, render_size=(96, 128), episode_timeout_s=1e-9)
    with InProcessRunner(bundle, "transfer_cube", cfg, settings=settings) as runner:
        res = runner.run(1000)
        assert not res.success and "TimeoutError" in res.error and "budget" in res.error
        runner.settings = LoopSettings(max_steps=5, render_size=(96, 128))
        ok = runner.run(1000)  # the runner is still usable after a failed episode
        assert ok.error == "" and ok.steps == 5


def test_evaluate_without_a_mode_says_what_to_pass() -> None:
    from moe_policy_ros.cli import main

    assert main(["evaluate", "--episodes", "1"]) == 2
