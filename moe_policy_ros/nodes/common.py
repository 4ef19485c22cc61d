"""Shared rclpy glue for the nodes: lifecycle autostart and main()'s spin.

Message conversions live in :mod:`moe_policy_ros.nodes.convert`; QoS profiles, stamp
conversions, share paths and :class:`RosSession` in :mod:`moe_policy_ros.session` (the public
module for talking ROS, which the nodes use too).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from moe_policy_ros.core.inputs import InputError


def log_mode_events(logger: Any, events: Any) -> None:
    """Log the arbiter's mode transitions (WARN for the ones with a level, else INFO).

    One call site per severity: rclpy raises "Logger severity cannot be changed between
    calls" when one call site logs at two severities, which aborted the tick (no command,
    mode not republished) on the first WARN/ERROR transition."""
    for ev in events:
        text = f"mode {ev.previous.value} -> {ev.mode.value}: {ev.reason}"
        if ev.level:
            logger.warning(text)
        else:
            logger.info(text)


def guarded_input(logger: Any, what: str, store: Callable[[Any], object]) -> Callable[[Any], None]:
    """A subscription callback that stores a message and logs (throttled) the clear error of
    one it refuses (:class:`~moe_policy_ros.core.inputs.InputError`), never raising."""

    def callback(msg: Any) -> None:
        try:
            store(msg)
        except InputError as err:
            logger.warning(f"rejected {what}: {err}", throttle_duration_sec=2.0)

    return callback


def schedule_autostart(node: LifecycleNode) -> None:
    """With the ``autostart`` parameter true, configure then activate once the executor spins,
    as a lifecycle manager with autostart would (a failed configure is logged; the node stays
    unconfigured)."""
    if not (node.has_parameter("autostart") and bool(node.get_parameter("autostart").value)):
        return
    timer: Any = None

    def _once() -> None:
        timer.cancel()
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: configure failed; node stays unconfigured")
            return
        node.trigger_activate()

    timer = node.create_timer(0.1, _once)


#: set by SIGINT/SIGTERM (see :func:`init_ros`); :func:`spin_node` stops when it is set
_SHUTDOWN = threading.Event()


def _on_signal(_signum: int, _frame: Any) -> None:
    _SHUTDOWN.set()  # read by spin_node between spin_once calls; never raises


def _own_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM set :data:`_SHUTDOWN` (main thread only); the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def init_ros(args: list[str] | None = None) -> None:
    """``rclpy.init`` for a node executable, with this package's signal handling from the
    first moment: SIGINT and SIGTERM only set a flag that :func:`spin_node` reads, so a
    Ctrl-C during a slow start (MuJoCo, a camera) no longer raises a KeyboardInterrupt in the
    middle of a constructor or of an rclpy call; the node finishes starting, then shuts
    down cleanly. rclpy's own handlers are not installed (``SignalHandlerOptions.NO``)."""
    _SHUTDOWN.clear()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    _own_signals()


N = TypeVar("N", bound=Node)


def start_node(make: Callable[[], N], args: list[str] | None = None) -> N:
    """:func:`init_ros`, then ``make()`` the node; if building it raises, rclpy is shut down
    before the error propagates (every node executable's ``main`` starts this way)."""
    init_ros(args)
    try:
        return make()
    except BaseException:
        rclpy.try_shutdown()
        raise


def spin_node(node: Node, *, on_shutdown: Callable[[], None] | None = None) -> None:
    """Spin until SIGINT/SIGTERM or external shutdown, then clean up (ros2/demos style).

    Single-threaded on purpose: our nodes' callbacks only store data and their real work runs
    in their own threads, and rclpy's multi-threaded executor re-polls ready entities in a
    tight loop that starved those threads of the GIL (docs/benchmarks.md).

    SIGINT and SIGTERM only set a flag that the loop reads after each ``spin_once`` (at most
    0.1 s later): a signal never raises inside a callback or inside rclpy's C++ calls. Ctrl-C
    as a KeyboardInterrupt could land while rclpy converted a received message, which pybind11
    turns into a RuntimeError ("Unable to convert call argument") that crashed the node with a
    traceback instead of shutting it down.
    """
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    previous = _own_signals()  # already ours after init_ros; also for callers of rclpy.init
    try:
        while rclpy.ok(context=node.context) and not _SHUTDOWN.is_set():
            try:
                executor.spin_once(timeout_sec=0.1)
            except RCLError:
                # The context was shut down while the executor built its wait set (Jazzy's
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
        for sig, handler in previous.items():
            if handler not in (None, _on_signal):  # None: installed outside Python (rclpy's)
                signal.signal(sig, handler)
