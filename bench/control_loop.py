"""Control-loop timing of the policy node alone: rate, period jitter p99, missed ticks.

Starts ``policy_node`` (bundled demo_adamoe, config/dual_arm.yaml, stream mode at 50 Hz) and a
fake robot in a *separate* process (joint states 50 Hz, a 128x96 camera at 15 Hz), engages
autonomy, and samples the node's own ``/diagnostics`` once a second for ``--seconds``.
Prints one JSON object; the steady-state figures exclude the first ``--settle`` seconds
(start-up and DDS discovery).

    python bench/control_loop.py --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
              joint_rate_hz=50.0, camera_rate_hz=15.0)
time.sleep({seconds})
r.close(); c.close()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=8.0)
    args = ap.parse_args()

    from diagnostic_msgs.msg import DiagnosticArray
    from helpers.ros import RosClient, engage, node_process, policy_params

    tmp = Path(tempfile.mkdtemp(prefix="moe_bench_"))
    params = policy_params(tmp)
    client = RosClient("bench_probe")
    samples: list[tuple[float, dict[str, str]]] = []

    def on_diag(arr: DiagnosticArray) -> None:
        for st in arr.status:
            if st.name == "moe_policy: control loop":
                samples.append((time.monotonic(), {kv.key: kv.value for kv in st.values}))

    client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    total = args.seconds + args.settle + 10
    robot = subprocess.Popen(
        [sys.executable, "-c", FAKE_ROBOT.format(repo=str(REPO), test=str(REPO / "test"),
                                                  seconds=total)],
        env=os.environ.copy(),
    )
    try:
        with node_process("moe_policy_ros.nodes.policy_node",
                          ["--params-file", str(params), "-p", "autostart:=true"],
                          tmp / "node.log"):
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
    rates = [float(v["achieved rate (Hz)"]) for v in steady]
    missed = [int(float(v["missed ticks"])) for v in steady]
    print(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "seconds": args.seconds,
        "rate_hz_median": statistics.median(rates),
        "rate_hz_min": min(rates),
        "jitter_p99_ms_last_window": float(steady[-1]["period jitter p99 (ms)"]),
        "missed_ticks_steady": missed[-1] - missed[0],
        "samples": len(steady),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
