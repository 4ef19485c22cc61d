"""Shared rclpy glue: QoS profiles, time conversions, parameters, diagnostics, main()."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from moe_policy_ros.core.config import unflatten

PACKAGE = "moe_policy_ros"

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


def nested_parameters(node: Node) -> dict[str, Any]:
    """All of a node's parameters as nested dicts (``a.b.c`` -> ``{a: {b: {c: ...}}}``)."""
    flat: dict[str, Any] = {}
    for name, param in node._parameters.items():
        if name in ("use_sim_time", "start_type_description_service") or name.startswith(
            "qos_overrides."
        ):
            continue
        value = param.value
        if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
            value = list(value)
        flat[name] = value
    return unflatten(flat)


def resolve_share_path(relative: str) -> Path:
    """Resolve a package-relative path: source checkout first, then the installed share."""
    p = Path(relative).expanduser()
    if p.is_absolute():
        return p
    if p.exists():
        return p.resolve()
    source_root = Path(__file__).resolve().parents[2]
    if (source_root / "package.xml").is_file() and (source_root / p).exists():
        return source_root / p
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )

        try:
            share = Path(get_package_share_directory(PACKAGE))
            if (share / p).exists():
                return share / p
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return p


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


def spin_node(node: Node, *, on_shutdown: Callable[[], None] | None = None) -> None:
    """Spin until SIGINT/SIGTERM or external shutdown, then clean up (ros2/demos style).

    Single-threaded on purpose: our nodes' callbacks only store data and their real work runs
    in their own threads, and rclpy's multi-threaded executor re-polls ready entities in a
    tight loop that starved those threads of the GIL (docs/benchmarks.md).
    """
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()

    def _term(_signum: int, _frame: Any) -> None:
        stop.set()  # the loop below notices within one spin_once timeout

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term)
    try:
        while rclpy.ok(context=node.context) and not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.1)
            except RCLError:
                # SIGINT shut the context down while the executor built its wait set (Jazzy's
                # rclpy raises "the given context is not valid" there): that is a shutdown.
                if rclpy.ok(context=node.context):
                    raise
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_shutdown is not None:
            on_shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()



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
