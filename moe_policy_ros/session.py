"""The one public module for talking ROS outside ``nodes/``: sessions, QoS, stamps, paths.

The command-line tools (monitor, demo, doctor, up) and test clients talk ROS through
:class:`RosSession` (an rclpy node in a private context with its own executor) and the QoS
profiles and stamp conversions here; they import message types where they use them, but never
``rclpy`` itself or ``nodes/`` internals (a test enforces it). The nodes use the same
definitions (``nodes/common.py`` re-exports them).
"""

from __future__ import annotations

import threading

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from moe_policy_ros.core.paths import PACKAGE, resolve_share_path

__all__ = [
    "COMMAND_QOS",
    "COMMAND_SUB_QOS",
    "LATCHED_QOS",
    "MONITOR_QOS",
    "PACKAGE",
    "SENSOR_QOS",
    "RosSession",
    "ns_to_stamp",
    "resolve_share_path",
    "rmw_implementation",
    "stamp_to_ns",
]


#: Cameras and joint states (REP 2003): best effort, keep last 5.
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
#: Commands to ros2_control controllers: they subscribe with system-default (reliable) QoS,
#: so a best-effort publisher would never connect.
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
)
#: Commands received by the simulator (reliable, a little history for bursts).
COMMAND_SUB_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
#: Latched status (mode): late joiners get the last value.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
#: Router state and other monitoring streams.
MONITOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)


def stamp_to_ns(stamp: TimeMsg) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> TimeMsg:
    msg = TimeMsg()
    msg.sec, msg.nanosec = divmod(int(ns), 1_000_000_000)
    return msg



def rmw_implementation() -> str:
    """The RMW implementation rclpy loads (``rmw_fastrtps_cpp``, ``rmw_cyclonedds_cpp``...)."""
    from rclpy.utilities import get_rmw_implementation_identifier

    return str(get_rmw_implementation_identifier())


class RosSession:
    """An rclpy node in a private context with its own single-threaded executor.

    For code that lives beside other work in one process (the CLI tools, the demo's recorder,
    test clients): no global ``rclpy.init``, and ``close()`` tears down only this context.
    ``spin_in_background()`` services the node from a daemon thread.
    """

    def __init__(self, name: str) -> None:
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def spin_in_background(self) -> None:
        self._thread = threading.Thread(target=self._spin, name="ros-session", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                if self._stop.is_set() or not self.context.ok():
                    return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
