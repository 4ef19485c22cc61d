"""`moe-policy-ros up PARAMS.yaml`: start the node graph where `ros2 launch` is not installed.

It starts the same nodes as ``launch/dual_arm.launch.py`` (and ``sim_dual_arm.launch.py`` for
a file with an ``aloha_sim`` section) from the same parameter file (see
:mod:`moe_policy_ros.graph`), each as its own process, drives the policy node's lifecycle to
active through its ``change_state`` service (like nav2's lifecycle manager with autostart),
optionally respawns a process that dies, and on SIGINT/SIGTERM deactivates the policy and
stops every child (SIGINT, then SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_policy_ros.core.config import ConfigError, node_fqn
from moe_policy_ros.core.transport import dds_environment
from moe_policy_ros.graph import (
    POLICY_NODE,
    NodeSpec,
    node_graph,
    read_params_doc,
    rewrite_params,
    write_params,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("params", help="ROS 2 parameter file (the one the launch file takes)")
    parser.add_argument("--namespace", default="",
                        help="namespace for every node; the file's relative topic names "
                        "follow it (the launch files' namespace argument)")
    parser.add_argument("--model", default="", help="override policy.bundle")
    parser.add_argument("--sim", choices=("auto", "on", "off"), default="auto",
                        help="start aloha_sim (auto: when the file has an aloha_sim section)")
    parser.add_argument("--no-autostart", action="store_true",
                        help="leave the policy node unconfigured")
    parser.add_argument("--respawn", action="store_true", help="restart a node that exits")
    parser.add_argument("--use-sim-time", action="store_true")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--enclave", default="", help="SROS2 enclave for every node")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds (0 = run until signalled)")
    parser.add_argument("--activate-timeout", type=float, default=60.0,
                        help="seconds to wait for configure+activate")


@dataclass(frozen=True)
class LaunchOptions:
    """How the graph's processes are started (the ``up`` options other tools set too)."""

    namespace: str = ""
    log_level: str = "info"
    use_sim_time: bool = False
    model: str = ""  # overrides policy.bundle of the lifecycle (policy) node when set
    enclave: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LaunchOptions:
        return cls(args.namespace, args.log_level, bool(args.use_sim_time), args.model or "",
                   args.enclave or "")


@dataclass
class NodeProcess:
    """One started node of the graph (restarted in place by ``--respawn``)."""

    spec: NodeSpec
    cmd: list[str]
    proc: subprocess.Popen[bytes]
    restarts: int = 0


def overrides_for(specs: list[NodeSpec], options: LaunchOptions) -> dict[str, dict[str, Any]]:
    """Per-node parameter overrides from the command line (``--model``, ``--use-sim-time``)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        values: dict[str, Any] = {}
        if options.use_sim_time:
            values["use_sim_time"] = True
        if spec.lifecycle and options.model:
            values["policy.bundle"] = options.model
        out[spec.name] = values
    return out


def prepare_params(
    doc: dict[str, Any], specs: list[NodeSpec], options: LaunchOptions, directory: Path
) -> Path:
    """The parameter file every process of the graph reads (:func:`graph.rewrite_params`)."""
    rewritten = rewrite_params(doc, specs, options.namespace, overrides_for(specs, options))
    return write_params(rewritten, directory)


def node_command(spec: NodeSpec, options: LaunchOptions, params: Path) -> list[str]:
    """The command line of one node; ``params`` is the file :func:`prepare_params` wrote."""
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}",
           "--params-file", str(params), "--log-level", options.log_level]
    if options.namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{options.namespace.strip('/')}"]
    for src, dst in spec.remappings:
        cmd += ["-r", f"{src}:={dst}"]
    if options.enclave:
        cmd += ["--enclave", options.enclave]
    return cmd


def apply_dds_environment(doc: dict[str, Any], tag: str = "up") -> None:
    """Put the camera transport profile (core.transport) into this process's environment,
    which every node started from here inherits; the user's own profile wins."""
    extra = dds_environment(doc)
    if extra:
        os.environ.update(extra)
        shown = ", ".join(f"{k}={v}" for k, v in extra.items())
        print(f"[{tag}] camera transport: {shown} (set it yourself to use your own)", flush=True)


def spawn(spec: NodeSpec, cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start one node process in its own session (so a signal reaches its whole group)."""
    print(f"[up] starting {spec.name}: {' '.join(cmd[2:4])}", flush=True)
    return subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)


def start_graph(
    specs: list[NodeSpec], options: LaunchOptions, params: Path
) -> list[NodeProcess]:
    """Start every node of the graph, each reading ``params``."""
    out = []
    for spec in specs:
        cmd = node_command(spec, options, params)
        out.append(NodeProcess(spec, cmd, spawn(spec, cmd)))
    return out


def stop_graph(children: list[NodeProcess], grace_s: float = 5.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL, each after ``grace_s`` for what is still alive."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [c for c in children if c.proc.poll() is None]
        if not alive:
            return
        for c in alive:
            try:
                os.killpg(c.proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for c in alive:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


class _Aborted(Exception):
    """Bring-up gave up early: a signal arrived or a node exited (the reason is the text)."""


class _LifecycleClient:
    """Drives a lifecycle node through its services (rclpy imported lazily).

    ``abort`` is polled while waiting; a non-empty reason stops the wait (raises _Aborted).
    """

    def __init__(self, node_fqn: str, abort: Callable[[], str] | None = None) -> None:
        self._abort = abort or (lambda: "")
        from lifecycle_msgs.srv import ChangeState, GetState

        from moe_policy_ros.session import RosSession

        self._session = RosSession("moe_policy_ros_up")
        self._node = self._session.node
        self._executor = self._session.executor
        self._change: Any = self._node.create_client(ChangeState, f"{node_fqn}/change_state")
        self._get: Any = self._node.create_client(GetState, f"{node_fqn}/get_state")
        self._ChangeState = ChangeState
        self._GetState = GetState

    def _check(self) -> None:
        reason = self._abort()
        if reason:
            raise _Aborted(reason)

    def _call(self, client: Any, req: Any, timeout: float) -> Any:
        # Wait in short slices so that a signal or a dead node is noticed at once.
        deadline = time.monotonic() + timeout
        while not client.wait_for_service(timeout_sec=0.2):
            self._check()
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"service {client.srv_name} not available after {timeout:.0f} s"
                )
        fut = client.call_async(req)
        while not fut.done() and time.monotonic() < deadline:
            self._executor.spin_until_future_complete(fut, timeout_sec=0.2)
            if not fut.done():
                self._check()
        if not fut.done():
            raise TimeoutError(f"service {client.srv_name} did not answer in {timeout:.0f} s")
        return fut.result()

    def state(self, timeout: float) -> str:
        return str(self._call(self._get, self._GetState.Request(), timeout).current_state.label)

    def transition(self, transition_id: int, timeout: float) -> bool:
        req = self._ChangeState.Request()
        req.transition.id = transition_id
        return bool(self._call(self._change, req, timeout).success)

    def close(self) -> None:
        self._session.close()


def bring_up(
    fqn: str, timeout: float, abort: Callable[[], str] | None = None
) -> tuple[bool, str]:
    """Configure and activate ``fqn``; (active, message). Never raises for a timeout, a
    signal or a dead node (``abort`` returns the reason to give up, "" to go on)."""
    from lifecycle_msgs.msg import Transition

    client = _LifecycleClient(fqn, abort)
    try:
        state = client.state(timeout)
        if state == "unconfigured":
            if not client.transition(Transition.TRANSITION_CONFIGURE, timeout):
                return False, f"{fqn}: configure failed (see its log and /diagnostics)"
            state = client.state(timeout)
        if state == "inactive":
            if not client.transition(Transition.TRANSITION_ACTIVATE, timeout):
                return False, f"{fqn}: activate failed"
            state = client.state(timeout)
        return state == "active", f"{fqn}: {state}"
    except (TimeoutError, _Aborted) as err:
        return False, f"{fqn}: not brought up: {err}"
    finally:
        client.close()


def _shut_down_policy(fqn: str) -> None:
    from lifecycle_msgs.msg import Transition

    try:
        client = _LifecycleClient(fqn)
    except Exception:
        return
    try:
        if client.state(2.0) == "active":
            client.transition(Transition.TRANSITION_DEACTIVATE, 2.0)
    except Exception:
        pass
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    params = Path(args.params).resolve()
    try:
        doc = read_params_doc(params)
        sim = None if args.sim == "auto" else args.sim == "on"
        specs = node_graph(doc, sim=sim, namespace=args.namespace)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    apply_dds_environment(doc)
    with tempfile.TemporaryDirectory(prefix="moe_policy_ros_up_") as tmp:
        options = LaunchOptions.from_args(args)
        return _run_graph(specs, args, prepare_params(doc, specs, options, Path(tmp)))


def _run_graph(specs: list[NodeSpec], args: argparse.Namespace, params: Path) -> int:
    stop = threading.Event()

    def _signal(_s: int, _f: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _signal)
    signal.signal(signal.SIGTERM, _signal)
    print(f"[up] parameters as the nodes read them: {params}", flush=True)
    children = start_graph(specs, LaunchOptions.from_args(args), params)
    policy_fqn = node_fqn(POLICY_NODE, args.namespace)
    rc = 0

    def _abort() -> str:
        if stop.is_set():
            return "interrupted"
        dead = [f"{c.spec.name} exited ({c.proc.poll()})" for c in children
                if c.proc.poll() is not None]
        return "; ".join(dead) if dead and not args.respawn else ""

    try:
        if not args.no_autostart:
            ok, msg = bring_up(policy_fqn, args.activate_timeout, _abort)
            print(f"[up] {msg}", flush=True)
            if not ok and not stop.is_set():  # a signal during bring-up is not a failure
                rc = 1
            if not ok:
                stop.set()
        t_end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        while not stop.is_set() and time.monotonic() < t_end:
            stop.wait(0.2)
            for c in children:
                code = c.proc.poll()
                if code is None or stop.is_set():
                    continue
                if args.respawn:
                    c.restarts += 1
                    print(f"[up] {c.spec.name} exited ({code}); respawn #{c.restarts}",
                          flush=True)
                    time.sleep(1.0)
                    c.proc = spawn(c.spec, c.cmd)
                    if c.spec.lifecycle and not args.no_autostart:
                        ok, msg = bring_up(policy_fqn, args.activate_timeout, _abort)
                        print(f"[up] {msg}", flush=True)
                else:
                    print(f"[up] {c.spec.name} exited ({code}); stopping", flush=True)
                    rc = code or 1
                    stop.set()
    finally:
        if any(c.spec.lifecycle and c.proc.poll() is None for c in children):
            _shut_down_policy(policy_fqn)
        stop_graph(children)
        print("[up] all nodes stopped", flush=True)
    return rc
