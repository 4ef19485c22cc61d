"""Camera images between two processes on one host: frames delivered with and without the
shipped Fast DDS profile.

A publisher process sends ``--frames`` rgb8 images of each size at ``--rate`` Hz with the
system-default QoS (as camera drivers do); a subscriber process receives them with the
sensor-data QoS (as the policy node does) and counts. Each size runs twice: Fast DDS defaults
(no profile variable) and ``config/dds/fastdds_shm.xml``.

    python bench/camera_transport.py [--sizes 640x480 1280x720] [--frames 300] [--rate 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "dds" / "fastdds_shm.xml"

PUB = """
import sys, time, rclpy, numpy as np
from rclpy.qos import qos_profile_system_default
from sensor_msgs.msg import Image
w, h, n, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rclpy.init(); node = rclpy.create_node("bench_camera_pub")
pub = node.create_publisher(Image, "/bench/camera/image_raw", qos_profile_system_default)
deadline = time.monotonic() + 10.0
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1.0)  # let the match settle on both sides
msg = Image(height=h, width=w, encoding="rgb8", step=w * 3)
msg.data = np.random.default_rng(0).integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()
t = time.monotonic()
for i in range(n):
    msg.header.stamp.sec = i
    pub.publish(msg)
    t += 1.0 / rate
    time.sleep(max(0.0, t - time.monotonic()))
time.sleep(1.0)
"""

SUB = """
import sys, time, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init(); node = rclpy.create_node("bench_camera_sub"); got = set()
node.create_subscription(Image, "/bench/camera/image_raw",
                         lambda m: got.add(m.header.stamp.sec), qos_profile_sensor_data)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
print(len(got))
"""


def run(w: int, h: int, frames: int, rate: float, profile: bool) -> int:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")}
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    duration = frames / rate + 16.0
    sub = subprocess.Popen([sys.executable, "-c", SUB, str(duration)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.0)
    subprocess.run([sys.executable, "-c", PUB, str(w), str(h), str(frames), str(rate)],
                   env=env, check=True, stderr=subprocess.DEVNULL)
    out, _ = sub.communicate(timeout=duration + 30)
    return int(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rate", type=float, default=30.0)
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
          f"RMW {os.environ.get('RMW_IMPLEMENTATION', 'default')}, "
          f"load {os.getloadavg()[0]:.1f}, {args.frames} frames at {args.rate:g} Hz")
    print("\n| size (rgb8) | Fast DDS defaults | shipped profile |\n|---|---|---|")
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        plain = run(w, h, args.frames, args.rate, profile=False)
        shm = run(w, h, args.frames, args.rate, profile=True)
        print(f"| {size} | {plain} / {args.frames} | {shm} / {args.frames} |", flush=True)


if __name__ == "__main__":
    main()
