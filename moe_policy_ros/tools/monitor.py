"""`moe-policy-ros monitor`: a live terminal view for machines without rqt.

Shows the mode, the active experts as bars over their gates, the dominant expert, inference
latency, control and input rates, and the safety status, from the policy node's public
topics and ``/diagnostics`` only (it works against any moe_policy node on the network).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from moe_policy_ros.core.diagnostics import Key, gate_label_experts, level_name, level_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", default="/moe_policy", help="policy node name (FQN)")
    parser.add_argument("--rate", type=float, default=4.0, help="redraws per second")
    parser.add_argument("--once", action="store_true",
                        help="print one frame once router data arrived, then exit")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="exit after this many seconds (0 = until Ctrl-C)")
    parser.add_argument("--no-color", action="store_true")


@dataclass
class MonitorState:
    mode: str = "?"
    gates: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    active: list[int] = field(default_factory=list)
    dominant: str = ""
    chunks: int = 0
    diagnostics: dict[str, tuple[int, str, dict[str, str]]] = field(default_factory=dict)


#: diagnostics values shown under each task's line
SHOWN_KEYS = (Key.LATENCY_MEDIAN_MS, Key.LATENCY_P99_MS, Key.ACHIEVED_RATE_HZ,
              Key.JITTER_P99_MS, Key.SWITCHES_PER_MINUTE, Key.ENTROPY)


def render(state: MonitorState, width: int = 80, color: bool = True) -> str:
    """One frame of the view as text (pure; unit-tested)."""

    def c(code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    mode_color = {"AUTONOMY": "32", "TELEOP": "36", "HOLD": "33", "ESTOP": "41;97"}
    lines = [
        c("1", "moe_policy_ros monitor")
        + f"   mode: {c(mode_color.get(state.mode, '0'), state.mode)}"
        f"   chunks: {state.chunks}   dominant: {state.dominant or '-'}",
        "",
    ]
    bar_w = max(10, width - 34)
    labels = state.labels or [str(i) for i in range(len(state.gates))]
    for i, g in enumerate(state.gates):
        on = i in state.active
        n = round(g * bar_w)
        bar = "#" * n + "." * (bar_w - n)
        name = labels[i] if i < len(labels) else str(i)
        mark = c("32", "*") if on else " "
        lines.append(f"{mark} {name[:14]:<14} {g:5.2f} {c('32', bar) if on else bar}")
    if not state.gates:
        lines.append("  (no router data yet)")
    lines.append("")
    for name, (level, msg, values) in sorted(state.diagnostics.items()):
        lvl = level_name(level)
        col = {0: "32", 1: "33"}.get(level, "31")
        short = name.split(": ", 1)[-1]
        lines.append(f"[{c(col, f'{lvl:<5}')}] {short:<13} {msg[: max(10, width - 23)]}")
        for key in SHOWN_KEYS:
            if key in values:
                lines.append(f"          {key}: {values[key]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float32MultiArray, Int32MultiArray, String

    from moe_policy_ros.session import LATCHED_QOS, MONITOR_QOS, RosSession

    session = RosSession("moe_policy_monitor")
    node = session.node
    st = MonitorState()
    lock = threading.Lock()
    base = args.node.rstrip("/")
    short = base.rsplit("/", 1)[-1]

    def on_gates(m: Any) -> None:
        with lock:
            st.gates = list(m.data)
            st.chunks += 1
            labels = gate_label_experts(m.layout.dim[0].label) if m.layout.dim else None
            st.labels = labels or st.labels

    def on_active(m: Any) -> None:
        with lock:
            st.active = list(m.data)

    def on_diag(m: Any) -> None:
        with lock:
            for s in m.status:
                if s.name.startswith(short + ":"):
                    values = {v.key: v.value for v in s.values}
                    st.diagnostics[s.name] = (level_of(s.level), s.message, values)

    def on_mode(m: Any) -> None:
        with lock:
            st.mode = m.data

    def on_dominant(m: Any) -> None:
        with lock:
            st.dominant = m.data

    node.create_subscription(Float32MultiArray, f"{base}/router/gates", on_gates, MONITOR_QOS)
    node.create_subscription(Int32MultiArray, f"{base}/router/active", on_active, MONITOR_QOS)
    node.create_subscription(String, f"{base}/router/dominant", on_dominant, MONITOR_QOS)
    node.create_subscription(String, f"{base}/mode", on_mode, LATCHED_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    t_end = time.monotonic() + args.timeout if args.timeout > 0 else float("inf")
    next_draw = 0.0
    rc = 0
    try:
        while time.monotonic() < t_end:
            session.executor.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if now < next_draw:
                continue
            next_draw = now + 1.0 / args.rate
            with lock:
                ready = bool(st.gates) and bool(st.diagnostics)
                frame = render(st, shutil.get_terminal_size().columns, not args.no_color)
            if args.once:
                if ready:
                    print(frame)
                    return 0
                continue
            sys.stdout.write("\x1b[H\x1b[2J" + frame + "\n")
            sys.stdout.flush()
        if args.once:
            print("monitor: no router data received before the timeout", file=sys.stderr)
            rc = 1
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return rc
