"""Image transport through rclpy into the policy node: 1, 2 and 4 cameras at 640x480, raw
(sensor_msgs/Image rgb8) and JPEG (sensor_msgs/CompressedImage), and the node's CPU at each.

For each camera count N a randomly initialised small AdaMoE bundle with N 128x96 cameras
(cam0..cam<N-1>, the 14 joints of config/dual_arm.yaml) is exported; then, per transport,
``policy_node`` runs on config/dual_arm.yaml with its ``cameras`` section rewritten to those N
cameras (``/bench/cam<i>/image_raw``, ``.../compressed`` for JPEG), and a *separate* process
publishes /joint_states at 50 Hz and the N cameras at ``--rate`` Hz (staggered, stamp = now,
system-default QoS as camera drivers use): a rendered-looking 640x480 scene (gradients, a
textured table, shapes; JPEG quality 90, encoded once). Autonomy is engaged; after
``--settle`` s, over ``--seconds`` s: CPU of the node and of the publisher process
(utime+stime of all threads, /proc/<pid>/stat; 100% = one core), and from the node's own
``/diagnostics`` (1 Hz) per camera: frames per second arrived at the subscription and
processed (preprocessed into the input buffer), frames superseded (dropped by the frame
worker) and rejected in the window, the node's delivery estimate (stamp gaps against
``expected_rate_hz`` = ``--rate``); the control rate, period jitter p99 (medians over the
window), inference and obs-to-command p50/p99 (the node's windows at the end). The shipped
Fast DDS profile is applied as the launch files do (``--dds-defaults``: Fast DDS defaults).
Prints one JSON object (``--markdown``: a table of the rows).

    python bench/camera_load.py                       # 1, 2, 4 cameras x raw, jpeg; 20 s each
    python bench/camera_load.py --markdown --seconds 30
    python bench/camera_load.py --cameras 4 --transports jpeg
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
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "test")]

SIZE = (480, 640)  # camera frames, HxW
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"  # image_transport's format field
NODE = "moe_policy"

PUBLISHER = """
import sys
sys.path[:0] = [{bench!r}]
from camera_load import publish
publish({cameras}, {transport!r}, {rate}, {seconds}, {bundle!r})
"""


def topic(i: int, transport: str) -> str:
    return f"/bench/cam{i}/image_raw" + ("/compressed" if transport == "jpeg" else "")


def scene(i: int) -> np.ndarray:
    """A 640x480 BGR image that compresses like a rendered scene (not noise): sky-like
    gradients, a wood-grain table, anti-aliased shapes; ``i`` moves things per camera."""
    h, w = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([150 + 60 * y / h + 15 * np.sin(x / 90 + i),
                    120 + 50 * x / w, 100 - 40 * y / h], axis=-1)
    table = y > h * (0.5 + 0.05 * i)
    grain = 14 * np.sin(x / 6 + 4 * np.sin(y / 25 + i)) + 30 * y / h
    img[table] = np.stack([40 + grain, 80 + grain, 120 + grain], axis=-1)[table]
    img = np.clip(img, 0, 255).astype(np.uint8)
    rng = np.random.default_rng(i)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(60, w - 60)), int(rng.integers(h // 2, h - 40))
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), int(rng.integers(15, 45)), c, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (cx - 40, cy - 25), (cx + 30, cy + 20), c, -1, cv2.LINE_AA)
    cv2.line(img, (0, int(h * 0.3)), (w, int(h * 0.35)), (30, 30, 30), 6, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (3, 3), 0)


def frame_bytes(i: int, transport: str) -> bytes:
    """Camera ``i``'s frame as published: rgb8 pixels or the JPEG (quality 90)."""
    bgr = scene(i)
    if transport == "raw":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).tobytes()
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def publish(cameras: int, transport: str, rate: float, seconds: float, bundle: str) -> None:
    """The publisher process: joint states (FakeRobot, 50 Hz) and ``cameras`` cameras."""
    from helpers.ros import FakeRobot, RosClient, bundle_home
    from rclpy.qos import qos_profile_system_default
    from sensor_msgs.msg import CompressedImage, Image

    from moe_policy_ros.core.config import load_config
    from moe_policy_ros.nodes.convert import compressed_image_msg, rgb_image_msg

    names = load_config(REPO / "config" / "dual_arm.yaml").robot.joint_names
    client = RosClient("bench_cameras")
    robot = FakeRobot(client, names, bundle_home(Path(bundle), names), joint_rate_hz=50.0)
    robot.publish_images = False
    msgs = [compressed_image_msg(frame_bytes(i, transport), JPEG_FORMAT, 0, f"cam{i}")
            if transport == "jpeg" else
            rgb_image_msg(cv2.cvtColor(scene(i), cv2.COLOR_BGR2RGB), 0, f"cam{i}")
            for i in range(cameras)]
    pubs = [client.node.create_publisher(CompressedImage if transport == "jpeg" else Image,
                                         topic(i, transport), qos_profile_system_default)
            for i in range(cameras)]
    period, now = 1.0 / rate, time.monotonic()
    due = [now + k * period / cameras for k in range(cameras)]  # staggered, not in bursts
    end = now + seconds
    try:
        while time.monotonic() < end:
            k = min(range(cameras), key=due.__getitem__)
            time.sleep(max(0.0, due[k] - time.monotonic()))
            msgs[k].header.stamp = client.now_msg()
            pubs[k].publish(msgs[k])
            due[k] = max(due[k] + period, time.monotonic() - 0.05)
    except KeyboardInterrupt:
        pass  # stop_process's SIGINT: the end of the run
    finally:
        robot.close()
        client.close()


def export(cameras: int, out: Path) -> Path:
    """A randomly initialised tiny AdaMoE with ``cameras`` 128x96 cameras, the demo bundle's
    joints and normalisation (so the fake robot's pose is near its first action)."""
    from helpers.tiny_models import TINY

    from moe_policy_ros.core.manifest import read_manifest
    from moe_policy_ros.models.export import export_bundle
    from moe_policy_ros.models.families import build_model

    demo = read_manifest(REPO / "models" / "demo_adamoe")
    model = build_model({**TINY, "family": "adamoe", "proprio_dim": 14, "action_dim": 14,
                         "chunk_length": 20, "cameras": [
                             {"name": f"cam{i}", "height": 96, "width": 128}
                             for i in range(cameras)]})
    export_bundle(model, out, name=f"bench_{cameras}cam", joints=demo.action.joints,
                  proprio_joints=demo.observation.proprio.joints,
                  action_mean=demo.action.mean, action_std=demo.action.std,
                  proprio_mean=demo.observation.proprio.mean,
                  proprio_std=demo.observation.proprio.std, parity_trials=1)
    return out


def params_file(tmp: Path, cameras: int, transport: str, bundle: Path,
                args: argparse.Namespace) -> Path:
    """config/dual_arm.yaml (as policy_params writes it) with the cameras section rewritten."""
    import yaml
    from helpers.ros import policy_params

    path = policy_params(tmp, f"params_{cameras}{transport}.yaml", policy__bundle=str(bundle),
                         policy__control_rate_hz=args.control_rate)
    doc = yaml.safe_load(path.read_text())
    section = doc["/**"]["ros__parameters"]["cameras"]
    template = dict(section[section["names"][0]])
    names = [f"cam{i}" for i in range(cameras)]
    new: dict[str, Any] = {"names": names}
    for i, name in enumerate(names):
        new[name] = {**template, "topic": topic(i, transport), "expected_rate_hz": args.rate,
                     "message_type": "CompressedImage" if transport == "jpeg" else "Image"}
    doc["/**"]["ros__parameters"]["cameras"] = new
    path.write_text(yaml.safe_dump(doc))
    return path


def cpu_s(pid: int) -> float:
    """utime + stime of all the process's threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(args: argparse.Namespace, client: Any, diag: list[tuple[float, dict[str, Any]]],
            tmp: Path, cameras: int, transport: str, bundle: Path) -> dict[str, Any]:
    from helpers.ros import engage, node_process, stop_process

    from moe_policy_ros.core.diagnostics import CONTROL_LOOP, INFERENCE, INPUTS, SAFETY, Key

    row: dict[str, Any] = {"cameras": cameras, "transport": transport,
                           "bytes_per_frame": round(statistics.mean(
                               len(frame_bytes(i, transport)) for i in range(cameras)))}
    params = params_file(tmp, cameras, transport, bundle, args)
    pub = subprocess.Popen([sys.executable, "-c", PUBLISHER.format(
        bench=str(REPO / "bench"), cameras=cameras, transport=transport, rate=args.rate,
        seconds=args.settle + args.seconds + 120, bundle=str(bundle))], env=os.environ.copy(),
        start_new_session=True)
    try:
        with node_process("moe_policy_ros.nodes.policy_node",
                          ["--params-file", str(params), "-p", "autostart:=true"],
                          tmp / f"node_{cameras}{transport}.log") as node:
            refused = engage(client, timeout=60)
            if refused:
                return {**row, "error": f"engage refused: {refused}"}
            time.sleep(args.settle)
            diag.clear()
            c0, p0, w0 = cpu_s(node.pid), cpu_s(pub.pid), time.monotonic()
            time.sleep(args.seconds)
            c1, p1, w1 = cpu_s(node.pid), cpu_s(pub.pid), time.monotonic()
    finally:
        stop_process(pub)  # SIGINT, then SIGKILL after a grace period
    wall = w1 - w0
    row["node_cpu_pct"] = round(100 * (c1 - c0) / wall, 1)
    row["publisher_cpu_pct"] = round(100 * (p1 - p0) / wall, 1)
    steady = [(t, d) for t, d in diag
              if t <= w1 and all(k in d for k in (INPUTS, CONTROL_LOOP, INFERENCE, SAFETY))]
    if len(steady) < 2:
        return {**row, "error": f"{len(steady)} diagnostics samples in the window"}
    first, last = steady[0][1], steady[-1][1]
    dt = last["_stamp"] - first["_stamp"]

    def get(d: dict[str, Any], task: str, key: str) -> float:
        return float(d[task].get(key, "nan"))

    def delta(key: str) -> float:
        return get(last, INPUTS, key) - get(first, INPUTS, key)

    row["per_camera"] = [{
        "camera": cam, "arrived_fps": round(delta(f"{cam} frames received") / dt, 2),
        "processed_fps": round(delta(f"{cam} received") / dt, 2),
        "superseded": int(delta(f"{cam} frames superseded")),
        "rejected": int(delta(f"{cam} rejected")),
        "delivery": last[INPUTS].get(f"{cam} delivery"),
    } for cam in (f"cam{i}" for i in range(cameras))]
    row["processed_fps_per_camera"] = round(statistics.mean(
        c["processed_fps"] for c in row["per_camera"]), 2)
    row["superseded"] = sum(c["superseded"] for c in row["per_camera"])
    row["rejected"] = sum(c["rejected"] for c in row["per_camera"])
    for name, key in (("rate_hz_median", Key.ACHIEVED_RATE_HZ),
                      ("jitter_p99_ms", Key.JITTER_P99_MS)):
        row[name] = round(statistics.median(get(d, CONTROL_LOOP, key) for _, d in steady), 2)
    # the node's windows at the end (inference: the policy call; obs-to-command: frame stamp
    # -> first command computed from it); the share of samples in AUTONOMY; inputs not OK
    modes = [d[SAFETY].get(Key.MODE) for _, d in steady]
    return {**row, "inference_p50_ms": get(last, INFERENCE, Key.LATENCY_MEDIAN_MS),
            "inference_p99_ms": get(last, INFERENCE, Key.LATENCY_P99_MS),
            "obs_to_command_p50_ms": get(last, CONTROL_LOOP, Key.OBS_TO_COMMAND_P50_MS),
            "obs_to_command_p99_ms": get(last, CONTROL_LOOP, Key.OBS_TO_COMMAND_P99_MS),
            "autonomy_share": round(modes.count("AUTONOMY") / len(modes), 2),
            "inputs_not_ok": sum(d[INPUTS]["_level"] != 0 for _, d in steady),
            "inputs_last_message": last[INPUTS]["_message"], "samples": len(steady)}


#: The markdown table: (header, format of a row's fields).
COLUMNS = (
    ("cameras", "{cameras}"), ("transport", "{transport}"), ("bytes/frame", "{bytes_per_frame}"),
    ("node CPU %", "{node_cpu_pct:.1f}"), ("publisher CPU %", "{publisher_cpu_pct:.1f}"),
    ("processed fps/camera", "{processed_fps_per_camera:.2f}"),
    ("superseded", "{superseded}"), ("rejected", "{rejected}"),
    ("rate (Hz)", "{rate_hz_median:.1f}"), ("jitter p99 (ms)", "{jitter_p99_ms:.2f}"),
    ("inference p50/p99 (ms)", "{inference_p50_ms:.1f} / {inference_p99_ms:.1f}"),
    ("obs-to-command p50/p99 (ms)", "{obs_to_command_p50_ms:.1f} / {obs_to_command_p99_ms:.1f}"),
    ("AUTONOMY share", "{autonomy_share:.2f}"),
)


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = ([str(r["cameras"]), r["transport"], r["error"]] if "error" in r
                 else [fmt.format(**r) for _, fmt in COLUMNS])
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--transports", nargs="+", choices=("raw", "jpeg"), default=["raw", "jpeg"])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=8.0)
    ap.add_argument("--rate", type=float, default=30.0, help="camera frame rate (Hz)")
    ap.add_argument("--control-rate", type=float, default=50.0, help="policy.control_rate_hz")
    ap.add_argument("--dds-defaults", action="store_true",
                    help="Fast DDS defaults instead of the shipped profile")
    ap.add_argument("--markdown", action="store_true", help="a markdown table, not JSON")
    args = ap.parse_args()

    from diagnostic_msgs.msg import DiagnosticArray
    from helpers.ros import RosClient

    from moe_policy_ros.core.diagnostics import level_of
    from moe_policy_ros.core.transport import dds_environment
    from moe_policy_ros.tools.bench import run_header

    if not args.dds_defaults:
        os.environ.update(dds_environment())  # before any participant in this process
    tmp = Path(tempfile.mkdtemp(prefix="moe_bench_cameras_"))
    diag: list[tuple[float, dict[str, Any]]] = []

    def on_diag(arr: DiagnosticArray) -> None:
        stamp = arr.header.stamp.sec + arr.header.stamp.nanosec * 1e-9  # when counted
        diag.append((time.monotonic(), {"_stamp": stamp, **{
            st.name.removeprefix(f"{NODE}: "): {"_level": level_of(st.level),
                                                 "_message": st.message,
                                                 **{kv.key: kv.value for kv in st.values}}
            for st in arr.status}}))

    client = RosClient("bench_probe")
    client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    rows: list[dict[str, Any]] = []
    try:
        for n in args.cameras:
            bundle = export(n, tmp / f"bundle_{n}cam")
            for transport in args.transports:
                rows.append(measure(args, client, diag, tmp, n, transport, bundle))
    finally:
        client.close()
    head = run_header("bench/camera_load.py", sys.argv[1:])
    if args.markdown:
        print(", ".join(f"{k}: {v}" for k, v in head.items()) + "\n")
        print(markdown(rows))
        return 0
    print(json.dumps({
        **head,
        "seconds": args.seconds,
        "camera": f"{SIZE[1]}x{SIZE[0]} at {args.rate:g} Hz",
        "control_rate_hz": args.control_rate,
        "dds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
        or os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or "Fast DDS defaults",
        "logs": str(tmp),
        "rows": rows,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
