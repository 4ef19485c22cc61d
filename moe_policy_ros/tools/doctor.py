"""`moe-policy-ros doctor [PARAMS.yaml]`: what this machine offers, what is wrong, what to do.

Each check is a small function returning :class:`Finding` s (status, what was found, what to
do). Checks that can hang or crash a process (DDS discovery, a GL context) run against a
child process with a timeout. Without a parameter file, the exit code is non-zero when the
package cannot run at all here (library versions, rclpy, DDS on loopback, the ament index);
with one, also when something that file needs is missing or wrong: its bundle, its backend,
the simulator's GL, RealSense devices for ``realsense_<camera>`` sections, and camera topics
that publish frames the policy would reject (size, encoding, message type).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from moe_policy_ros import _requirements
from moe_policy_ros.core.compat import bundle_mismatches, with_bundle_sizes
from moe_policy_ros.core.paths import package_file, resolve_share_path

PACKAGE = "moe_policy_ros"
NODE_EXECUTABLES = ("policy_node", "aloha_sim", "realsense_camera")
LISTEN_S = 2.0


@dataclass(frozen=True)
class Finding:
    """One line of the report. ``required``: the run (or the given file) needs it."""

    check: str
    status: str  # "ok" | "info" | "warn" | "fail"
    found: str
    todo: str = ""
    required: bool = False

    @property
    def blocking(self) -> bool:
        return self.status == "fail" and self.required

    def line(self) -> str:
        tag = {"ok": "ok", "info": "--", "warn": "WARN", "fail": "FAIL"}[self.status]
        todo = f" -> {self.todo}" if self.todo else ""
        found = " ".join(part.strip() for part in self.found.splitlines() if part.strip())
        return f"[{tag:>4}] {self.check}: {found}{todo}"


@dataclass
class Context:
    """What the checks share: the parsed parameter file (if any) and its needs."""

    params: Path | None = None
    namespace: str = ""
    config: Any = None  # RuntimeConfig when the file validated
    doc: dict[str, Any] | None = None
    graph: list[Any] | None = None
    bundle: Any = None  # LoadedBundle of the file's policy.bundle, when it verified
    listen_s: float = LISTEN_S
    ros_ok: bool = False

    @property
    def needs_sim(self) -> bool:
        return any(s.executable == "aloha_sim" for s in self.graph or [])

    @property
    def realsense_devices_needed(self) -> list[str]:
        out = []
        for spec in self.graph or []:
            if spec.executable != "realsense_camera" or self.doc is None:
                continue
            from moe_policy_ros.core.config import params_for_node

            p = params_for_node(self.doc, spec.name, self.namespace)
            if str(p.get("source", "device")) == "device":
                out.append(spec.name)
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("params", nargs="?", type=Path,
                        help="ROS 2 parameter file to check this machine against (optional)")
    parser.add_argument("--namespace", default="",
                        help="namespace the graph runs in (for the camera topics)")
    parser.add_argument("--listen", type=float, default=LISTEN_S,
                        help="seconds to listen to each camera topic (default 2)")
    parser.add_argument("--models", type=Path, default=None,
                        help="folder of bundles to verify (default: the package's models/)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")


# ------------------------------------------------------------------------------- checks


def _version(dist: str) -> str | None:
    return _requirements.installed_version(dist)


def check_versions(ctx: Context) -> Iterator[Finding]:
    for line in _requirements.problems():
        yield Finding("versions", "fail", line.split(": ", 1)[0],
                      line.split(": ", 1)[1] if ": " in line else "", required=True)
    libs = {
        "python": sys.version.split()[0],
        "pydantic": _version("pydantic"),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python")
        or _cv2_version(),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "PyYAML": _version("PyYAML"),
    }
    missing = [k for k, v in libs.items() if v is None and k != "opencv"]
    found = ", ".join(f"{k} {v}" for k, v in libs.items() if v)
    if missing:
        yield Finding("versions", "fail", f"{found}; missing: {', '.join(missing)}",
                      "python3 -m pip install " + " ".join(
                          "onnxruntime" if m == "onnxruntime" else m for m in missing),
                      required=True)
    else:
        yield Finding("versions", "ok", found)


def _cv2_version() -> str | None:
    try:
        import cv2
    except ImportError:
        return None
    return str(cv2.__version__)


def check_ros(ctx: Context) -> Iterator[Finding]:
    try:
        from moe_policy_ros.session import rmw_implementation
    except ImportError as err:
        yield Finding("ros", "fail", f"rclpy does not import ({err})",
                      "source /opt/ros/<distro>/setup.bash, or in a venv: "
                      "python3 -m pip install -r requirements/ros.txt", required=True)
        return
    distro = os.environ.get("ROS_DISTRO", "")
    source = "sourced distro" if distro else ""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("ros-") and name.endswith("-rclpy"):
            distro = distro or name[4:-6]
            source = source or f"PyPI wheels ({name} {dist.version})"
    rmw = rmw_implementation()
    ctx.ros_ok = True
    yield Finding("ros", "ok" if distro else "warn",
                  f"ROS 2 {distro or '(distro unknown)'} ({source or 'rclpy'}), rmw {rmw}",
                  "" if distro else "source your distro's setup.bash so ROS_DISTRO is set",
                  required=True)


def _echo_main(ping: str, pong: str, timeout_s: float) -> None:
    """The far end of the DDS round trip (run in a child process)."""
    from std_msgs.msg import String

    from moe_policy_ros.session import RosSession

    session = RosSession(f"moe_policy_ros_doctor_echo_{os.getpid()}")
    node = session.node
    pub = node.create_publisher(String, pong, 10)
    node.create_subscription(String, ping, pub.publish, 10)
    deadline = time.monotonic() + timeout_s
    while session.context.ok() and time.monotonic() < deadline:
        session.executor.spin_once(timeout_sec=0.1)
    session.close()


def check_dds(ctx: Context) -> Iterator[Finding]:
    if not ctx.ros_ok:
        yield Finding("dds", "fail", "not tried: rclpy does not import",
                      "fix the ros line first", required=True)
        return
    from std_msgs.msg import String

    from moe_policy_ros.session import RosSession

    env_desc = (f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0 (unset)')}, "
                f"ROS_AUTOMATIC_DISCOVERY_RANGE="
                f"{os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '(unset: SUBNET)')}")
    base = f"/_moe_policy_ros_doctor_{os.getpid()}"
    timeout = 15.0
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from moe_policy_ros.tools.doctor import _echo_main; "
         "_echo_main(sys.argv[1], sys.argv[2], float(sys.argv[3]))",
         f"{base}/ping", f"{base}/pong", str(timeout + 5)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    session = RosSession(f"moe_policy_ros_doctor_{os.getpid()}")
    got: dict[str, float] = {}
    try:
        def on_pong(msg: Any) -> None:
            got.setdefault(msg.data, time.monotonic())

        session.node.create_subscription(String, f"{base}/pong", on_pong, 10)
        pub = session.node.create_publisher(String, f"{base}/ping", 10)
        session.spin_in_background()
        sent: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        i = 0
        while time.monotonic() < deadline and not got and child.poll() is None:
            key = f"ping {i}"
            sent[key] = time.monotonic()
            pub.publish(String(data=key))
            i += 1
            time.sleep(0.2)
        wait_end = time.monotonic() + 0.5
        while not got and time.monotonic() < wait_end:
            time.sleep(0.02)
    finally:
        session.close()
        if child.poll() is None:
            child.terminate()
        try:
            _out, err_b = child.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            _out, err_b = child.communicate()
    if got:
        key, t = next(iter(got.items()))
        rtt_ms = (t - sent[key]) * 1e3
        yield Finding("dds", "ok", f"round trip to another process in {rtt_ms:.1f} ms "
                      f"(first after {len(sent)} ping(s); {env_desc})", required=True)
        return
    err = (err_b or b"").decode(errors="replace").strip().splitlines()
    why = f"the echo process failed: {err[-1]}" if child.returncode not in (None, 0, -15) \
        and err else f"no echo from another process within {timeout:.0f} s"
    yield Finding(
        "dds", "fail", f"{why} ({env_desc})",
        "discovery does not work on this machine: try ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST "
        "(or ROS_LOCALHOST_ONLY=1 before Jazzy), enable multicast on lo "
        "(sudo ip link set lo multicast on), and check that no firewall drops UDP 7400-7700",
        required=True,
    )


def check_ament(ctx: Context) -> Iterator[Finding]:
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_prefix,
            get_package_share_directory,
        )
    except ImportError:
        yield Finding("ament", "fail", "ament_index_python does not import",
                      "install ROS 2 (see the ros line)", required=True)
        return
    fix = ("in a venv: pip install -e . (or `make setup`) and "
           "export AMENT_PREFIX_PATH=$VIRTUAL_ENV; in a workspace: colcon build && "
           "source install/setup.bash")
    try:
        prefix = Path(get_package_prefix(PACKAGE))
        share = Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, ValueError) as err:
        yield Finding("ament", "fail", f"the ament index does not find {PACKAGE} ({err}; "
                      f"AMENT_PREFIX_PATH={os.environ.get('AMENT_PREFIX_PATH', '')!r})",
                      fix, required=True)
        return
    missing = [exe for exe in NODE_EXECUTABLES
               if not os.access(prefix / "lib" / PACKAGE / exe, os.X_OK)]
    missing += [f"share/{PACKAGE}/launch/{f}" for f in ("dual_arm.launch.py",
                "sim_dual_arm.launch.py") if not (share / "launch" / f).is_file()]
    if missing:
        yield Finding("ament", "fail", f"{PACKAGE} at {prefix} lacks {', '.join(missing)} "
                      "(ros2 run / ros2 launch will not find them)", "reinstall: " + fix,
                      required=True)
    else:
        yield Finding("ament", "ok", f"{PACKAGE} at {prefix} (executables in "
                      f"lib/{PACKAGE}/, launch files in share/{PACKAGE}/launch/)",
                      required=True)


_GL_PROBE = (
    "import mujoco\n"
    "ctx = mujoco.GLContext(32, 32)\n"
    "ctx.make_current()\n"
    "ctx.free()\n"
    "print('ok')\n"
)


def check_gl(ctx: Context) -> Iterator[Finding]:
    need = ctx.needs_sim
    gl = os.environ.get("MUJOCO_GL", "")
    if _version("mujoco") is None:
        yield Finding("gl", "fail" if need else "info", "mujoco is not installed",
                      "python3 -m pip install mujoco gym-aloha (only for aloha_sim)",
                      required=need)
        return
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    try:
        res = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True,
                             text=True, timeout=60)
        ok = res.returncode == 0 and "ok" in res.stdout
        err = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        ok, err = False, "the GL probe hung for 60 s"
    backend = env["MUJOCO_GL"] + ("" if gl else " (MUJOCO_GL unset; aloha_sim uses egl)")
    if ok:
        yield Finding("gl", "ok", f"mujoco {_version('mujoco')} renders offscreen with "
                      f"{backend}", required=need)
    else:
        yield Finding("gl", "fail" if need else "warn",
                      f"mujoco {_version('mujoco')} cannot render with {backend}: {err}",
                      "install the GL library (EGL: apt install libegl1; OSMesa: apt install "
                      "libosmesa6 and MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa)",
                      required=need)


def _tiny_onnx_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _provider_usable(provider: str) -> tuple[bool, str]:
    import numpy as np
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(_tiny_onnx_model(), providers=[provider])
        sess.run(None, {"x": np.ones((1, 4), np.float32)})
    except Exception as err:  # ORT raises many types; the text is what the user needs
        return False, str(err).strip().splitlines()[0][:160]
    used = sess.get_providers()
    return (provider in used, f"session providers {used}")


def check_onnxruntime(ctx: Context) -> Iterator[Finding]:
    backend = ctx.config.policy.backend if ctx.config is not None else ""
    device = ctx.config.policy.device if ctx.config is not None else ""
    try:
        import onnxruntime as ort
    except ImportError as err:
        yield Finding("onnxruntime", "fail", f"onnxruntime does not import ({err})",
                      "python3 -m pip install onnxruntime (or onnxruntime-gpu)",
                      required=True)
        return
    providers = list(ort.get_available_providers())
    yield Finding("onnxruntime", "ok", f"{ort.__version__}, providers {providers}",
                  required=True)
    gpu_needed = backend in ("onnxruntime-cuda", "tensorrt") or device.startswith("cuda")
    for provider, label in (("CUDAExecutionProvider", "cuda"),
                            ("TensorrtExecutionProvider", "tensorrt-ep")):
        if provider not in providers:
            yield Finding(label, "fail" if gpu_needed and label == "cuda" else "info",
                          f"{provider} not available",
                          "for GPU inference: pip install onnxruntime-gpu (CUDA 12 + cuDNN 9)",
                          required=gpu_needed and label == "cuda")
            continue
        usable, detail = _provider_usable(provider)
        yield Finding(label, "ok" if usable else ("fail" if gpu_needed else "warn"),
                      f"{provider} {'usable' if usable else 'listed but not usable'}: {detail}",
                      "" if usable else "check the NVIDIA driver, CUDA and cuDNN libraries "
                      "(nvidia-smi; LD_LIBRARY_PATH)", required=gpu_needed)
    trt = _version("tensorrt") or _version("tensorrt-cu12")
    yield Finding("tensorrt", "ok" if trt else ("fail" if backend == "tensorrt" else "info"),
                  f"tensorrt {trt}" if trt else "the tensorrt Python package is not installed",
                  "" if trt else "for the native TensorRT backend: pip install tensorrt",
                  required=backend == "tensorrt")


def check_realsense(ctx: Context) -> Iterator[Finding]:
    needed = ctx.realsense_devices_needed
    try:
        import pyrealsense2 as rs
    except (ImportError, OSError) as err:
        yield Finding("realsense", "fail" if needed else "info",
                      f"pyrealsense2 does not import ({err})",
                      "python3 -m pip install pyrealsense2 (needs libusb-1.0-0)",
                      required=bool(needed))
        return
    try:
        devices = list(rs.context().query_devices())
    except RuntimeError as err:
        devices, error = [], str(err)
    else:
        error = ""
    found = [f"{d.get_info(rs.camera_info.name)} #{d.get_info(rs.camera_info.serial_number)}"
             for d in devices]
    if found:
        enough = len(found) >= len(needed)
        yield Finding("realsense", "ok" if enough else "fail",
                      f"{len(found)} device(s): {', '.join(found)}"
                      + ("" if enough else f"; the file needs {len(needed)} ({needed})"),
                      "" if enough else "connect the missing camera(s), or set their source",
                      required=bool(needed))
    else:
        yield Finding("realsense", "fail" if needed else "info",
                      "no device connected" + (f" ({error})" if error else "")
                      + (f"; the file needs one for {needed}" if needed else ""),
                      "plug the camera into a USB 3 port and install Intel's udev rules "
                      "(99-realsense-libusb.rules); or use source: bag / software",
                      required=bool(needed))


def _models_dir(arg: Path | None) -> Path | None:
    return arg if arg is not None else package_file("models")


def check_bundles(ctx: Context, models: Path | None) -> Iterator[Finding]:
    from moe_policy_ros.core.bundle import BundleError, load_bundle

    folder = _models_dir(models)
    if folder is None or not folder.is_dir():
        yield Finding("bundles", "warn", f"no models folder ({folder})",
                      "pass --models DIR", required=False)
        return
    dirs = sorted(p.parent for p in folder.glob("*/policy.yaml"))
    if not dirs:
        yield Finding("bundles", "info", f"no bundle under {folder}",
                      "moe-policy-ros export --out DIR to make one")
    for d in dirs:
        try:
            b = load_bundle(d)
        except BundleError as err:
            yield Finding(f"bundle {d.name}", "fail", str(err),
                          "re-export it (moe-policy-ros export) or restore its files")
            continue
        m = b.manifest
        yield Finding(f"bundle {d.name}", "ok", f"{m.family}, {m.experts.count} experts, "
                      f"manifest sha256 {b.manifest_sha256[:12]}… (hashes and graphs verified)")


def check_params(ctx: Context) -> Iterator[Finding]:
    from moe_policy_ros.core.bundle import BundleError, load_bundle
    from moe_policy_ros.core.config import ConfigError, config_from_params, params_for_node
    from moe_policy_ros.graph import node_graph, read_params_doc

    assert ctx.params is not None
    try:
        ctx.doc = read_params_doc(ctx.params)
        ctx.graph = node_graph(ctx.doc, namespace=ctx.namespace)
        ctx.config = config_from_params(params_for_node(ctx.doc, "moe_policy", ctx.namespace))
    except ConfigError as err:
        yield Finding("params", "fail", f"{ctx.params}: {err}",
                      "fix the file (moe-policy-ros check-config shows the same error)",
                      required=True)
        return
    names = ", ".join(s.name for s in ctx.graph)
    yield Finding("params", "ok", f"{ctx.params} is valid; graph: {names}", required=True)
    bundle_path = resolve_share_path(ctx.config.policy.bundle)
    try:
        ctx.bundle = load_bundle(bundle_path, expected_sha256=ctx.config.policy.sha256)
    except BundleError as err:
        yield Finding("params bundle", "fail", str(err),
                      "point policy.bundle at a verified bundle (moe-policy-ros inspect DIR)",
                      required=True)
        return
    # the policy node's own check (core.compat), so doctor passes exactly what configure does
    problems = bundle_mismatches(ctx.bundle.manifest, ctx.config.robot.joint_names,
                                 ctx.config.cameras, str(bundle_path))
    yield Finding(
        "params bundle", "fail" if problems else "ok",
        f"{bundle_path}: " + ("; ".join(problems) if problems else
                              "verified; its cameras and joints match the file"),
        "make cameras.* and robot.*.joints match the bundle's policy.yaml" if problems else "",
        required=True,
    )


def check_backend(ctx: Context) -> Iterator[Finding]:
    from moe_policy_ros.backend_factory import build_backend

    pol = ctx.config.policy
    try:
        backend = build_backend(pol.backend, pol.device, intra_op_threads=pol.intra_op_threads,
                                checkpoint=pol.checkpoint or None)
    except Exception as err:  # BackendUnavailable and the libraries' own errors
        yield Finding("params backend", "fail", f"backend {pol.backend!r} on {pol.device}: "
                      f"{err}", "install what it names, or set policy.backend / policy.device",
                      required=True)
        return
    describe = getattr(backend, "describe", None)
    text = describe() if callable(describe) else type(backend).__name__
    yield Finding("params backend", "ok", f"{pol.backend} on {pol.device}: {text}",
                  required=True)


def _resolve_topic(topic: str, namespace: str) -> str:
    if topic.startswith("/"):
        return topic
    ns = namespace.strip("/")
    return f"/{ns}/{topic}" if ns else f"/{topic}"


def check_cameras(ctx: Context) -> Iterator[Finding]:
    """Listen to each camera topic of the file and compare what arrives with what it needs."""
    if not ctx.ros_ok:
        yield Finding("cameras", "fail", "not checked: rclpy does not import",
                      "fix the ros line first", required=True)
        return
    from sensor_msgs.msg import CompressedImage, Image

    from moe_policy_ros.core.imageconv import RAW_ENCODINGS
    from moe_policy_ros.core.stats import RateMeter
    from moe_policy_ros.session import SENSOR_QOS, RosSession

    cams = list(ctx.config.cameras)
    if ctx.bundle is not None:  # a size the file leaves out is the bundle's
        cams = with_bundle_sizes(cams, ctx.bundle.manifest)
    session = RosSession(f"moe_policy_ros_doctor_cameras_{os.getpid()}")
    frames: dict[str, list[Any]] = {c.name: [] for c in cams}
    rates = {c.name: RateMeter(window_s=None) for c in cams}  # arrivals while listening
    topics = {c.name: _resolve_topic(c.topic, ctx.namespace) for c in cams}

    def receiver(name: str) -> Callable[[Any], None]:
        def on_frame(msg: Any) -> None:
            frames[name].append(msg)
            rates[name].record(time.monotonic_ns())
        return on_frame

    try:
        for c in cams:
            msg_type = Image if c.message_type == "Image" else CompressedImage
            session.node.create_subscription(
                msg_type, topics[c.name], receiver(c.name), SENSOR_QOS)
        session.spin_in_background()
        time.sleep(max(0.5, ctx.listen_s))
        graph = dict(session.node.get_topic_names_and_types())
        pubs = {c.name: session.node.get_publishers_info_by_topic(topics[c.name]) for c in cams}
    finally:
        session.close()
    for c in cams:
        yield from _camera_finding(c, topics[c.name], frames[c.name], rates[c.name].rate_hz(),
                                   pubs[c.name], graph, ctx.listen_s, RAW_ENCODINGS)


def _camera_finding(c: Any, topic: str, got: list[Any], rate: float, pubs: list[Any],
                    graph: dict[str, list[str]], listen_s: float,
                    raw_encodings: dict[str, int]) -> Iterator[Finding]:
    """``rate``: the arrival rate of ``got`` (Hz, :class:`core.stats.RateMeter`)."""
    name = f"camera {c.name}"
    want_type = f"sensor_msgs/msg/{c.message_type}"
    want = f"{c.message_type} {c.width}x{c.height} {c.encoding}"
    if not pubs:
        similar = sorted(t for t, types in graph.items() if t != topic
                         and any(ty.endswith(("/Image", "/CompressedImage")) for ty in types))
        yield Finding(name, "warn", f"nothing publishes {topic} (needs {want})",
                      "start the camera driver or the sim (moe-policy-ros up FILE), or set "
                      f"cameras.{c.name}.topic" + (f"; image topics seen: {similar}"
                                                    if similar else ""))
        return
    types = sorted({p.topic_type for p in pubs})
    if want_type not in types:
        yield Finding(name, "fail", f"{topic} carries {types}, the file expects {want_type}",
                      f"set cameras.{c.name}.message_type to match the driver", required=True)
        return
    if not got:
        yield Finding(name, "fail", f"{len(pubs)} publisher(s) on {topic} but no frame in "
                      f"{listen_s:g} s", "the driver is not streaming (check its log), or its "
                      "QoS/transport does not reach this machine", required=True)
        return
    last = got[-1]
    if c.message_type == "CompressedImage":
        yield Finding(name, "ok", f"{topic}: {len(got)} frames ({rate:.1f} Hz), format "
                      f"{last.format!r} (size checked when decoded; needs {want})")
        return
    problems = []
    if (last.width, last.height) != (c.width, c.height):
        problems.append(f"size {last.width}x{last.height}, the file and bundle need "
                        f"{c.width}x{c.height} (set the driver's resolution, e.g. "
                        "RealSense width/height, to match)")
    if last.encoding not in raw_encodings:
        problems.append(f"encoding {last.encoding!r} is not one the policy converts "
                        f"({sorted(raw_encodings)}): is this a depth or IR stream?")
    found = (f"{topic}: {len(got)} frames ({rate:.1f} Hz), {last.width}x{last.height} "
             f"{last.encoding}")
    if problems:
        yield Finding(name, "fail", f"{found}; " + "; ".join(problems),
                      "every frame would be rejected and the policy would hold",
                      required=True)
    else:
        yield Finding(name, "ok", f"{found} (needs {want})")


# ------------------------------------------------------------------------------- runner


def _guard(check: str, fn: Callable[[], Iterator[Finding]]) -> list[Finding]:
    """Run one check; a crash in it is a finding, never the end of the report."""
    try:
        return list(fn())
    except Exception as err:
        return [Finding(check, "fail", f"the check itself failed: {type(err).__name__}: {err}",
                        "report this with the output of moe-policy-ros doctor --json")]


def diagnose(args: argparse.Namespace, emit: Callable[[Finding], None]) -> list[Finding]:
    ctx = Context(params=args.params, namespace=args.namespace, listen_s=args.listen)
    findings: list[Finding] = []

    def run(check: str, fn: Callable[[], Iterator[Finding]]) -> None:
        for f in _guard(check, fn):
            findings.append(f)
            emit(f)

    run("versions", lambda: check_versions(ctx))
    if ctx.params is not None:
        run("params", lambda: check_params(ctx))
    run("ros", lambda: check_ros(ctx))
    run("dds", lambda: check_dds(ctx))
    run("ament", lambda: check_ament(ctx))
    run("gl", lambda: check_gl(ctx))
    run("onnxruntime", lambda: check_onnxruntime(ctx))
    run("realsense", lambda: check_realsense(ctx))
    run("bundles", lambda: check_bundles(ctx, args.models))
    if ctx.config is not None:
        run("params backend", lambda: check_backend(ctx))
        run("cameras", lambda: check_cameras(ctx))
    return findings


def run(args: argparse.Namespace) -> int:
    if args.json:
        findings = diagnose(args, lambda f: None)
    else:
        print("moe-policy-ros doctor" + (f" {args.params}" if args.params else ""), flush=True)
        findings = diagnose(args, lambda f: print(f.line(), flush=True))
    blocking = [f for f in findings if f.blocking]
    if args.json:
        print(json.dumps({"ok": not blocking, "findings": [
            {**asdict(f), "blocking": f.blocking} for f in findings]}, indent=1))
    else:
        what = "what the given file needs" if args.params else "what the package needs"
        print(f"{len(blocking)} problem(s) with {what}" if blocking
              else "nothing blocking found", flush=True)
    return 1 if blocking else 0
