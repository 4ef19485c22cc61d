"""How late the simulator's physics ticks run while a camera renders: inline vs render thread.

The ``aloha_sim`` node paces physics in ticks of 2 x 2 ms on absolute deadlines. This runs the
same pacing for ``--seconds`` with the ``top`` camera rendered at ``--size`` and
``--camera-rate`` Hz, two ways:

* ``inline``: the render runs in the physics thread at each camera instant (the node before
  2026-11-30, sixth session);
* ``thread``: the physics thread takes :meth:`AlohaSim.snapshot` and a camera thread draws it
  with :meth:`CameraRenderer.render` (the node now).

Prints one JSON object: per mode, tick lateness (actual start minus deadline) p50/p99/max in
ms, the renders done and their median wall time.

    MUJOCO_GL=egl python bench/sim_physics.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from moe_policy_ros.sim.aloha import AlohaSim, SceneState  # noqa: E402

TICK_S = 0.004  # 2 physics steps of 2 ms, as the node


def run(mode: str, seconds: float, size: tuple[int, int], camera_rate: float) -> dict[str, Any]:
    sim = AlohaSim("transfer_cube", seed=0)
    renders: list[float] = []
    mailbox: list[SceneState] = []
    cv = threading.Condition()
    stop = threading.Event()
    ready = threading.Event()

    def camera_thread() -> None:
        cam = sim.camera("top", size[1], size[0])  # the GL context belongs to this thread
        ready.set()
        while True:
            with cv:
                while not mailbox and not stop.is_set():
                    cv.wait(0.1)
                if stop.is_set():
                    break
                state = mailbox.pop()
                mailbox.clear()
            t = time.perf_counter()
            cam.render(state)
            renders.append(time.perf_counter() - t)
        cam.close()

    inline_cam = None
    th = None
    if mode == "thread":
        th = threading.Thread(target=camera_thread)
        th.start()
        ready.wait()
    else:
        inline_cam = sim.camera("top", size[1], size[0])
    late: list[float] = []
    t0 = time.perf_counter()
    deadline, next_cam = t0, t0
    while deadline - t0 < seconds:
        now = time.perf_counter()
        if now < deadline:
            time.sleep(deadline - now)
            now = time.perf_counter()
        late.append(now - deadline)
        sim.step(2)
        if now >= next_cam:
            next_cam += 1.0 / camera_rate
            if inline_cam is not None:
                t = time.perf_counter()
                inline_cam.render()
                renders.append(time.perf_counter() - t)
            else:
                with cv:
                    mailbox.append(sim.snapshot())
                    cv.notify()
        deadline += TICK_S
    if th is not None:
        stop.set()
        with cv:
            cv.notify()
        th.join()
    if inline_cam is not None:
        inline_cam.close()
    ms = np.asarray(late) * 1e3
    return {
        "ticks": len(late),
        "lateness_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "lateness_ms_p99": round(float(np.percentile(ms, 99)), 3),
        "lateness_ms_max": round(float(ms.max()), 3),
        "renders": len(renders),
        "render_ms_median": round(float(np.median(renders)) * 1e3, 2) if renders else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="480x640", help="camera HxW")
    ap.add_argument("--camera-rate", type=float, default=15.0)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "command": " ".join(["python", "bench/sim_physics.py", *sys.argv[1:]]),
        "load_average_1min": os.getloadavg()[0],
    }
    for mode in ("inline", "thread"):
        out[mode] = run(mode, args.seconds, (h, w), args.camera_rate)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
