"""`make demo` / `moe-policy-ros demo`: simulated dual-arm robot + bundled model, then a report.

Starts the graph of ``config/sim_dual_arm.yaml`` (``aloha_sim`` + ``moe_policy``) as separate
processes over real DDS and runs ``--episodes`` whole episodes through it as ``evaluate`` does
(:class:`moe_policy_ros.evaluation.ros_runner.RosEpisodeRunner`: sim reset with the episode's
seed, policy re-activated, autonomy engaged, ``~/success`` watched, disengaged), printing each
episode's result. A separate recorder node watches every public topic. Written to ``--out``:
``report.md`` / ``report.json`` (per-episode results, rates, latency, router statistics),
``router.png`` (gates and active experts over time, episodes shaded) and ``demo.mp4`` (the
sim's camera with the episode, mode and active experts drawn on it,
:class:`moe_policy_ros.evaluation.video.OverlayVideo`). The numbers come from two independent
places: the policy node's own ``/diagnostics`` and the recorder's arrival times.

The model is ``policy.bundle`` of the parameter file (one line in
``config/sim_dual_arm.yaml``), or ``--model``; the task is ``aloha_sim.task`` there.
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
from moe_policy_ros.core.diagnostics import (
    CONTROL_LOOP,
    INFERENCE,
    ROUTER,
    Key,
    level_of,
    status_name,
)
from moe_policy_ros.evaluation.metrics import percentile
from moe_policy_ros.graph import SIM_NODE, read_params_doc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="", help="parameter file (default sim_dual_arm)")
    parser.add_argument("--episodes", type=int, default=3,
                        help="whole episodes, the sim reset between them")
    parser.add_argument("--seed-start", type=int, default=1000,
                        help="seed of the first episode (object poses; evaluation seeds)")
    parser.add_argument("--max-steps", type=int, default=400,
                        help="control steps per episode (400 = 8 s at 50 Hz)")
    parser.add_argument("--episode-timeout", type=float, default=60.0,
                        help="wall-clock seconds before an episode counts as failed")
    parser.add_argument("--no-video", action="store_true", help="skip demo.mp4")
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
                    r.diag_levels[st.name] = level_of(st.level)

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

    def close(self) -> None:
        self.session.close()


def _or_nan(value: float | None) -> float:
    """The report's missing number is NaN (metrics.percentile returns None for no data)."""
    return float("nan") if value is None else value


def _plot(rec: _Record, labels: list[str], path: Path,
          windows: list[tuple[float, float]] = ()) -> None:  # type: ignore[assignment]
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
    for i, (a, b) in enumerate(windows):  # the episodes under autonomy
        for ax in (ax1, ax2):
            ax.axvspan(a, b, color="tab:green", alpha=0.08, lw=0)
        ax2.text(a, -0.9, f"ep {i + 1}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _graph_failure(error: str) -> bool:
    """An episode error that means the graph did not work (a node exited, went silent or did
    not answer), as opposed to the policy node holding on its own (stale inputs, no command
    in time on a loaded machine): that is the safety layer working, reported per episode."""
    if not error:
        return False
    return not error.startswith("policy node left AUTONOMY") or "stopped publishing" in error


def _sim_task(doc: dict[str, Any]) -> str:
    from moe_policy_ros.core.config import params_for_node

    return str(params_for_node(doc, SIM_NODE, "").get("task", "transfer_cube"))


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.episodes < 1:
        print(f"[demo] --episodes must be >= 1 (got {args.episodes})", file=sys.stderr)
        return 2
    from moe_policy_ros.evaluation.ros_runner import RosEpisodeRunner
    from moe_policy_ros.evaluation.video import OverlayVideo, VideoError
    from moe_policy_ros.rollout import LoopSettings, default_params_file, resolve_bundle

    params = Path(args.params) if args.params else default_params_file()
    cfg = load_config(params)
    doc = read_params_doc(params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = _sim_task(doc)
    bundle = resolve_bundle(args.model or cfg.policy.bundle, params)
    arm = cfg.robot.arms[0]
    topics = {
        "command": arm.command_topic if cfg.policy.execution.mode == "stream"
        else arm.trajectory_topic,
        "camera": cfg.cameras[0].topic if cfg.cameras else "/cameras/top/image_raw",
    }
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    print(f"[demo] {bundle.name} on {task}: {args.episodes} episodes of up to "
          f"{args.max_steps} steps (seeds {seeds[0]}..{seeds[-1]}), graph from {params}",
          flush=True)
    runner: Any = None
    video: OverlayVideo | None = None
    holder: list[Any] = []

    def caption() -> list[str]:
        return holder[0].status_lines() if holder else ["starting"]

    if not args.no_video:
        video = OverlayVideo(out / "demo.mp4", caption, fps=15.0)
    settings = LoopSettings(max_steps=args.max_steps, episode_timeout_s=args.episode_timeout)
    results = []
    rc = 0
    try:
        runner = RosEpisodeRunner(
            task, params, bundle, settings=settings, log_level=args.log_level,
            frame_sink=None if video is None else video.add, work_dir=out,  # out/params.yaml
        )
    except (RuntimeError, OSError, ValueError) as err:
        print(f"[demo] {err}", file=sys.stderr)
        if video is not None:
            video.close()
        return 1
    holder.append(runner)
    recorder = _Recorder(topics)
    try:
        for seed in seeds:
            r = runner.run(seed)
            results.append(r)
            status = "SUCCESS" if r.success else "failure"
            print(f"[demo] episode {len(results)}/{len(seeds)} seed {seed}: {status} after "
                  f"{r.steps} steps, {r.mean_active_experts:.2f} active experts, "
                  f"{r.switches} switches{f' ({r.error})' if r.error else ''}", flush=True)
            if _graph_failure(r.error):
                rc = 1
        time.sleep(1.2)  # one more diagnostics period
    finally:
        runner.close()
        recorder.close()
        if video is not None:
            try:
                video.close()
            except VideoError as err:
                print(f"[demo] no video: {err}", file=sys.stderr)
    rec = recorder.rec
    windows = [(a - recorder.t0, b - recorder.t0) for a, b in runner.windows]
    report = _report(rec, cfg, params, windows, results)
    report["bundle"] = str(bundle)
    report["task"]["name"] = task
    report["video"] = str(video.path) if video is not None and video.frames_written else None
    report["video_frames"] = video.frames_written if video is not None else 0
    (out / "report.json").write_text(json.dumps(report, indent=2))
    labels = report["router"]["labels"]
    _plot(rec, labels, out / "router.png", windows)
    text = _render(report, out)
    (out / "report.md").write_text(text)
    print(text)
    return rc if rc else (0 if report["ok"] else 1)


def _report(
    rec: _Record, cfg: Any, params: Path, windows: list[tuple[float, float]],
    results: list[Any],
) -> dict[str, Any]:
    diag = rec.diagnostics
    ctl = diag.get(status_name(DEFAULT_NODE_NAME, CONTROL_LOOP), {})
    inf = diag.get(status_name(DEFAULT_NODE_NAME, INFERENCE), {})
    rtr = diag.get(status_name(DEFAULT_NODE_NAME, ROUTER), {})
    # Command periods inside the episodes only (between them the node is inactive). The
    # recorder's rate is (n - 1) / span pooled over the episode windows, RateMeter's formula,
    # but offline over disjoint windows, from the same periods as its jitter: not a RateMeter.
    cmds = [t for t in rec.commands if any(a <= t <= b for a, b in windows)]
    periods = np.concatenate([
        np.diff([t for t in rec.commands if a <= t <= b]) for a, b in windows
    ] or [np.array([])]) if windows else np.array([])
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
        "duration_s": float(sum(b - a for a, b in windows)),
        "control": {
            "target_hz": cfg.policy.control_rate_hz,
            "achieved_hz_node": f(ctl, Key.ACHIEVED_RATE_HZ),
            "achieved_hz_recorder": (len(periods) / float(np.sum(periods)))
            if len(periods) else float("nan"),
            "jitter_p99_ms_node": f(ctl, Key.JITTER_P99_MS),
            "jitter_p99_ms_recorder": _or_nan(percentile(np.abs(periods - nominal) * 1e3, 99)),
            "commands_received": len(cmds),
            "missed_ticks_node": f(ctl, Key.MISSED_TICKS),
        },
        "latency": {
            "obs_to_command_p50_ms": f(ctl, Key.OBS_TO_COMMAND_P50_MS),
            "obs_to_command_p99_ms": f(ctl, Key.OBS_TO_COMMAND_P99_MS),
            "command_delivery_p50_ms": _or_nan(percentile(rec.command_lat_ms, 50)),
            "command_delivery_p99_ms": _or_nan(percentile(rec.command_lat_ms, 99)),
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
        "task": {"success": success_any, "success_messages": len(rec.success),
                 "successes": sum(1 for r in results if r.success),
                 "episodes": len(results)},
        "episodes": [
            {"seed": r.seed, "success": r.success, "steps": r.steps,
             "success_step": r.success_step, "mean_active_experts": r.to_dict()[
                 "mean_active_experts"], "switches": r.switches, "error": r.error}
            for r in results
        ],
        "modes": [m for _t, m in rec.modes],
        "inputs": {"joint_states": rec.joint_states, "images": rec.images},
        "diagnostic_levels": rec.diag_levels,
    }
    report["ok"] = bool(len(cmds) > 0 and rec.active and "AUTONOMY" in report["modes"]
                        and results and not any(_graph_failure(r.error) for r in results))
    return report


def _episode_rows(episodes: list[dict[str, Any]]) -> list[str]:
    rows = []
    for i, e in enumerate(episodes, 1):
        k = e["mean_active_experts"]
        rows.append(
            f"| {i} | {e['seed']} | {'success' if e['success'] else 'failure'} | {e['steps']} "
            f"| {'n/a' if k is None else f'{k:.2f}'} | {e['switches']} | {e['error'] or '-'} |"
        )
    return rows


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
        f"| task success (episodes) | {r['task']['successes']}/{r['task']['episodes']} |",
        "",
        f"Expert usage ({rt['family']}, {rt['strategy']}): "
        + ", ".join(f"{k} {v:.0%}" for k, v in rt["usage_share"].items()),
        "",
        "| episode | seed | result | steps | mean active experts | switches | error |",
        "|---|---|---|---|---|---|---|",
        *_episode_rows(r["episodes"]),
        "",
        f"Plot of gates and active experts: {out / 'router.png'}",
        f"Video (camera view, mode and active experts drawn on it): "
        f"{r['video'] or 'not written'}",
        f"Result: {'OK' if r['ok'] else 'FAILED'}",
    ]
    return "\n".join(lines) + "\n"
