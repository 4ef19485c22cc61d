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
    # make demo's frame trigger: one chunk per 15 Hz camera frame (ceiling 20 Hz), frames at
    # 0, 67, 133 and 200 ms of the 240 ms episode
    assert ep["steps"] == 12 and ep["chunks"] == 4
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


def test_replay_without_in_process_says_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe_policy_ros.cli import main

    assert main(["evaluate", "--episodes", "1", "--replay", str(tmp_path)]) == 2
    assert "--replay needs --in-process" in capsys.readouterr().err
    assert main(["evaluate", "--episodes", "1", "--settle-s", "0.3"]) == 2
    assert "--settle-s 0.3 needs --in-process" in capsys.readouterr().err


def test_a_settled_start_reaches_the_in_process_episode() -> None:
    """LoopSettings.settle_s: the episode's first observation shows the cube at rest on the
    table, not 3 cm above it."""
    params = default_params_file()
    cfg = load_config(params)
    bundle = resolve_bundle(cfg.policy.bundle, params)
    with pytest.raises(ValueError, match="settle_s"):
        LoopSettings(settle_s=-1.0)
    heights = {}
    for settle in (0.0, 0.3):
        settings = LoopSettings(max_steps=5, render_size=(96, 128), settle_s=settle)
        with InProcessRunner(bundle, "transfer_cube", cfg, settings=settings) as runner:
            assert runner.run(1000).error == ""
            runner.sim.reset(1000)
            heights[settle] = runner.sim.object_qpos()[2]
    assert heights[0.0] == pytest.approx(0.05) and heights[0.3] < 0.025


def test_a_scripted_demonstration_succeeds_through_the_control_path(tmp_path: Path) -> None:
    """The script's commands, chunked like a policy's and sent through the node's scheduler,
    arbiter (engage blend) and safety filter with make demo's parameters, still solve the
    task: what the replay cannot do, no policy trained on the demonstrations could."""
    import numpy as np

    from moe_policy_ros.data import scripted
    from moe_policy_ros.data.episodes import ALOHA_JOINT_NAMES, Episode, write_episode, write_meta
    from moe_policy_ros.rollout import ReplayRunner

    plan = scripted.plan("transfer_cube", 3, steps=400)
    n = plan.actions.shape[0]
    write_episode(
        tmp_path / "episode_0.hdf5",
        Episode(ALOHA_JOINT_NAMES, np.zeros((n, 14), np.float32),
                plan.actions.astype(np.float32), {"top": np.zeros((n, 8, 8, 3), np.uint8)},
                50.0, task="transfer_cube", seed=3),
    )
    write_meta(tmp_path, {"task": "transfer_cube", "episodes": [
        {"file": "episode_0.hdf5", "seed": 3}]})
    cfg = load_config(default_params_file())
    with ReplayRunner(tmp_path, "transfer_cube", cfg) as runner:
        res = runner.run(3)
        # chunk of step 0 starts at step 1; engage is asked after tick 1, AUTONOMY from tick 2
        assert res.error == "" and res.engaged_step == 2, res.error
        assert res.success and res.success_step is not None
        # chunks cut from one smooth recording: the switches between them (seams) move the
        # command no more than the steps inside a chunk do
        seams, steps = np.array(res.seam_jumps_mrad), np.array(res.step_jumps_mrad)
        assert len(seams) > 50 and len(steps) > 50
        assert np.percentile(seams, 99) <= 1.1 * np.percentile(steps, 99)
        assert np.median(seams) <= 1.1 * np.median(steps)
        missing = runner.run(4)
    assert not missing.success and "no episode recorded from seed 4" in missing.error


def test_in_process_routing_is_the_nodes(tmp_path: Path) -> None:
    """--in-process routes as the policy node does: the policy.routing fields the parameter
    file sets over the bundle's default (core.runtime.merge_routing; fields the file leaves
    out stay the bundle's, as in the node), then --routing/--k/--tau."""
    import argparse

    from moe_policy_ros.core.runtime import merge_routing
    from moe_policy_ros.tools.evaluate import add_arguments, make_runner

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    params = default_params_file()
    cfg = load_config(params)
    bundle = resolve_bundle(cfg.policy.bundle, params)
    from moe_policy_ros.core.manifest import read_manifest

    want = merge_routing(read_manifest(bundle).routing, cfg.policy.routing)
    assert want.k == read_manifest(bundle).routing.k  # the shipped file leaves k unset
    args = parser.parse_args(["--in-process", "--max-steps", "5"])
    with make_runner(args, bundle, params) as runner:  # type: ignore[attr-defined]
        assert runner.policy.routing_config == want
    args = parser.parse_args(["--in-process", "--routing", "mass", "--tau", "0.5"])
    with make_runner(args, bundle, params) as runner:  # type: ignore[attr-defined]
        got = runner.policy.routing_config
        assert got.strategy == "mass" and got.tau == 0.5
        assert got.model_dump(exclude={"strategy", "tau"}) == want.model_dump(
            exclude={"strategy", "tau"})


def test_in_process_refuses_cameras_that_would_go_stale_between_frames() -> None:
    """In-process a frame is rendered per inference (every 5 control steps at 50/10 Hz): a
    camera max_age_s below that age would hold the robot between frames, so it is refused
    with the value to change, before the policy loads."""
    params = default_params_file()
    cfg = load_config(params)
    bundle = resolve_bundle(cfg.policy.bundle, params)
    cams = [c.model_copy(update={"max_age_s": 0.05}) for c in cfg.cameras]
    with pytest.raises(ValueError, match=r"cameras\.top\.max_age_s 0\.05 s: .* 0\.08 s old"):
        InProcessRunner(bundle, "transfer_cube", cfg.model_copy(update={"cameras": cams}))
