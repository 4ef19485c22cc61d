"""RealSense camera node -> policy node, end to end over DDS, in separate processes.

``realsense_camera`` runs with ``source:=software`` (synthetic frames through a real
pyrealsense2 ``software_device``), started with exactly the command ``moe-policy-ros up``
builds for a ``realsense_top`` section (``graph.node_graph`` remappings of ``~/color/...``
onto ``cameras.top.topic``). The policy node gets its only image from it; ``FakeRobot``
publishes joint states only.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("rclpy")
try:
    import pyrealsense2  # noqa: F401
except ImportError as _err:  # pragma: no cover - depends on the machine
    pytest.skip(f"pyrealsense2 does not import: {_err}", allow_module_level=True)

from ros_helpers import REPO, FakeRobot, RosClient, bundle_home, engage, node_process, wait_for

from moe_policy_ros.bringup import _command, prepare_params
from moe_policy_ros.core.config import load_config
from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.graph import node_graph

pytestmark = [pytest.mark.ros, pytest.mark.realsense, pytest.mark.slow]

BUNDLE = REPO / "models" / "demo_adamoe"
CFG = load_config(REPO / "config" / "dual_arm.yaml")
NAMES = CFG.robot.joint_names
TOP = next(c for c in CFG.cameras if c.name == "top")
CAMERA_FPS = 15



def _params(tmp: Path) -> tuple[Path, dict[str, Any]]:
    doc = yaml.safe_load((REPO / "config" / "dual_arm.yaml").read_text())
    p = doc["/**/moe_policy"]["ros__parameters"]
    p["handover"]["require_teleop_to_engage"] = False
    p["policy"]["bundle"] = str(BUNDLE)
    # joint states come from FakeRobot in this (test) process, which a loaded 2-core box can
    # stall past 0.2 s; the camera keeps its configured max age (it is what is under test)
    doc["/**"]["ros__parameters"]["robot"]["joint_states_max_age_s"] = 1.0
    doc["realsense_top"] = {"ros__parameters": {
        "source": "software", "width": TOP.width, "height": TOP.height, "fps": CAMERA_FPS,
    }}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, doc


@pytest.fixture(scope="module")
def client() -> Iterator[RosClient]:
    c = RosClient("camera_to_policy_test")
    yield c
    c.close()


def test_software_realsense_feeds_the_policy(client: RosClient, tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Float32MultiArray, Float64MultiArray, Int32MultiArray, String

    from moe_policy_ros.nodes.common import LATCHED_QOS

    params, doc = _params(tmp_path)
    specs = node_graph(doc)
    assert [s.name for s in specs] == ["moe_policy", "realsense_top"]
    cam = specs[1]
    up_args = argparse.Namespace(namespace="", log_level="info", use_sim_time=False, model="",
                                 enclave="")
    (tmp_path / "run").mkdir()
    run_params = prepare_params(doc, specs, up_args, tmp_path / "run")
    cam_cmd = _command(cam, up_args, run_params)  # what `moe-policy-ros up` would run
    assert cam_cmd[2:4] == [cam.module, "--ros-args"]
    info_topic = dict(cam.remappings)["~/color/camera_info"]
    assert dict(cam.remappings)["~/color/image_raw"] == TOP.topic

    modes = client.record(String, "/moe_policy/mode", LATCHED_QOS)
    images = client.record(Image, TOP.topic, qos_profile_sensor_data)
    infos = client.record(CameraInfo, info_topic, qos_profile_sensor_data)
    lcmds = client.record(Float64MultiArray, CFG.robot.arm("left_arm").command_topic)
    rcmds = client.record(Float64MultiArray, CFG.robot.arm("right_arm").command_topic)
    gates = client.record(Float32MultiArray, "/moe_policy/router/gates")
    active = client.record(Int32MultiArray, "/moe_policy/router/active")
    diags = client.record(DiagnosticArray, "/diagnostics")
    # joint states only: the fake robot's image publisher is on a topic nobody reads
    robot = FakeRobot(
        client, NAMES, bundle_home(BUNDLE, NAMES), camera_topic="/fake_robot/unused/image_raw"
    )
    robot.publish_images = False
    try:
        with node_process(cam.module, cam_cmd[4:], tmp_path / "camera.log") as cam_proc, \
                node_process("moe_policy_ros.nodes.policy_node",
                             ["--params-file", str(params), "-p", "autostart:=true"],
                             tmp_path / "policy.log"):
            wait_for(lambda: len(images) >= 5, 60, f"software RealSense frames on {TOP.topic}")
            wait_for(lambda: any(m.data == "HOLD" for _t, m in modes), 60, "latched HOLD")
            refused = engage(client)
            assert refused == "", f"engage refused: {refused}"
            wait_for(lambda: any(m.data == "AUTONOMY" for _t, m in modes), 10, "AUTONOMY")
            t_engaged = time.monotonic()
            time.sleep(3.0)
            wait_for(lambda: any(t > t_engaged + 1.5 for t, _m in diags), 5,
                     "/diagnostics after engaging")
            assert cam_proc.poll() is None, "camera node exited"
    finally:
        robot.close()
    # Ctrl-C: a clean exit, without publishing into the already shut-down context
    assert cam_proc.returncode == 0, cam_proc.returncode
    cam_log = (tmp_path / "camera.log").read_text()
    assert "publish failed" not in cam_log, cam_log

    # the camera's frames: the size the policy expects, rgb8, recent stamps, with camera_info
    img = images[-1][1]
    assert (img.width, img.height, img.encoding) == (TOP.width, TOP.height, "rgb8")
    assert img.step == 3 * TOP.width and len(img.data) == img.step * img.height
    assert img.header.frame_id == "top_color_optical_frame"
    t_img = [t for t, _m in images]
    cam_rate = (len(t_img) - 1) / (t_img[-1] - t_img[0])
    assert cam_rate > 0.5 * CAMERA_FPS, f"camera rate {cam_rate:.1f} Hz"
    assert infos, f"no camera_info on {info_topic}"
    info = infos[-1][1]
    assert (info.width, info.height) == (TOP.width, TOP.height)
    assert info.header.frame_id == img.header.frame_id

    # the policy ran on them: commands on both arms, router topics
    window = [m for t, m in lcmds if t >= t_engaged + 0.5]
    assert len(window) > 0.6 * CFG.policy.control_rate_hz * 2.0, len(window)
    assert all(len(m.data) == 7 and all(math.isfinite(x) for x in m.data) for m in window)
    assert sum(t >= t_engaged for t, _m in rcmds) > 10
    m = read_manifest(BUNDLE)
    assert sum(t >= t_engaged for t, _m in gates) >= 5
    g = gates[-1][1].data
    assert len(g) == m.experts.count and math.isclose(sum(g), 1.0, abs_tol=1e-4)
    act = list(active[-1][1].data)
    assert act == sorted(act) and set(act) <= set(range(m.experts.count))

    # the policy's own view: camera fresh, with a rate, nothing rejected
    last: dict[str, Any] = {}
    for t, arr in diags:
        for st in arr.status:
            if t >= t_engaged + 1.0:
                last[st.name] = st
    inputs = last["moe_policy: inputs"]
    vals = {kv.key: kv.value for kv in inputs.values}
    assert inputs.level == b"\x00", f"inputs {inputs.message}: {vals}"
    assert inputs.message == "all inputs fresh"
    assert float(vals["top rate (Hz)"]) > 0, vals
    assert int(vals["top received"]) > 0 and int(vals["top rejected"]) == 0, vals
    assert float(vals["top age (s)"]) <= TOP.max_age_s, vals
    assert float(vals["joint_states rate (Hz)"]) > 0
    assert last["moe_policy: safety"].message.startswith("mode AUTONOMY")
    print(f"camera {cam_rate:.1f} Hz on the wire, {vals['top rate (Hz)']} Hz at the policy; "
          f"left commands {len(window)} in {time.monotonic() - t_engaged - 0.5:.1f} s")
    # the camera node's own diagnostics: streaming near its configured rate
    cam_diag = last["realsense_top: camera"]
    cvals = {kv.key: kv.value for kv in cam_diag.values}
    assert cam_diag.level == b"\x00", f"{cam_diag.message}: {cvals}"
    assert cvals["state"] == "streaming" and int(cvals["frames published"]) > 0
    assert float(cvals["color rate (Hz)"]) >= 0.8 * CAMERA_FPS
