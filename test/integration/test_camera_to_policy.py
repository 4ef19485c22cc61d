"""RealSense camera node -> policy node at real camera sizes, over DDS, in separate processes.

``realsense_camera`` runs with ``source:=software`` (synthetic frames through a real
pyrealsense2 ``software_device``) at 640x480 and 1280x720, 30 fps, raw ``Image`` and JPEG
``CompressedImage``; it is started with exactly the command ``moe-policy-ros up`` builds for a
``realsense_top`` section (``graph.node_graph`` remappings onto ``cameras.top.topic``) and
with the environment it applies (``core.transport.dds_environment``: the shipped Fast DDS
profile). The policy node brings every frame to the bundle's 128x96 (preprocessing) and runs
the bundled model; ``FakeRobot`` publishes joint states only.

Delivery is counted from both nodes' own ``/diagnostics``: the camera's ``frames published``
and the policy's ``top received`` (frames stored in its input buffer), each stamped with the
ROS time of its report, compared over the same interval (the policy's count interpolated at
the camera's report times).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")
try:
    import pyrealsense2  # noqa: F401
except ImportError as _err:  # pragma: no cover - depends on the machine
    pytest.skip(f"pyrealsense2 does not import: {_err}", allow_module_level=True)

from helpers import REPO

from moe_policy_ros.core.config import load_config
from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.core.transport import dds_environment
from moe_policy_ros.graph import node_graph, read_params_doc
from moe_policy_ros.session import stamp_to_ns
from moe_policy_ros.tools.up import LaunchOptions, node_command, prepare_params

if TYPE_CHECKING:
    from helpers.ros import RosClient

pytestmark = [pytest.mark.ros, pytest.mark.realsense, pytest.mark.slow]

BUNDLE = REPO / "models" / "demo_adamoe"
CFG = load_config(REPO / "config" / "dual_arm.yaml")
NAMES = CFG.robot.joint_names
TOP = next(c for c in CFG.cameras if c.name == "top")
SPEC = next(c for c in read_manifest(BUNDLE).observation.cameras if c.name == "top")
CAMERA_FPS = 30
MIN_DELIVERY = 0.95
# camera_verdict's default: below it the node reports frames as lost
DELIVERY_WARN_BELOW = 0.9
WINDOW_S = 8.0
JPEG_TOPIC = TOP.topic + "/compressed"


def _params(tmp: Path, width: int, height: int, message_type: str) -> tuple[Path, dict[str, Any]]:
    doc = yaml.safe_load((REPO / "config" / "dual_arm.yaml").read_text())
    p = doc["/**/moe_policy"]["ros__parameters"]
    p["handover"]["require_teleop_to_engage"] = False
    p["policy"]["bundle"] = str(BUNDLE)
    # joint states come from FakeRobot in this (test) process, which a loaded 2-core box can
    # stall past 0.2 s; the camera keeps its configured max age (it is what is under test)
    common = doc["/**"]["ros__parameters"]
    common["robot"]["joint_states_max_age_s"] = 1.0
    if message_type == "CompressedImage":
        common["cameras"]["top"].update(topic=JPEG_TOPIC, message_type="CompressedImage")
    doc["realsense_top"] = {"ros__parameters": {
        "source": "software", "width": width, "height": height, "fps": CAMERA_FPS,
    }}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, doc


@pytest.fixture(scope="module")
def transport_env() -> Iterator[dict[str, str]]:
    """The environment `moe-policy-ros up` gives its nodes, for this process and the nodes."""
    env = dds_environment(read_params_doc(REPO / "config" / "dual_arm.yaml"))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(scope="module")
def client(transport_env: dict[str, str], ros: ModuleType) -> Iterator[RosClient]:
    c = ros.RosClient("camera_to_policy_test")
    yield c
    c.close()


def _status_series(diags: list[tuple[float, Any]], name: str) -> list[tuple[int, dict[str, str],
                                                                          Any]]:
    """(report stamp ns, values, status) of every report of the status ``name``."""
    out = []
    for _t, arr in diags:
        stamp = stamp_to_ns(arr.header.stamp)
        for st in arr.status:
            if st.name == name:
                out.append((stamp, {kv.key: kv.value for kv in st.values}, st))
    return out


@pytest.mark.parametrize(
    ("width", "height", "message_type"),
    [(640, 480, "Image"), (1280, 720, "Image"), (640, 480, "CompressedImage")],
    ids=["640x480", "1280x720", "640x480-jpeg"],
)
def test_realsense_at_camera_size_feeds_the_policy(
    client: RosClient, tmp_path: Path, transport_env: dict[str, str],
    width: int, height: int, message_type: str, ros: ModuleType, wait_for: Callable[..., Any],
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Float32MultiArray, Float64MultiArray, String

    from moe_policy_ros.session import LATCHED_QOS

    params, doc = _params(tmp_path, width, height, message_type)
    specs = node_graph(doc)
    assert [s.name for s in specs] == ["moe_policy", "realsense_top"]
    cam = specs[1]
    options = LaunchOptions()
    (tmp_path / "run").mkdir()
    run_params = prepare_params(doc, specs, options, tmp_path / "run")
    cam_cmd = node_command(cam, options, run_params)  # what `moe-policy-ros up` would run
    assert cam_cmd[2:4] == [cam.module, "--ros-args"]
    info_topic = dict(cam.remappings)["~/color/camera_info"]
    if message_type == "CompressedImage":
        assert dict(cam.remappings)["~/color/image_raw/compressed"] == JPEG_TOPIC

    tag = f"{width}x{height} {message_type}"
    modes = client.record(String, "/moe_policy/mode", LATCHED_QOS)
    infos = client.record(CameraInfo, info_topic, qos_profile_sensor_data)
    lcmds = client.record(Float64MultiArray, CFG.robot.arm("left_arm").command_topic)
    gates = client.record(Float32MultiArray, "/moe_policy/router/gates")
    diags = client.record(DiagnosticArray, "/diagnostics")
    robot = ros.FakeRobot(
        client, NAMES, ros.bundle_home(BUNDLE, NAMES), camera_topic="/fake_robot/unused/image_raw"
    )
    robot.publish_images = False
    try:
        # the policy first, so that its subscription exists when the camera starts
        with ros.node_process("moe_policy_ros.nodes.policy_node",
                          ["--params-file", str(params), "-p", "autostart:=true"],
                          tmp_path / "policy.log"), \
                ros.node_process(cam.module, cam_cmd[4:], tmp_path / "camera.log") as cam_proc:
            wait_for(lambda: len(infos) >= 5, 60, f"software RealSense camera_info ({tag})")
            wait_for(lambda: any(m.data == "HOLD" for _t, m in modes), 60, "latched HOLD")
            refused = ros.engage(client)
            assert refused == "", f"engage refused: {refused}"
            wait_for(lambda: any(m.data == "AUTONOMY" for _t, m in modes), 10, "AUTONOMY")
            t_engaged = time.monotonic()
            time.sleep(WINDOW_S)
            t_end = time.monotonic()  # before either node is stopped
            assert cam_proc.poll() is None, "camera node exited"
    finally:
        robot.close()
    assert cam_proc.returncode == 0, cam_proc.returncode
    cam_log = (tmp_path / "camera.log").read_text()
    assert "publish failed" not in cam_log, cam_log
    assert infos[-1][1].width == width and infos[-1][1].height == height
    diags = [(t, arr) for t, arr in diags if t <= t_end]

    # delivery over the same interval, from both nodes' own counters
    camera = [(s, int(v["frames published"])) for s, v, _st in
              _status_series(diags, "realsense_top: camera")]
    policy = [(s, v) for s, v, _st in _status_series(diags, "moe_policy: inputs")
              if "top received" in v]
    assert len(camera) >= 5 and len(policy) >= 5, (len(camera), len(policy))
    p_t = np.array([s for s, _v in policy], dtype=np.float64)
    inside = [(s, n) for s, n in camera if p_t[0] <= s <= p_t[-1] and n > 0]
    assert len(inside) >= 4, f"too few overlapping reports: camera {camera}, policy {p_t}"
    (s0, n0), (s1, n1) = inside[0], inside[-1]
    published = n1 - n0
    counts = {}
    for key in ("top received", "top frames received"):
        series = np.array([float(v[key]) for _s, v in policy])
        counts[key] = float(np.interp(s1, p_t, series) - np.interp(s0, p_t, series))
    span = (s1 - s0) / 1e9
    stored = counts["top received"]
    print(f"[{tag}] {published} frames published in {span:.1f} s "
          f"({published / span:.1f} Hz); reached the policy {counts['top frames received']:.0f}, "
          f"stored in its input buffer {stored:.0f} ({stored / published:.1%})")
    # the software device makes its frames in Python: on a loaded 2-core machine 1280x720
    # comes out at 20-30 Hz of the 30 asked; delivery is judged on what was published
    assert published >= 0.5 * CAMERA_FPS * span, "the camera published at under half its rate"
    assert stored >= MIN_DELIVERY * published, (
        f"{tag}: {stored:.0f} of {published} frames reached the input buffer (< 95%)"
    )

    # the policy's view: frames of the camera's size in, the bundle's size used, nothing
    # rejected, a verdict that says so, inputs fresh
    last = policy[-1][1]
    inputs = _status_series(diags, "moe_policy: inputs")[-1][2]
    assert inputs.level == b"\x00", f"inputs {inputs.message}: {last}"
    assert inputs.message == "all inputs fresh"
    encoding = "jpeg" if message_type == "CompressedImage" else "rgb8"
    assert last["top size received"] == f"{width}x{height} {encoding}", last
    assert last["top size used"] == f"{SPEC.width}x{SPEC.height}", last
    assert last["top preprocess"] == "resize (area)", last
    assert int(last["top rejected"]) == 0, last
    assert last["top verdict"].startswith(
        f"top: {width}x{height} {encoding} -> {SPEC.width}x{SPEC.height} resize (area)"
    ), last
    # The node's own delivery figure is an estimate from stamp spacing against the
    # publisher's rate; it also counts frames the software camera itself skipped on a loaded
    # machine (seen: 0.93 while the counters above showed 178 of 178 stored). The delivery
    # contract is the counter check above; here: the node does not report frames as lost.
    assert float(last["top delivery"]) >= DELIVERY_WARN_BELOW, last
    assert "of frames" not in last["top verdict"], last

    # observations were built from them: router output and commands on both arms under
    # AUTONOMY
    m = read_manifest(BUNDLE)
    assert sum(t >= t_engaged for t, _m in gates) >= 5
    g = gates[-1][1].data
    assert len(g) == m.experts.count and math.isclose(sum(g), 1.0, abs_tol=1e-4)
    window = [msg for t, msg in lcmds if t >= t_engaged + 0.5]
    assert len(window) > 0.6 * CFG.policy.control_rate_hz * (WINDOW_S - 1.0), len(window)
    assert all(len(c.data) == 7 and all(math.isfinite(x) for x in c.data) for c in window)
    safety = _status_series(diags, "moe_policy: safety")[-1][2]
    assert safety.message.startswith("mode AUTONOMY"), safety.message
    policy_log = (tmp_path / "policy.log").read_text()
    if (width, height) == (1280, 720):  # 16:9 into 4:3: the aspect warning, once
        assert policy_log.count("stretches the aspect ratio by 33%") == 1, policy_log
    else:
        assert "stretches the aspect ratio" not in policy_log
