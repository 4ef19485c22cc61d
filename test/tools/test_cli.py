"""`moe-policy-ros` as a user runs it: a subprocess per command (``python -m
moe_policy_ros.cli``, the console script's entry point; the script itself too when it is on
PATH), plus the monitor's pure renderer."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers import REPO

from moe_policy_ros.cli import _COMMANDS
from moe_policy_ros.core.config import load_config
from moe_policy_ros.tools.monitor import MonitorState, render

CONFIGS = [REPO / "config" / "dual_arm.yaml", REPO / "config" / "sim_dual_arm.yaml"]
BUNDLE = REPO / "models" / "demo_adamoe"


#: A command runner fixture: ``run(*args, timeout=...)`` -> the finished process.
Run = Callable[..., subprocess.CompletedProcess[str]]


def _help_lists_every_command(text: str) -> None:
    for name, (_module, help_text) in _COMMANDS.items():
        assert re.search(rf"^\s+{re.escape(name)}\b", text, re.M), f"{name} not in --help"
        assert help_text.split()[0] in text
    assert set(_COMMANDS) == {
        "export", "inspect", "bench", "check-config", "up", "monitor", "demo", "doctor",
        "record", "train", "evaluate", "results",
    }


def test_help_lists_all_subcommands(cli: Run) -> None:
    res = cli("--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: moe-policy-ros")
    _help_lists_every_command(res.stdout)
    script = shutil.which("moe-policy-ros")
    if script:  # installed console script (colcon / pip install)
        res = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0
        _help_lists_every_command(res.stdout)


@pytest.mark.parametrize("command", ["inspect", "bench", "check-config", "up", "monitor",
                                     "demo", "record", "train", "evaluate", "results"])
def test_subcommand_help(command: str, cli: Run) -> None:
    res = cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert f"usage: moe-policy-ros {command}" in res.stdout


def test_no_command_is_a_usage_error(cli: Run) -> None:
    res = cli()
    assert res.returncode == 2
    assert "required" in res.stderr and "COMMAND" in res.stderr


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: p.name)
def test_check_config_accepts_the_shipped_configs(params: Path, cli: Run) -> None:
    res = cli("check-config", str(params))
    assert res.returncode == 0, res.stderr
    assert f"{params}: valid" in res.stdout
    assert "arm left_arm: 7 joints" in res.stdout and "arm right_arm: 7 joints" in res.stdout
    top = load_config(params).cameras[0]
    size = f"{top.width}x{top.height}" if top.width else "the bundle's size"
    assert f"camera top: cameras/top/image_raw Image {size}" in res.stdout
    assert "control=50.0 Hz" in res.stdout and "mode=stream" in res.stdout


@pytest.mark.parametrize(
    ("dotted", "value", "field"),
    [
        ("policy.control_rate_hz", -5, "policy.control_rate_hz"),
        ("policy.execution.mode", "teleport", "policy.execution.mode"),
        ("safety.max_position_deviation", "far", "safety.max_position_deviation"),
    ],
)
def test_check_config_names_the_broken_field(
    tmp_path: Path, dotted: str, value: Any, field: str, cli: Run
) -> None:
    doc = yaml.safe_load(CONFIGS[0].read_text())
    node = doc["/**/moe_policy"]["ros__parameters"]
    *head, last = dotted.split(".")
    for h in head:
        node = node[h]
    node[last] = value
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(doc))
    res = cli("check-config", str(bad))
    assert res.returncode == 1, res.stdout
    assert res.stderr.startswith("error:"), res.stderr
    assert field in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_check_config_missing_and_unparsable_files(tmp_path: Path, cli: Run) -> None:
    res = cli("check-config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 1 and "nope.yaml" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("moe_policy: [\n")
    res = cli("check-config", str(bad))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr


def test_inspect_prints_family_and_experts(cli: Run) -> None:
    from moe_policy_ros.core.manifest import read_manifest

    m = read_manifest(BUNDLE)
    res = cli("inspect", str(BUNDLE))
    assert res.returncode == 0, res.stderr
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1]
              for line in res.stdout.splitlines() if line.strip() and " " in line.strip()}
    assert fields["family"].strip() == m.family
    labels = ", ".join(f"{i}={lbl}" for i, lbl in enumerate(m.experts.labels))
    assert fields["experts"].strip() == f"{m.experts.count}: {labels}"
    assert "verified" in fields["stage"]
    res = cli("inspect", str(BUNDLE), "--sha256", "0" * 64)
    assert res.returncode != 0 and "Traceback" not in res.stderr


# ---------------------------------------------------------------- monitor


def _state(**kw: Any) -> MonitorState:
    base: dict[str, Any] = dict(
        mode="AUTONOMY", gates=[0.5, 0.3, 0.2], labels=["pick", "place", "a_very_long_label_x"],
        active=[0, 1], dominant="pick", chunks=7,
        diagnostics={
            "moe_policy: inference": (0, "onnxruntime-cpu, median 1.2 ms",
                                      {"latency median (ms)": "1.2", "backend": "x"}),
            "moe_policy: inputs": (2, "stale: top: no data", {}),
            "moe_policy: control loop": (1, "slow", {"achieved rate (Hz)": "31.5"}),
        },
    )
    base.update(kw)
    return MonitorState(**base)


def test_render_plain_frame() -> None:
    text = render(_state(), width=80, color=False)
    lines = text.splitlines()
    assert "\x1b[" not in text
    assert lines[0] == "moe_policy_ros monitor   mode: AUTONOMY   chunks: 7   dominant: pick"
    bar_w = 80 - 34
    bars = lines[2:5]
    assert bars[0] == f"* {'pick':<14}  0.50 " + "#" * (bar_w // 2) + "." * (bar_w // 2)
    assert bars[1].startswith("* place") and bars[1].count("#") == round(0.3 * bar_w)
    assert bars[2].startswith("  a_very_long_la ")  # inactive, label cut to 14
    assert bars[2].count("#") == round(0.2 * bar_w)
    assert all(len(b) == len(bars[0]) for b in bars)
    # diagnostics sorted by name, level names, selected values indented below
    diag = [ln for ln in lines if ln.startswith("[")]
    assert diag == [
        "[WARN ] control loop  slow",
        "[OK   ] inference     onnxruntime-cpu, median 1.2 ms",
        "[ERROR] inputs        stale: top: no data",
    ]
    assert "          achieved rate (Hz): 31.5" in lines
    assert "          latency median (ms): 1.2" in lines
    assert not any("backend" in ln for ln in lines), "only the selected values are shown"


def test_render_color_empty_and_narrow() -> None:
    text = render(_state(mode="ESTOP"), width=80, color=True)
    assert "\x1b[41;97mESTOP\x1b[0m" in text
    assert "\x1b[32m*\x1b[0m" in text  # active experts marked green
    empty = render(MonitorState(), width=80, color=False)
    assert "mode: ?" in empty and "dominant: -" in empty and "(no router data yet)" in empty
    narrow = render(_state(labels=[]), width=20, color=False)
    bars = [ln for ln in narrow.splitlines() if ln.startswith(("* ", "  0", "  1", "  2"))]
    assert [b.split()[1 if b.startswith("*") else 0] for b in bars] == ["0", "1", "2"]
    assert all(len(b.split()[-1]) == 10 for b in bars)  # bar never narrower than 10
    many = render(_state(gates=[1 / 3] * 3, labels=["x"]), width=80, color=False)
    assert "* x " in many and "* 1 " in many and "  2 " in many  # missing labels: index


@pytest.mark.ros
@pytest.mark.slow
def test_monitor_once_against_an_engaged_policy_node(
    tmp_path: Path,
    cli: Run,
    wait_for: Callable[..., Any],
    ros: ModuleType,
) -> None:
    pytest.importorskip("rclpy")
    from std_msgs.msg import String

    from moe_policy_ros.core.config import load_config
    from moe_policy_ros.core.manifest import read_manifest
    from moe_policy_ros.session import LATCHED_QOS

    cfg = load_config(CONFIGS[0])
    names = cfg.robot.joint_names
    m = read_manifest(BUNDLE)
    home = ros.bundle_home(BUNDLE, names)
    # FakeRobot publishes from this (test) process; on a loaded 2-core box it can stall past
    # the 0.2 s / 0.25 s input ages, and the policy rightly drops to HOLD. This test is
    # about the monitor, so give the fake inputs slack.
    params = ros.policy_params(tmp_path, input_max_age_s=1.0, policy__bundle=str(BUNDLE))

    client = ros.RosClient("monitor_test")
    robot = ros.FakeRobot(client, names, home)
    modes = client.record(String, "/moe_policy/mode", LATCHED_QOS)
    try:
        with ros.node_process("moe_policy_ros.nodes.policy_node",
                          ["--params-file", str(params), "-p", "autostart:=true"],
                          tmp_path / "policy.log"):
            wait_for(lambda: any(x.data == "HOLD" for _t, x in modes), 60, "latched HOLD")
            refused = ros.engage(client)
            assert refused == "", refused
            wait_for(lambda: any(x.data == "AUTONOMY" for _t, x in modes), 10, "AUTONOMY")
            t0 = time.monotonic()
            out = cli("monitor", "--once", "--timeout", "60", "--no-color", timeout=90)
            took = time.monotonic() - t0
            # the modes the node reported since it was engaged (on a loaded 2-core box the
            # 10 Hz inference timer can starve past a chunk, and the node rightly holds)
            since_engaged = [x.data for _t, x in modes]
            since_engaged = since_engaged[since_engaged.index("AUTONOMY"):]
    finally:
        robot.close()
        client.close()
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    frame = out.stdout
    print(frame)
    shown = re.search(r"mode: (\S+)", frame)
    assert "moe_policy_ros monitor" in frame and shown, frame
    assert shown.group(1) in since_engaged, (since_engaged, frame)  # what the node said
    bars = [ln for ln in frame.splitlines()
            if re.match(r"^[* ] \S+\s+\d\.\d\d [#.]+$", ln)]
    assert [b[2:].split()[0] for b in bars] == list(m.experts.labels), frame
    gates = [float(b[2:].split()[1]) for b in bars]
    assert math.isclose(sum(gates), 1.0, abs_tol=0.03), gates
    assert sum(b.startswith("*") for b in bars) == m.routing.k, frame
    dominant = re.search(r"dominant: (\S+)", frame)
    assert dominant and dominant.group(1) in m.experts.labels
    for concern in ("inputs", "inference", "router", "control loop", "safety"):
        assert re.search(rf"^\[(OK|WARN|ERROR) *\] {concern}", frame, re.M), (concern, frame)
    assert took < 30, f"monitor took {took:.1f} s for one frame"
