"""Messages <-> core types: every conversion the nodes make, in one module.

Each function only reads or fills message fields; validation stays in the core, which names
the bad value (:mod:`~moe_policy_ros.core.preprocess` for image fields,
:mod:`~moe_policy_ros.core.inputs` for joint states, :mod:`~moe_policy_ros.core.trajectory`
for trajectories). Used by the policy node, ``aloha_sim`` and ``realsense_camera``; tested
with the real message classes in ``test/nodes/test_convert.py`` (no DDS).

Stamps are integer nanoseconds on the ROS clock (:func:`moe_policy_ros.session.ns_to_stamp`).

The policy node's outputs are keyed by publisher (:func:`control_msgs`,
:func:`router_publications`); :func:`policy_publishers` is the matching list of publishers
(key, type, topic, QoS) and :data:`SERVICE_TYPES` the types of its operator services, so
the keys, types and topics are written down once, next to the messages.
"""

from __future__ import annotations

import array
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, Header, Int32MultiArray, String
from std_msgs.msg import MultiArrayDimension as Dim
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from moe_policy_ros.core.config import RuntimeConfig
from moe_policy_ros.core.diagnostics import HARDWARE_ID, TaskStatus, status_name
from moe_policy_ros.core.imageconv import depth_to_raw, rgb_to_raw
from moe_policy_ros.core.pipeline import Arm, ControlOutput, RouterUpdate
from moe_policy_ros.core.preprocess import CompressedFrame, RawFrame
from moe_policy_ros.core.trajectory import Trajectory, TrajectoryPoint
from moe_policy_ros.session import COMMAND_QOS, MONITOR_QOS, ns_to_stamp, stamp_to_ns

__all__ = [
    "ROUTER_TYPES",
    "SERVICE_TYPES",
    "JointStateFields",
    "PublisherSpec",
    "byte_array",
    "command_msg",
    "command_values",
    "compressed_image_msg",
    "control_msgs",
    "depth_image_msg",
    "diag_status",
    "diagnostic_array",
    "frame_from_msg",
    "joint_state_fields",
    "joint_state_msg",
    "policy_publishers",
    "rgb_image_msg",
    "router_msgs",
    "router_publications",
    "trajectory_from_msg",
    "trajectory_msg",
]

#: The router topics ``~/router/<key>`` (and ``~/shadow/router/<key>``) and their types.
ROUTER_TYPES: dict[str, Any] = {
    "gates": Float32MultiArray, "active": Int32MultiArray, "dominant": String,
}

#: The policy node's operator services ``~/<name>`` (:data:`core.handover.REQUESTS`) and
#: their types: ``engage_autonomy`` takes a bool, the others nothing.
SERVICE_TYPES: dict[str, Any] = {
    "engage_autonomy": SetBool, "hold": Trigger, "estop": Trigger, "reset_estop": Trigger,
}


def _header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


# ---------------------------------------------------------------------- images


def byte_array(data: bytes) -> array.array[int]:
    """``array('B')`` takes rclpy's fast path for uint8[] fields (bytes are checked per item)."""
    arr = array.array("B")
    arr.frombytes(data)
    return arr


def frame_from_msg(msg: Image | CompressedImage) -> RawFrame | CompressedFrame:
    """An image message's fields for the camera pipeline (not decoded, data not copied)."""
    if isinstance(msg, Image):
        return RawFrame(msg.height, msg.width, msg.encoding, msg.step, msg.data)
    return CompressedFrame(msg.format, msg.data)


def rgb_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "") -> Image:
    """A ``uint8 (H, W, 3)`` RGB array as an ``rgb8`` Image (ImageError for another array)."""
    msg = Image(header=_header(stamp_ns, frame_id), is_bigendian=0)
    msg.height, msg.width, msg.encoding, msg.step, data = rgb_to_raw(rgb)
    msg.data = byte_array(data)
    return msg


def depth_image_msg(depth: np.ndarray, stamp_ns: int, frame_id: str = "") -> Image:
    """A ``uint16 (H, W)`` depth array (mm) as a little-endian ``16UC1`` Image."""
    msg = Image(header=_header(stamp_ns, frame_id), is_bigendian=0)
    msg.height, msg.width, msg.encoding, msg.step, data = depth_to_raw(depth)
    msg.data = byte_array(data)
    return msg


def compressed_image_msg(
    data: bytes, fmt: str, stamp_ns: int, frame_id: str = ""
) -> CompressedImage:
    """Encoded image bytes (JPEG, PNG) as a CompressedImage with ``format`` ``fmt``."""
    msg = CompressedImage(header=_header(stamp_ns, frame_id), format=fmt)
    msg.data = byte_array(data)
    return msg


# ---------------------------------------------------------------------- joints and commands


class JointStateFields(NamedTuple):
    """What :meth:`core.inputs.InputBuffer.put_joint_state` takes from a JointState (it maps
    the positions onto the robot's joints by name)."""

    names: Sequence[str]
    positions: Sequence[float]
    velocities: Sequence[float]
    stamp_ns: int


def joint_state_fields(msg: JointState) -> JointStateFields:
    return JointStateFields(msg.name, msg.position, msg.velocity, stamp_to_ns(msg.header.stamp))


def joint_state_msg(
    names: Sequence[str],
    positions: Iterable[float],
    stamp_ns: int,
    velocities: Iterable[float] = (),
) -> JointState:
    """A JointState with positions (and velocities when given) for ``names``."""
    msg = JointState(header=_header(stamp_ns, ""), name=list(names),
                     position=[float(x) for x in positions])
    msg.velocity = [float(x) for x in velocities]
    return msg


def command_msg(values: Iterable[float]) -> Float64MultiArray:
    """A forward_command_controller command: positions in the arm's joint order."""
    return Float64MultiArray(data=[float(x) for x in values])


def command_values(msg: Float64MultiArray) -> list[float]:
    return [float(x) for x in msg.data]


# ---------------------------------------------------------------------- trajectories


def trajectory_msg(traj: Trajectory) -> JointTrajectory:
    """Core :class:`Trajectory` -> ``trajectory_msgs/JointTrajectory`` (header stamp = its
    start time; positions only)."""
    msg = JointTrajectory()
    msg.header.stamp = ns_to_stamp(traj.start_time_ns)
    msg.joint_names = list(traj.joint_names)
    for p in traj.points:
        pt = JointTrajectoryPoint()
        pt.positions = list(p.positions)
        t = p.time_from_start
        sec = math.floor(t)
        pt.time_from_start.sec = int(sec)
        pt.time_from_start.nanosec = round((t - sec) * 1e9)
        msg.points.append(pt)
    return msg


def trajectory_from_msg(msg: JointTrajectory) -> Trajectory:
    """``trajectory_msgs/JointTrajectory`` -> core :class:`Trajectory` (the follower
    validates it)."""
    points = tuple(
        TrajectoryPoint(
            positions=tuple(float(x) for x in p.positions),
            time_from_start=p.time_from_start.sec + p.time_from_start.nanosec * 1e-9,
            velocities=tuple(float(x) for x in p.velocities) if len(p.velocities) else None,
        )
        for p in msg.points
    )
    return Trajectory(tuple(msg.joint_names), points, stamp_to_ns(msg.header.stamp))


def control_msgs(out: ControlOutput, joint_names: Sequence[str]) -> list[tuple[str, Any]]:
    """One control tick's messages, keyed by publisher: ``shadow/command`` and ``command``
    (JointState, the policy's command under teleop and the command sent), ``cmd/<arm>``
    (stream mode) or ``traj/<arm>`` (chunk mode); all stamped with the tick's ROS time,
    trajectories with their own start."""
    msgs: list[tuple[str, Any]] = [
        (key, joint_state_msg(joint_names, q, out.stamp_ns))
        for key, q in (("shadow/command", out.shadow), ("command", out.sent)) if q is not None
    ]
    msgs += [(f"cmd/{arm.name}", command_msg(values)) for arm, values in out.commands]
    return msgs + trajectory_msgs(out.trajectories)


def trajectory_msgs(trajectories: Iterable[tuple[Arm, Trajectory]]) -> list[tuple[str, Any]]:
    """One ``traj/<arm>`` JointTrajectory per arm (chunk mode: at a tick, or when the chunk
    arrives)."""
    return [(f"traj/{arm.name}", trajectory_msg(traj)) for arm, traj in trajectories]


# ---------------------------------------------------------------------- router


def router_msgs(router: RouterUpdate, gate_label: str) -> dict[str, Any]:
    """The router state as one message per :data:`ROUTER_TYPES` key; the gates' layout
    names the experts (``experts:<label>,...``, as the monitor and evaluator read it)."""
    n = len(router.gates)
    gates = Float32MultiArray(data=router.gates)
    gates.layout.dim = [Dim(label=gate_label, size=n, stride=n)]
    return {"gates": gates, "active": Int32MultiArray(data=router.active),
            "dominant": String(data=router.dominant)}


def router_publications(router: RouterUpdate, gate_label: str) -> list[tuple[str, Any]]:
    """:func:`router_msgs` keyed by publisher: ``<key>``, and ``shadow/<key>`` as well when
    the policy runs in the shadow of teleoperation (``router.shadow``)."""
    msgs = router_msgs(router, gate_label)
    prefixes = ("", "shadow/") if router.shadow else ("",)
    return [(prefix + key, msg) for prefix in prefixes for key, msg in msgs.items()]


# ---------------------------------------------------------------------- policy node publishers


class PublisherSpec(NamedTuple):
    """One lifecycle publisher of the policy node: the key its messages carry, their type,
    the topic (``~/`` is the node's namespace) and the QoS."""

    key: str
    msg_type: Any
    topic: str
    qos: QoSProfile


def policy_publishers(cfg: RuntimeConfig) -> list[PublisherSpec]:
    """The policy node's lifecycle publishers, keyed as :func:`control_msgs` and
    :func:`router_publications` key their messages: per arm ``traj/<arm>`` (chunk mode) or
    ``cmd/<arm>`` (stream mode) on its controller's topic (commands: RELIABLE depth 1), the
    router state ``[shadow/]<key>`` on ``~/[shadow/]router/<key>`` and the commands
    ``shadow/command`` and ``command`` (monitor QoS)."""
    specs = [
        PublisherSpec(f"traj/{arm.name}", JointTrajectory, arm.trajectory_topic, COMMAND_QOS)
        if cfg.policy.execution.mode == "chunk"
        else PublisherSpec(f"cmd/{arm.name}", Float64MultiArray, arm.command_topic, COMMAND_QOS)
        for arm in cfg.robot.arms
    ]
    specs += [
        PublisherSpec(prefix + key, msg_type, f"~/{prefix}router/{key}", MONITOR_QOS)
        for prefix in ("", "shadow/")
        for key, msg_type in ROUTER_TYPES.items()
    ]
    specs += [
        PublisherSpec(key, JointState, f"~/{key}", MONITOR_QOS)
        for key in ("shadow/command", "command")
    ]
    return specs


# ---------------------------------------------------------------------- diagnostics


def diag_status(
    name: str,
    level: int,
    message: str,
    values: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    hardware_id: str = "",
) -> DiagnosticStatus:
    """A DiagnosticStatus in diagnostic_updater's shape (level as bytes, string values)."""
    st = DiagnosticStatus()
    st.level = bytes([int(level)])
    st.name = name
    st.message = message
    st.hardware_id = hardware_id
    items = values.items() if isinstance(values, Mapping) else values
    st.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in items]
    return st


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def diagnostic_array(node: str, tasks: Iterable[TaskStatus], stamp: TimeMsg) -> DiagnosticArray:
    """One status per core diagnostics task, named ``<node>: <task>``."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [
        diag_status(status_name(node, t.task), t.level, t.message, t.values, HARDWARE_ID)
        for t in tasks
    ]
    return msg
