"""`make demo` / `moe-policy-ros demo`: simulated dual-arm robot + bundled model, then a report.

Starts the graph of ``config/sim_dual_arm.yaml`` (``aloha_sim`` + ``moe_policy``) as separate
processes over real DDS, drives the policy to active, engages autonomy through the public
service, records every public topic for ``--duration`` seconds from a separate recorder node,
and writes ``report.md``, ``report.json`` and ``router.png`` (gates and active experts over
time) to ``--out``. The numbers come from two independent places: the policy node's own
``/diagnostics`` and the recorder's arrival times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_policy_ros.core.config import DEFAULT_NODE_NAME, load_config
from moe_policy_ros.core.diagnostics import CONTROL_LOOP, INFERENCE, ROUTER, Key, status_name
from moe_policy_ros.graph import node_graph, read_params_doc
from moe_policy_ros.tools.up import (
    LaunchOptions,
    apply_dds_environment,
    bring_up,
    prepare_params,
    start_graph,
    stop_graph,
)

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "sim_dual_arm.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="", help="parameter file (default sim_dual_arm)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds under autonomy")
    parser.add_argument("--out", default="out/demo", help="report directory")
    parser.add_argument("--model", default="", help="override policy.bundle")
    parser.add_argument("--log-level", default="warn")


@dataclass
class _Record:
    gates: list[tuple[float, list[float]]] = field(default_factory=list)
    active: list[tuple[float, list[int]]] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    command_lat_ms: list[float] = field(default_factory=list)
    success: list[tuple[float, bool]] = field(default_factory=list)
    modes: list[tuple[float, str]] = field(default_factory=list)
    diagnostics: dict[str, dict[str, str]] = field(default_factory=dict)
    diag_levels: dict[str, int] = field(default_factory=dict)
    joint_states: int = 0
    images: int = 0


def _default_params() -> Path:
    if REPO_CONFIG.is_file():
        return REPO_CONFIG
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("moe_policy_ros")) / "config" / "sim_dual_arm.yaml"


class _Recorder:
    """An rclpy node in this process that watches the public interface only."""

    def __init__(self, cfg_topics: dict[str, str]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import (
            Bool,
            Float32MultiArray,
            Float64MultiArray,
            Int32MultiArray,
            String,
        )

        from moe_policy_ros.session import (
            LATCHED_QOS,
            MONITOR_QOS,
            SENSOR_QOS,
            RosSession,
            stamp_to_ns,
        )

        self.rec = _Record()
        self.t0 = time.monotonic()
        self.session = RosSession("moe_policy_demo_recorder")
        self.node = self.session.node
        n, r = self.node, self.rec

        def t() -> float:
            return time.monotonic() - self.t0

        def on_cmd(_m: Any) -> None:
            r.commands.append(t())

        def on_js(_m: Any) -> None:
            r.joint_states += 1

        def on_img(_m: Any) -> None:
            r.images += 1

        def on_state(m: Any) -> None:
            now = n.get_clock().now().nanoseconds
            stamp = stamp_to_ns(m.header.stamp)
            r.command_lat_ms.append((now - stamp) / 1e6)

        def on_diag(m: Any) -> None:
            for st in m.status:
                if st.name.startswith("moe_policy"):
                    r.diagnostics[st.name] = {kv.key: kv.value for kv in st.values}
                    r.diagnostics[st.name]["_message"] = st.message
                    r.diag_levels[st.name] = st.level[0] if isinstance(st.level, bytes) else int(
                        st.level
                    )

        n.create_subscription(Float64MultiArray, cfg_topics["command"], on_cmd, 50)
        n.create_subscription(JointState, "/moe_policy/command", on_state, 50)
        n.create_subscription(JointState, "/joint_states", on_js, SENSOR_QOS)
        n.create_subscription(Image, cfg_topics["camera"], on_img, SENSOR_QOS)
        n.create_subscription(
            Float32MultiArray, "/moe_policy/router/gates",
            lambda m: r.gates.append((t(), list(m.data))), MONITOR_QOS,
        )
        n.create_subscription(
            Int32MultiArray, "/moe_policy/router/active",
            lambda m: r.active.append((t(), list(m.data))), MONITOR_QOS,
        )
        n.create_subscription(
            Bool, "/aloha_sim/success", lambda m: r.success.append((t(), bool(m.data))), 10
        )
        n.create_subscription(
            String, "/moe_policy/mode", lambda m: r.modes.append((t(), m.data)), LATCHED_QOS
        )
        n.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
        self.session.spin_in_background()

    def engage(self, timeout: float) -> str:
        from std_srvs.srv import SetBool

        cli: Any = self.node.create_client(SetBool, "/moe_policy/engage_autonomy")
        deadline = time.monotonic() + timeout
        last = "service not available"
        while time.monotonic() < deadline:
            if not cli.wait_for_service(timeout_sec=1.0):
                continue
            fut = cli.call_async(SetBool.Request(data=True))
            end = time.monotonic() + 5.0
            while not fut.done() and time.monotonic() < end:
                time.sleep(0.02)
            res = fut.result() if fut.done() else None
            if res is not None and res.success:
                return ""
            last = res.message if res is not None else "no answer"
            time.sleep(0.5)
        return last

    def close(self) -> None:
        self.session.close()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _plot(rec: _Record, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    if rec.gates:
        t = np.array([g[0] for g in rec.gates])
        g = np.array([g[1] for g in rec.gates])
        ax1.stackplot(t, g.T, labels=labels[: g.shape[1]])
        ax1.set_ylim(0, 1)
        ax1.legend(loc="upper right", fontsize=7, ncol=4)
    ax1.set_ylabel("gate (softmax)")
    ax1.set_title("Router gates and active experts")
    for ts, act in rec.active:
        ax2.scatter([ts] * len(act), act, s=6, c="tab:blue")
    ax2.set_yticks(range(len(labels)), labels, fontsize=7)
    ax2.set_ylabel("active experts")
    ax2.set_xlabel("time since start (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    params = Path(args.params) if args.params else _default_params()
    cfg = load_config(params)
    doc = read_params_doc(params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = node_graph(doc, sim=True)
    apply_dds_environment(doc, "demo")  # before the recorder's participant exists
    options = LaunchOptions(log_level=args.log_level, model=args.model or "")
    arm = cfg.robot.arms[0]
    topics = {
        "command": arm.command_topic if cfg.policy.execution.mode == "stream"
        else arm.trajectory_topic,
        "camera": cfg.cameras[0].topic if cfg.cameras else "/cameras/top/image_raw",
    }
    print(f"[demo] graph from {params}: {', '.join(s.name for s in specs)}", flush=True)
    run_params = prepare_params(doc, specs, options, out)  # out/params.yaml: what ran
    children = start_graph(specs, options, run_params)
    recorder = _Recorder(topics)
    rc = 0
    try:
        ok, msg = bring_up("/moe_policy", 90.0)
        print(f"[demo] lifecycle: {msg}", flush=True)
        if not ok:
            return 1
        refused = recorder.engage(60.0)
        if refused:
            print(f"[demo] engage refused: {refused}", file=sys.stderr)
            return 1
        t_engaged = time.monotonic() - recorder.t0
        print(f"[demo] autonomy engaged; running {args.duration:.0f} s", flush=True)
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            time.sleep(0.25)
            dead = [c.spec.name for c in children if c.proc.poll() is not None]
            if dead:
                print(f"[demo] node(s) exited early: {dead}", file=sys.stderr)
                rc = 1
                break
        time.sleep(1.2)  # one more diagnostics period
    finally:
        stop_graph(children)
        recorder.close()
    rec = recorder.rec
    report = _report(rec, cfg, params, t_engaged if rc == 0 else 0.0, args.duration)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    labels = report["router"]["labels"]
    _plot(rec, labels, out / "router.png")
    text = _render(report, out)
    (out / "report.md").write_text(text)
    print(text)
    return rc if rc else (0 if report["ok"] else 1)


def _report(
    rec: _Record, cfg: Any, params: Path, t_engaged: float, duration: float
) -> dict[str, Any]:
    diag = rec.diagnostics
    ctl = diag.get(status_name(DEFAULT_NODE_NAME, CONTROL_LOOP), {})
    inf = diag.get(status_name(DEFAULT_NODE_NAME, INFERENCE), {})
    rtr = diag.get(status_name(DEFAULT_NODE_NAME, ROUTER), {})
    cmds = [t for t in rec.commands if t >= t_engaged]
    periods = np.diff(cmds) if len(cmds) > 2 else np.array([])
    nominal = 1.0 / cfg.policy.control_rate_hz
    labels = [k.removeprefix(Key.USAGE_PREFIX) for k in rtr if k.startswith(Key.USAGE_PREFIX)]
    usage: dict[str, int] = {}
    for _t, act in rec.active:
        for i in act:
            key = labels[i] if i < len(labels) else str(i)
            usage[key] = usage.get(key, 0) + 1
    n_chunks = max(1, len(rec.active))
    switches = sum(1 for a, b in zip(rec.active, rec.active[1:], strict=False) if a[1] != b[1])
    success_any = any(s for _t, s in rec.success)

    def f(d: dict[str, str], k: str) -> float:
        try:
            return float(d[k])
        except (KeyError, ValueError):
            return float("nan")

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "params": str(params),
        "duration_s": duration,
        "control": {
            "target_hz": cfg.policy.control_rate_hz,
            "achieved_hz_node": f(ctl, Key.ACHIEVED_RATE_HZ),
            "achieved_hz_recorder": (len(periods) / float(np.sum(periods)))
            if len(periods) else float("nan"),
            "jitter_p99_ms_node": f(ctl, Key.JITTER_P99_MS),
            "jitter_p99_ms_recorder": float(np.percentile(np.abs(periods - nominal), 99) * 1e3)
            if len(periods) else float("nan"),
            "commands_received": len(cmds),
            "missed_ticks_node": f(ctl, Key.MISSED_TICKS),
        },
        "latency": {
            "obs_to_command_p50_ms": f(ctl, Key.OBS_TO_COMMAND_P50_MS),
            "obs_to_command_p99_ms": f(ctl, Key.OBS_TO_COMMAND_P99_MS),
            "command_delivery_p50_ms": _pct(rec.command_lat_ms, 50),
            "command_delivery_p99_ms": _pct(rec.command_lat_ms, 99),
            "inference_median_ms": f(inf, Key.LATENCY_MEDIAN_MS),
            "inference_p99_ms": f(inf, Key.LATENCY_P99_MS),
            "expert_stage_median_ms": f(inf, Key.EXPERT_STAGE_MEDIAN_MS),
            "backend": inf.get(Key.BACKEND, ""),
        },
        "router": {
            "labels": labels,
            "family": rtr.get(Key.FAMILY, ""),
            "strategy": rtr.get(Key.STRATEGY, ""),
            "chunks": len(rec.active),
            "mean_active_experts": statistics.fmean(len(a) for _t, a in rec.active)
            if rec.active else float("nan"),
            "usage_share": {k: v / n_chunks for k, v in sorted(usage.items())},
            "switches": switches,
        },
        "task": {"success": success_any, "success_messages": len(rec.success)},
        "modes": [m for _t, m in rec.modes],
        "inputs": {"joint_states": rec.joint_states, "images": rec.images},
        "diagnostic_levels": rec.diag_levels,
    }
    report["ok"] = bool(len(cmds) > 0 and rec.active and "AUTONOMY" in report["modes"])
    return report


def _render(r: dict[str, Any], out: Path) -> str:
    c, lat, rt = r["control"], r["latency"], r["router"]
    lines = [
        "# moe_policy_ros demo report",
        "",
        f"- date: {r['date']}; machine: {r['machine']}",
        f"- graph: aloha_sim + moe_policy from {r['params']}; {r['duration_s']:.0f} s autonomy",
        f"- modes seen: {' -> '.join(r['modes'])}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| control rate (target {c['target_hz']:g} Hz), node / recorder | "
        f"{c['achieved_hz_node']:.1f} / {c['achieved_hz_recorder']:.1f} Hz |",
        f"| period jitter p99, node / recorder | {c['jitter_p99_ms_node']:.2f} / "
        f"{c['jitter_p99_ms_recorder']:.2f} ms |",
        f"| missed control ticks (node) | {c['missed_ticks_node']:.0f} |",
        f"| observation-to-command latency p50 / p99 | {lat['obs_to_command_p50_ms']:.1f} / "
        f"{lat['obs_to_command_p99_ms']:.1f} ms |",
        f"| command delivery (stamp to recorder) p50 / p99 | "
        f"{lat['command_delivery_p50_ms']:.2f} / {lat['command_delivery_p99_ms']:.2f} ms |",
        f"| inference median / p99 ({lat['backend']}) | {lat['inference_median_ms']:.2f} / "
        f"{lat['inference_p99_ms']:.2f} ms |",
        f"| expert stage median | {lat['expert_stage_median_ms']:.2f} ms |",
        f"| chunks / mean active experts / switches | {rt['chunks']} / "
        f"{rt['mean_active_experts']:.2f} / {rt['switches']} |",
        f"| task success | {r['task']['success']} |",
        "",
        f"Expert usage ({rt['family']}, {rt['strategy']}): "
        + ", ".join(f"{k} {v:.0%}" for k, v in rt["usage_share"].items()),
        "",
        f"Plot of gates and active experts: {out / 'router.png'}",
        f"Result: {'OK' if r['ok'] else 'FAILED'}",
    ]
    return "\n".join(lines) + "\n"
