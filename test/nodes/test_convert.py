"""nodes/convert.py: message <-> core conversions, with the real message classes (no DDS)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from moe_policy_ros.core.clock import FakeClock
from moe_policy_ros.core.config import load_config
from moe_policy_ros.core.diagnostics import HARDWARE_ID, TaskStatus
from moe_policy_ros.core.handover import REQUESTS
from moe_policy_ros.core.imageconv import ImageError
from moe_policy_ros.core.inputs import InputBuffer
from moe_policy_ros.core.manifest import PreprocessSpec
from moe_policy_ros.core.pipeline import ControlPath, RouterUpdate
from moe_policy_ros.core.preprocess import CameraPipeline, CompressedFrame, RawFrame
from moe_policy_ros.core.trajectory import Trajectory, TrajectoryPoint
from moe_policy_ros.core.types import Level
from moe_policy_ros.nodes.convert import (
    ROUTER_TYPES,
    SERVICE_TYPES,
    command_msg,
    command_values,
    compressed_image_msg,
    control_msgs,
    depth_image_msg,
    diagnostic_array,
    frame_from_msg,
    joint_state_fields,
    joint_state_msg,
    policy_publishers,
    rgb_image_msg,
    router_msgs,
    router_publications,
    trajectory_from_msg,
    trajectory_msg,
)
from moe_policy_ros.rollout import default_params_file
from moe_policy_ros.session import COMMAND_QOS, MONITOR_QOS, ns_to_stamp

pytestmark = pytest.mark.ros

STAMP_NS = 1_700_000_000_250_000_000


def _wire(msg: object) -> object:
    """The message as a subscriber receives it (serialized and back, as DDS carries it)."""
    return deserialize_message(serialize_message(msg), type(msg))


def test_trajectory_msg_carries_names_stamp_positions_and_times() -> None:
    traj = Trajectory(
        ("left_waist", "left_gripper"),
        (TrajectoryPoint((0.1, 0.9), 0.02), TrajectoryPoint((0.2, 0.8), 1.5)),
        STAMP_NS,
    )
    msg = trajectory_msg(traj)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 250_000_000)
    assert list(msg.joint_names) == ["left_waist", "left_gripper"]
    assert [list(p.positions) for p in msg.points] == [[0.1, 0.9], [0.2, 0.8]]
    times = [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points]
    assert times == [(0, 20_000_000), (1, 500_000_000)]
    back = trajectory_from_msg(_wire(msg))  # type: ignore[arg-type]
    assert back == traj


def test_trajectory_from_msg_keeps_velocities_only_when_given() -> None:
    msg = JointTrajectory(joint_names=["a", "b"])
    msg.header.stamp = ns_to_stamp(STAMP_NS)
    msg.points = [
        JointTrajectoryPoint(positions=[1.0, 2.0], velocities=[0.5, -0.5]),
        JointTrajectoryPoint(positions=[3.0, 4.0]),
    ]
    msg.points[1].time_from_start.sec, msg.points[1].time_from_start.nanosec = 2, 5
    traj = trajectory_from_msg(msg)
    assert traj.start_time_ns == STAMP_NS and traj.joint_names == ("a", "b")
    assert traj.points[0].velocities == (0.5, -0.5) and traj.points[1].velocities is None
    assert traj.points[1].time_from_start == pytest.approx(2.000000005, abs=1e-12)


def test_an_rgb_image_round_trips_through_the_camera_pipeline() -> None:
    """The sim's and the camera driver's Image is what the policy node's pipeline decodes."""
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    msg = rgb_image_msg(rgb, STAMP_NS, "top_optical")
    assert (msg.height, msg.width, msg.encoding, msg.step) == (6, 8, "rgb8", 24)
    assert msg.header.frame_id == "top_optical" and msg.is_bigendian == 0
    frame = frame_from_msg(_wire(msg))  # type: ignore[arg-type]
    assert isinstance(frame, RawFrame) and frame.encoding == "rgb8"
    pipe = CameraPipeline("top", (6, 8), PreprocessSpec())
    out = pipe.new_buffer()
    pipe.process(frame, out)
    np.testing.assert_array_equal(out, rgb)
    with pytest.raises(ImageError, match="uint8"):
        rgb_image_msg(rgb.astype(np.float32), STAMP_NS)


def test_a_compressed_image_round_trips_through_the_camera_pipeline() -> None:
    import cv2

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = (255, 0, 0)  # red | black: survives JPEG
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = compressed_image_msg(png.tobytes(), "rgb8; png compressed bgr8", STAMP_NS, "cam")
    frame = frame_from_msg(_wire(msg))  # type: ignore[arg-type]
    assert isinstance(frame, CompressedFrame) and frame.format == "rgb8; png compressed bgr8"
    pipe = CameraPipeline("top", (8, 8), PreprocessSpec())
    out = pipe.new_buffer()
    assert pipe.process(frame, out).encoding == "png"
    np.testing.assert_array_equal(out, rgb)
    assert isinstance(frame_from_msg(CompressedImage(format="jpeg")), CompressedFrame)


def test_depth_image_is_little_endian_16uc1() -> None:
    depth = np.array([[1, 256], [65535, 0]], np.uint16)
    msg = depth_image_msg(depth, STAMP_NS, "depth")
    assert (msg.height, msg.width, msg.encoding, msg.step) == (2, 2, "16UC1", 4)
    got = np.frombuffer(bytes(_wire(msg).data), "<u2").reshape(2, 2)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(got, depth)


def test_joint_states_map_by_name_onto_the_robot() -> None:
    """What the sim publishes (its joint order) reaches the input buffer in the robot's."""
    msg = joint_state_msg(["b", "a", "extra"], np.array([2.0, 1.0, 9.0]), STAMP_NS,
                          velocities=[0.2, 0.1, 0.0])
    assert msg.header.stamp == ns_to_stamp(STAMP_NS)
    fields = joint_state_fields(_wire(msg))  # type: ignore[arg-type]
    assert fields.stamp_ns == STAMP_NS and list(fields.names) == ["b", "a", "extra"]
    buf = InputBuffer(["a", "b"], joint_max_age_s=1.0, cameras={})
    sample = buf.put_joint_state(*fields, STAMP_NS)
    np.testing.assert_array_equal(sample.positions, [1.0, 2.0])
    no_vel = joint_state_msg(["a"], [0.5], STAMP_NS)
    assert list(no_vel.velocity) == [] and list(no_vel.position) == [0.5]
    with pytest.raises(ValueError, match=r"lacks joints \['b'\]"):
        buf.put_joint_state(*joint_state_fields(no_vel), STAMP_NS)


def test_forward_commands_round_trip() -> None:
    msg = command_msg(np.array([0.1, -0.2, 3.0]))
    assert isinstance(msg, Float64MultiArray)
    assert command_values(_wire(msg)) == [0.1, -0.2, 3.0]  # type: ignore[arg-type]


def test_router_messages_name_the_experts_in_the_gates_layout() -> None:
    update = RouterUpdate(gates=[0.7, 0.2, 0.1], active=[0, 1], dominant="reach", shadow=False)
    msgs = router_msgs(update, "experts:reach,grasp,lift")
    assert set(msgs) == set(ROUTER_TYPES)
    assert all(isinstance(msgs[k], t) for k, t in ROUTER_TYPES.items())
    gates = _wire(msgs["gates"])
    assert list(gates.data) == pytest.approx([0.7, 0.2, 0.1])  # type: ignore[attr-defined]
    dim = gates.layout.dim[0]  # type: ignore[attr-defined]
    assert (dim.label, dim.size, dim.stride) == ("experts:reach,grasp,lift", 3, 3)
    assert list(msgs["active"].data) == [0, 1] and msgs["dominant"].data == "reach"


def test_router_publications_add_the_shadow_topics_under_teleoperation() -> None:
    label = "experts:reach,grasp"
    update = RouterUpdate(gates=[0.6, 0.4], active=[0], dominant="reach", shadow=False)
    assert [k for k, _ in router_publications(update, label)] == list(ROUTER_TYPES)
    shadow = RouterUpdate(gates=[0.6, 0.4], active=[0], dominant="reach", shadow=True)
    pubs = router_publications(shadow, label)
    assert [k for k, _ in pubs] == [*ROUTER_TYPES, *(f"shadow/{k}" for k in ROUTER_TYPES)]
    msgs = dict(pubs)
    assert msgs["shadow/dominant"].data == "reach" and msgs["dominant"].data == "reach"


@pytest.mark.parametrize("mode", ["stream", "chunk"])
def test_policy_publishers_cover_every_keyed_message(mode: str) -> None:
    """Every key control_msgs and router_publications produce has a publisher of the
    message's type: commands on the arm's controller topic (command QoS), the rest on the
    node's ``~/`` topics (monitor QoS); the services are the arbiter's requests."""
    cfg = load_config(default_params_file())
    execution = cfg.policy.execution.model_copy(update={"mode": mode})
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"execution": execution})})
    specs = {spec.key: spec for spec in policy_publishers(cfg)}
    names = cfg.robot.joint_names
    inputs = InputBuffer(names, joint_max_age_s=1.0, cameras={})
    ctl = ControlPath(cfg, names, inputs, FakeClock(STAMP_NS))
    inputs.put_joint_state(names, [0.05] * len(names), (), STAMP_NS, STAMP_NS)
    shadow = RouterUpdate(gates=[1.0], active=[0], dominant="a", shadow=True)
    keyed = [*control_msgs(ctl.control_step(0, STAMP_NS, STAMP_NS), names),
             *router_publications(shadow, "experts:a")]
    assert {k for k, _ in keyed} <= set(specs)
    assert all(isinstance(msg, specs[k].msg_type) for k, msg in keyed)
    kind = "traj" if mode == "chunk" else "cmd"
    for arm in cfg.robot.arms:
        spec = specs[f"{kind}/{arm.name}"]
        topic = arm.trajectory_topic if mode == "chunk" else arm.command_topic
        assert (spec.topic, spec.qos) == (topic, COMMAND_QOS)
    assert not [k for k in specs if k.startswith("cmd/" if mode == "chunk" else "traj/")]
    assert specs["shadow/gates"].topic == "~/shadow/router/gates"
    assert specs["command"].topic == "~/command" and specs["command"].qos == MONITOR_QOS
    assert list(SERVICE_TYPES) == list(REQUESTS)


def test_diagnostic_array_has_one_status_per_task() -> None:
    tasks = [
        TaskStatus("inference", Level.OK, "ok", [("latency median (ms)", 12.3456), ("chunks", 4)]),
        TaskStatus("safety", Level.ERROR, "estop", []),
    ]
    msg = _wire(diagnostic_array("moe_policy", tasks, ns_to_stamp(STAMP_NS)))
    assert [s.name for s in msg.status] == [  # type: ignore[attr-defined]
        "moe_policy: inference", "moe_policy: safety"]
    first, second = msg.status  # type: ignore[attr-defined]
    assert first.level == bytes([0]) and second.level == bytes([2])
    assert first.hardware_id == HARDWARE_ID and second.message == "estop"
    assert [(kv.key, kv.value) for kv in first.values] == [
        ("latency median (ms)", "12.35"), ("chunks", "4")]


@pytest.mark.parametrize("mode", ["stream", "chunk"])
def test_a_control_tick_becomes_one_message_per_publisher(mode: str) -> None:
    """make demo's parameters, a HOLD tick of the real control path: the command sent to the
    monitor and, per arm, a forward command (stream) or a one-point trajectory (chunk)."""
    cfg = load_config(default_params_file())
    execution = cfg.policy.execution.model_copy(update={"mode": mode})
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"execution": execution})})
    names = cfg.robot.joint_names
    inputs = InputBuffer(names, joint_max_age_s=1.0, cameras={})
    ctl = ControlPath(cfg, names, inputs, FakeClock(STAMP_NS))
    q = np.linspace(0.02, 0.1, len(names))  # inside every joint's limits
    inputs.put_joint_state(names, list(q), (), STAMP_NS, STAMP_NS)
    out = ctl.control_step(0, STAMP_NS, STAMP_NS)
    msgs = dict(control_msgs(out, names))
    arms = cfg.robot.arms
    kind = "cmd" if mode == "stream" else "traj"
    assert sorted(msgs) == sorted(["command", *(f"{kind}/{a.name}" for a in arms)])
    sent = msgs["command"]
    assert isinstance(sent, JointState) and list(sent.name) == list(names)
    assert sent.header.stamp == ns_to_stamp(STAMP_NS)
    np.testing.assert_array_equal(out.sent, q)  # HOLD: the measured position
    assert list(sent.position) == list(q)
    first = arms[0]
    cols = [names.index(j) for j in first.joint_names]
    if mode == "stream":
        assert command_values(msgs[f"cmd/{first.name}"]) == pytest.approx(q[cols])
    else:
        traj = trajectory_from_msg(msgs[f"traj/{first.name}"])
        assert traj.joint_names == tuple(first.joint_names) and len(traj.points) == 1
        assert traj.points[0].positions == pytest.approx(q[cols])
