"""Control-loop timing of the policy node alone: rate, period jitter p50/p99/max, missed ticks.

Starts ``policy_node`` (bundled demo_adamoe, config/dual_arm.yaml, stream mode at ``--rate``
Hz, default 50) and a fake robot in a *separate* process (joint states 50 Hz, an rgb8 camera
of ``--camera`` HxW, default 96x128, at 15 Hz), engages autonomy, and samples the node's own
``/diagnostics`` once a second for ``--seconds``. With ``--idle`` the fake robot sends no
images: no decoding, no inference, the node stays in HOLD and its control loop publishes hold
commands (the loop alone). Prints one JSON object; the steady-state figures exclude the first
``--settle`` seconds (start-up and DDS discovery). The node's jitter figures are over its
last 1000 periods (20 s at 50 Hz, 2 s at 500 Hz): p50/p99 are the medians over the steady
samples, max the largest.

    python bench/control_loop.py --seconds 30
    for r in 50 100 200 500; do python bench/control_loop.py --rate $r --camera 480x640; done
    python bench/control_loop.py --rate 100 --idle
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "test")]

FAKE_ROBOT = """
import sys, time
sys.path[:0] = [{repo!r}, {test!r}]
from helpers import REPO
from helpers.ros import FakeRobot, RosClient, bundle_home
from moe_policy_ros.core.config import load_config
names = load_config(REPO / "config" / "dual_arm.yaml").robot.joint_names
c = RosClient("bench_fake_robot")
r = FakeRobot(c, names, bundle_home(REPO / "models" / "demo_adamoe", names),
              size={size!r}, joint_rate_hz=50.0, camera_rate_hz=15.0)
r.publish_images = {images!r}
time.sleep({seconds})
r.close(); c.close()
"""


def _flag(value: str | None) -> bool | None:
    """A ``true``/``false`` option as a parameter value (None: not given)."""
    return None if value is None else value == "true"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=8.0)
    ap.add_argument("--rate", type=float, default=50.0, help="control rate (Hz)")
    ap.add_argument("--camera", default="96x128", help="fake camera HxW (rgb8, 15 Hz)")
    ap.add_argument("--trigger", choices=("timer", "frame"), default="timer",
                    help="policy.inference_trigger (frame: infer on each new camera frame)")
    ap.add_argument("--inference-rate", type=float, default=10.0,
                    help="policy.inference_rate_hz (the frame trigger's ceiling)")
    ap.add_argument("--mode", choices=("stream", "chunk"), default="stream",
                    help="policy.execution.mode")
    ap.add_argument("--switch-interval-ms", type=float, default=None,
                    help="policy.gil_switch_interval_ms (default: the parameter's default)")
    ap.add_argument("--priority", type=int, default=None,
                    help="policy.control_thread_priority (SCHED_FIFO 1-99; 0 = normal)")
    ap.add_argument("--align-ticks", choices=("true", "false"), default=None,
                    help="policy.align_ticks (default: the parameter's default)")
    ap.add_argument("--send-on-arrival", choices=("true", "false"), default=None,
                    help="policy.execution.send_on_arrival (chunk mode; default: the "
                    "parameter's default)")
    ap.add_argument("--revise-on-arrival", choices=("true", "false"), default=None,
                    help="policy.execution.revise_on_arrival (stream mode; default: the "
                    "parameter's default)")
    ap.add_argument("--idle", action="store_true",
                    help="no images: no decoding or inference, the node holds")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.camera.lower().split("x"))

    from diagnostic_msgs.msg import DiagnosticArray
    from helpers.ros import RosClient, engage, node_process, policy_params

    from moe_policy_ros.core.diagnostics import Key

    # The camera transport profile, as `moe-policy-ros up` gives its nodes (the fake robot
    # publishes the frames, so it needs it most): without it Fast DDS loses most 640x480
    # frames between processes and the node infers on stale ones (runs before 2026-12-01).
    from moe_policy_ros.core.transport import dds_environment
    from moe_policy_ros.graph import read_params_doc
    from moe_policy_ros.tools.bench import run_header

    os.environ.update(dds_environment(read_params_doc(REPO / "config" / "dual_arm.yaml")))
    tmp = Path(tempfile.mkdtemp(prefix="moe_bench_"))
    params = policy_params(tmp, policy__control_rate_hz=args.rate,
                           policy__inference_trigger=args.trigger,
                           policy__inference_rate_hz=args.inference_rate,
                           policy__execution__mode=args.mode,
                           **{k: v for k, v in (
                               ("policy__gil_switch_interval_ms", args.switch_interval_ms),
                               ("policy__control_thread_priority", args.priority),
                               ("policy__align_ticks", _flag(args.align_ticks)),
                               ("policy__execution__send_on_arrival",
                                _flag(args.send_on_arrival)),
                               ("policy__execution__revise_on_arrival",
                                _flag(args.revise_on_arrival)))
                              if v is not None})
    client = RosClient("bench_probe")
    samples: list[tuple[float, dict[str, str]]] = []
    inference: list[tuple[float, dict[str, str]]] = []
    inputs: list[tuple[float, dict[str, str]]] = []

    def on_diag(arr: DiagnosticArray) -> None:
        for st in arr.status:
            if st.name == "moe_policy: control loop":
                samples.append((time.monotonic(), {kv.key: kv.value for kv in st.values}))
            elif st.name == "moe_policy: inference":
                inference.append((time.monotonic(), {kv.key: kv.value for kv in st.values}))
            elif st.name == "moe_policy: inputs":
                inputs.append((time.monotonic(), {kv.key: kv.value for kv in st.values}))

    client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    total = args.seconds + args.settle + 10
    robot = subprocess.Popen(
        [sys.executable, "-c", FAKE_ROBOT.format(repo=str(REPO), test=str(REPO / "test"),
                                                  seconds=total, size=size,
                                                  images=not args.idle)],
        env=os.environ.copy(),
    )
    try:
        with node_process("moe_policy_ros.nodes.policy_node",
                          ["--params-file", str(params), "-p", "autostart:=true"],
                          tmp / "node.log"):
            if args.idle:
                time.sleep(5.0)  # configured and active; stale camera: HOLD
            else:
                refused = engage(client, timeout=60)
                if refused:
                    print(f"engage refused: {refused}", file=sys.stderr)
                    return 1
            t0 = time.monotonic()
            time.sleep(args.settle + args.seconds)
    finally:
        robot.terminate()
        client.close()
    steady = [v for t, v in samples if t >= t0 + args.settle]
    rates = [float(v[Key.ACHIEVED_RATE_HZ]) for v in steady]
    missed = [int(float(v[Key.MISSED_TICKS])) for v in steady]
    p50 = [float(v[Key.JITTER_P50_MS]) for v in steady]
    p99 = [float(v[Key.JITTER_P99_MS]) for v in steady]
    mx = [float(v[Key.JITTER_MAX_MS]) for v in steady]

    def last(rows: list[tuple[float, dict[str, str]]], key: str) -> float | None:
        vals = [v[key] for t, v in rows if t >= t0 + args.settle and key in v]
        return float(vals[-1]) if vals and vals[-1] != "n/a" else None

    def newest(key: str) -> str | None:
        # a text value of the control task, as last reported
        return next((v[key] for _, v in reversed(samples) if key in v), None)

    def last_camera(key: str) -> float | None:
        # "<camera> <key>" in the inputs task; the fake robot has one camera
        cams = {k for _, v in inputs for k in v if k.endswith(" " + key)}
        return last(inputs, min(cams)) if cams else None

    print(json.dumps({
        **run_header("bench/control_loop.py", sys.argv[1:]),
        "seconds": args.seconds,
        "control_rate_hz": args.rate,
        "camera": "none (idle)" if args.idle else f"{size[0]}x{size[1]} rgb8 15 Hz",
        "rate_hz_median": statistics.median(rates),
        "rate_hz_min": min(rates),
        "jitter_p50_ms": statistics.median(p50),
        "jitter_p99_ms": statistics.median(p99),
        "jitter_max_ms": max(mx),
        "missed_ticks_steady": missed[-1] - missed[0],
        "trigger": args.trigger,
        "inference_rate_hz": args.inference_rate,
        "execution_mode": args.mode,
        "dds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "Fast DDS defaults"),
        "gil_switch_interval_ms": args.switch_interval_ms,
        "control_thread_priority": args.priority,
        "align_ticks": args.align_ticks,
        "send_on_arrival": args.send_on_arrival,
        "revise_on_arrival": args.revise_on_arrival,
        # the node's windows at the end of the run (obs-to-command: frame stamp -> first
        # command computed from it; inference: the policy call)
        "obs_to_command_p50_ms": last(samples, Key.OBS_TO_COMMAND_P50_MS),
        "obs_to_command_p99_ms": last(samples, Key.OBS_TO_COMMAND_P99_MS),
        "inference_p50_ms": last(inference, Key.LATENCY_MEDIAN_MS),
        "inference_p99_ms": last(inference, Key.LATENCY_P99_MS),
        # where obs-to-command goes before the policy runs: frame stamp -> receipt, and the
        # observation's age when the inference from it starts (+ decoding, + the wait)
        "stamp_to_receipt_p50_ms": last_camera(Key.STAMP_TO_RECEIPT_P50_MS),
        "stamp_to_receipt_p99_ms": last_camera(Key.STAMP_TO_RECEIPT_P99_MS),
        "obs_age_at_start_p50_ms": last(inference, Key.OBS_AGE_AT_START_P50_MS),
        "obs_age_at_start_p99_ms": last(inference, Key.OBS_AGE_AT_START_P99_MS),
        # ... and after it: a chunk's arrival -> the tick that takes it, and how far tick
        # alignment moved the grid
        "tick_wait_p50_ms": last(samples, Key.TICK_WAIT_P50_MS),
        "tick_wait_p99_ms": last(samples, Key.TICK_WAIT_P99_MS),
        "chunks_sent_on_arrival": newest(Key.SENT_ON_ARRIVAL),
        "tick_shift_ms": newest(Key.TICK_SHIFT_MS),
        "samples": len(steady),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
