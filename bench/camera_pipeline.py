"""Per-frame cost of the camera path: preprocessing in the policy node, rendering in aloha_sim.

Preprocessing: ``CameraPipeline.process`` (what the policy node's frame worker runs per frame)
on 640x480 and 1280x720 frames to the bundled models' 128x96, for raw rgb8 (resize and
center_crop), bgr8, and JPEG ``CompressedImage`` (quality 90, of a rendered ALOHA scene, so
the JPEG is as compressible as a real camera's). OpenCV uses one thread (``cv2.setNumThreads``
as given). Render: ``aloha_sim``'s camera (MuJoCo, EGL) at 128x96, 320x240 and 640x480.

    python bench/camera_pipeline.py [--runs 200] [--threads 1] [--json]

Prints medians and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_policy_ros.core.manifest import PreprocessSpec
from moe_policy_ros.core.preprocess import (
    CameraPipeline,
    CompressedFrame,
    RawFrame,
)

SIZE = (96, 128)
SOURCES = ((480, 640), (720, 1280))
RENDERS = ((96, 128), (240, 320), (480, 640))


def _time(fn: Any, runs: int, warmup: int = 5) -> dict[str, float]:
    """Wall-clock median and p99, and the median CPU time of this process (all threads:
    what the work costs without the waiting that other processes on the cores add)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    a = np.asarray(wall) * 1e3
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "cpu_median_ms": float(np.median(cpu) * 1e3)}


def _scene(h: int, w: int) -> np.ndarray:
    """A rendered ALOHA frame at (h, w), or a smooth synthetic one without MuJoCo/EGL."""
    try:
        from moe_policy_ros.sim.aloha import AlohaSim

        sim = AlohaSim("transfer_cube", seed=0)
        cam = sim.camera("top", w, h)
        try:
            return np.ascontiguousarray(cam.render())
        finally:
            cam.close()
    except Exception as err:  # no GL here: say so, and use a smooth synthetic image
        print(f"note: no rendered scene ({err}); JPEG of a synthetic image", file=sys.stderr)
        yy, xx = np.mgrid[0:h, 0:w]
        return np.dstack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256]).astype(np.uint8)


def preprocessing(runs: int) -> list[dict[str, Any]]:
    out = []
    for h, w in SOURCES:
        img = _scene(h, w)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        raw = RawFrame(h, w, "rgb8", w * 3, img.tobytes())
        bgr = RawFrame(h, w, "bgr8", w * 3, img[:, :, ::-1].tobytes())
        comp = CompressedFrame("rgb8; jpeg compressed bgr8", jpeg.tobytes())
        cases = [
            ("rgb8 resize (area)", PreprocessSpec(), raw),
            ("rgb8 center_crop (area)", PreprocessSpec(mode="center_crop"), raw),
            ("bgr8 resize (area)", PreprocessSpec(), bgr),
            (f"jpeg ({jpeg.size // 1024} KiB) resize (area)", PreprocessSpec(), comp),
        ]
        for label, spec, frame in cases:
            pipe = CameraPipeline("top", SIZE, spec)
            buf = pipe.new_buffer()
            out.append({"source": f"{w}x{h}", "case": label,
                        **_time(lambda p=pipe, f=frame, b=buf: p.process(f, b), runs)})
    return out


def rendering(runs: int) -> list[dict[str, Any]]:
    from moe_policy_ros.sim.aloha import GL_BACKEND, AlohaSim

    sim = AlohaSim("transfer_cube", seed=0)
    out = []
    for h, w in RENDERS:
        cam = sim.camera("top", w, h)
        try:
            out.append({"size": f"{w}x{h}", "gl": GL_BACKEND,
                        **_time(cam.render, max(20, runs // 4), warmup=3)})
        finally:
            cam.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads")
    ap.add_argument("--no-render", action="store_true", help="skip the aloha_sim renders")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version(),
                    "opencv": cv2.__version__, "numpy": np.__version__,
                    "loadavg": os.getloadavg()},
        "cv2_threads": args.threads,
        "preprocessing": preprocessing(args.runs),
        "render": [] if args.no_render else rendering(args.runs),
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    m = res["machine"]
    print(f"{res['date']}, {m['cores']} cores, load {m['loadavg'][0]:.1f}, opencv "
          f"{m['opencv']}, cv2 threads {args.threads}, runs {args.runs}")
    head = "| median ms | p99 ms | CPU median ms |\n|---|---|---|---|---|"
    print(f"\n| source | preprocessing to 128x96 {head}")
    for r in res["preprocessing"]:
        print(f"| {r['source']} | {r['case']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['cpu_median_ms']:.2f} |")
    if res["render"]:
        print(f"\n| aloha_sim render | GL {head}")
        for r in res["render"]:
            print(f"| {r['size']} | {r['gl']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} "
                  f"| {r['cpu_median_ms']:.2f} |")


if __name__ == "__main__":
    main()
