"""The DDS transport profile for camera images: which file, sized for which cameras.

Why: Fast DDS's built-in shared-memory segment is 512 KiB per participant. A 640x480 rgb8
frame does not fit, so it travels over UDP in fragments, and with best-effort sensor QoS one
lost fragment loses the whole frame: between two processes on one host, 36 of 300 frames
arrived at 640x480 / 30 Hz with the defaults, 300 of 300 with ``config/dds/fastdds_shm.xml``
(16 MiB segment; ``bench/camera_transport.py``, README "Camera transport"). The segment
belongs to the *publishing* process, so the profile goes to every node the package starts,
camera drivers included.

:func:`dds_environment` is the one place that decides the environment; the launch files,
``moe-policy-ros up`` and ``make demo`` (through the demo runner) use it. It does nothing when
the user has set a profile file already, or when the RMW is not Fast DDS (Cyclone DDS: see
the README for the equivalent ``CYCLONEDDS_URI``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from moe_policy_ros.core.config import params_for_node
from moe_policy_ros.core.paths import package_file

MIB = 1 << 20
#: Relative to the package (source checkout or installed share).
PROFILE_RELATIVE = Path("config") / "dds" / "fastdds_shm.xml"
SHIPPED_SEGMENT_BYTES = 16 * MIB
#: Frames of each camera the segment must hold at once (in flight to several readers).
FRAMES_PER_CAMERA = 3
#: Fast DDS 3 (ROS 2 Kilted and later) / Fast DDS 2 (Humble, Jazzy).
FASTDDS_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"
FASTRTPS_VAR = "FASTRTPS_DEFAULT_PROFILES_FILE"
_FASTDDS2_DISTROS = ("humble", "iron", "jazzy")
REALSENSE_PREFIX = "realsense_"
SIM_NODE = "aloha_sim"


def package_root(env: Mapping[str, str] | None = None) -> Path:
    """The source checkout, else the installed share directory, that holds the DDS profile
    (:func:`moe_policy_ros.core.paths.package_file`)."""
    found = package_file(PROFILE_RELATIVE, env)
    if found is None:
        raise FileNotFoundError(
            f"{PROFILE_RELATIVE} is neither in the source checkout nor in the share directory "
            "of moe_policy_ros on AMENT_PREFIX_PATH; reinstall the package"
        )
    return found.parents[len(PROFILE_RELATIVE.parts) - 1]


def camera_frame_bytes(doc: Mapping[str, Any]) -> dict[str, int]:
    """Bytes per frame of the images the graph's own nodes publish, by node and stream.

    ``realsense_<camera>`` sections (color rgb8, plus 16-bit depth when enabled; the driver's
    defaults 640x480 when unset) and the ``aloha_sim`` section's cameras (rgb8 at the sizes it
    renders). Cameras published by other drivers are not known here.
    """
    out: dict[str, int] = {}
    for key, section in doc.items():
        params = section.get("ros__parameters", {}) if isinstance(section, Mapping) else {}
        if str(key).startswith(REALSENSE_PREFIX):
            w, h = int(params.get("width", 640)), int(params.get("height", 480))
            out[f"{key}/color"] = w * h * 3
            if params.get("enable_depth", False):
                dw = int(params.get("depth_width", 0)) or w
                dh = int(params.get("depth_height", 0)) or h
                out[f"{key}/depth"] = dw * dh * 2
    if SIM_NODE in doc:
        cams = params_for_node(doc, SIM_NODE).get("cameras", {}) or {}
        for name in cams.get("names", ["top"]) or []:
            c = cams.get(name, {}) or {}
            out[f"{SIM_NODE}/{name}"] = int(c.get("width", 128)) * int(c.get("height", 96)) * 3
    return out


def segment_bytes(frame_bytes: Iterable[int]) -> int:
    """Shared-memory segment for these streams: FRAMES_PER_CAMERA frames each, whole MiB,
    at least the shipped 16 MiB."""
    need = FRAMES_PER_CAMERA * sum(frame_bytes)
    return max(SHIPPED_SEGMENT_BYTES, -(-need // MIB) * MIB)


def fastdds_profile_xml(segment: int) -> str:
    """The shipped profile's XML with another segment size."""
    text = (package_root() / PROFILE_RELATIVE).read_text()
    old = f"<segment_size>{SHIPPED_SEGMENT_BYTES}</segment_size>"
    if old not in text:
        raise RuntimeError(f"{PROFILE_RELATIVE} no longer contains {old}; update transport.py")
    return text.replace(old, f"<segment_size>{int(segment)}</segment_size>")


def _fastdds2(env: Mapping[str, str]) -> bool:
    distro = env.get("ROS_DISTRO", "").lower()
    if distro:
        return distro in _FASTDDS2_DISTROS
    for d in _FASTDDS2_DISTROS:
        try:
            importlib.metadata.version(f"ros-{d}-rmw-fastrtps-cpp")
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def dds_environment(
    doc: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, str]:
    """Environment variables that apply the camera transport profile to the nodes started.

    Empty when ``env`` (default ``os.environ``) already names a profile file (the user's own
    wins) or selects another RMW than Fast DDS. Otherwise the profile variable(s) pointing at
    the shipped file, or at a generated one under ``cache_dir`` when the graph's cameras
    (:func:`camera_frame_bytes` of the parameter file ``doc``) need a larger segment.
    """
    env = os.environ if env is None else env
    if env.get(FASTDDS_VAR) or env.get(FASTRTPS_VAR):
        return {}
    rmw = env.get("RMW_IMPLEMENTATION", "")
    if rmw and rmw != "rmw_fastrtps_cpp" and not rmw.startswith("rmw_fastrtps"):
        return {}
    segment = segment_bytes(camera_frame_bytes(doc or {}).values())
    path = package_root() / PROFILE_RELATIVE
    if segment > SHIPPED_SEGMENT_BYTES:
        xml = fastdds_profile_xml(segment)
        base = cache_dir or Path(tempfile.gettempdir()) / f"moe_policy_ros-{os.getuid()}"
        base.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(xml.encode()).hexdigest()[:12]
        path = base / f"fastdds_shm_{segment // MIB}MiB_{digest}.xml"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(xml)
            tmp.replace(path)
    out = {FASTDDS_VAR: str(path)}
    if _fastdds2(env):
        out[FASTRTPS_VAR] = str(path)
    return out
