"""The camera transport profile: which file, sized for which cameras, and when to stay out."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from moe_policy_ros.core.transport import (
    FASTDDS_VAR,
    FASTRTPS_VAR,
    MIB,
    PROFILE_RELATIVE,
    SHIPPED_SEGMENT_BYTES,
    camera_frame_bytes,
    dds_environment,
    segment_bytes,
)

REPO = Path(__file__).resolve().parents[2]
NS = {"dds": "http://www.eprosima.com"}
KILTED = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "ROS_DISTRO": "kilted"}


def _segment(path: str) -> int:
    root = ET.parse(path).getroot()
    shm = [t for t in root.iterfind(".//dds:transport_descriptor", NS)
           if t.findtext("dds:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1
    participant = root.find(".//dds:participant", NS)
    assert participant is not None and participant.get("is_default_profile") == "true"
    assert participant.findtext(".//dds:useBuiltinTransports", namespaces=NS) == "false"
    users = [e.text for e in participant.iterfind(".//dds:userTransports/dds:transport_id", NS)]
    ids = [t.findtext("dds:transport_id", namespaces=NS)
           for t in root.iterfind(".//dds:transport_descriptor", NS)]
    assert sorted(users) == sorted(ids)  # SHM and UDPv4 (other hosts) both in use
    return int(shm[0].findtext("dds:segment_size", namespaces=NS) or 0)


def test_the_shipped_profile_is_used_for_the_default_config(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "config" / "dual_arm.yaml").read_text())
    env = dds_environment(doc, KILTED, cache_dir=tmp_path)
    assert env == {FASTDDS_VAR: str(REPO / PROFILE_RELATIVE)}
    assert _segment(env[FASTDDS_VAR]) == SHIPPED_SEGMENT_BYTES == 16 * MIB
    # Fast DDS 2 (Humble/Jazzy) reads the older variable as well
    jazzy = dds_environment(doc, {**KILTED, "ROS_DISTRO": "jazzy"}, cache_dir=tmp_path)
    assert jazzy[FASTRTPS_VAR] == jazzy[FASTDDS_VAR]


@pytest.mark.parametrize(
    "env",
    [
        {FASTDDS_VAR: "/my/profile.xml"},
        {FASTRTPS_VAR: "/my/profile.xml"},
        {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
    ],
)
def test_the_users_own_profile_or_another_rmw_is_left_alone(env, tmp_path: Path) -> None:
    assert dds_environment({}, env, cache_dir=tmp_path) == {}
    assert list(tmp_path.iterdir()) == []


def test_large_cameras_get_a_generated_profile_with_a_bigger_segment(tmp_path: Path) -> None:
    doc = {
        "realsense_top": {"ros__parameters": {"width": 1920, "height": 1080,
                                              "enable_depth": True}},
        "realsense_wrist": {"ros__parameters": {}},  # the driver's 640x480 default
    }
    sizes = camera_frame_bytes(doc)
    assert sizes == {"realsense_top/color": 1920 * 1080 * 3,
                     "realsense_top/depth": 1920 * 1080 * 2,
                     "realsense_wrist/color": 640 * 480 * 3}
    need = 3 * sum(sizes.values())
    seg = segment_bytes(sizes.values())
    assert seg % MIB == 0 and need <= seg < need + MIB
    env = dds_environment(doc, KILTED, cache_dir=tmp_path)
    path = Path(env[FASTDDS_VAR])
    assert path.parent == tmp_path and f"{seg // MIB}MiB" in path.name
    assert _segment(str(path)) == seg
    # the same cameras reuse the same file
    assert dds_environment(doc, KILTED, cache_dir=tmp_path) == env
    assert len(list(tmp_path.iterdir())) == 1


def test_the_simulators_render_size_counts() -> None:
    doc = {
        "/**": {"ros__parameters": {"cameras": {"names": ["top"], "top": {
            "topic": "/t", "width": 128, "height": 96}}}},
        "aloha_sim": {"ros__parameters": {"cameras": {"top": {"width": 640, "height": 480}}}},
    }
    assert camera_frame_bytes(doc) == {"aloha_sim/top": 640 * 480 * 3}
    assert segment_bytes([640 * 480 * 3]) == SHIPPED_SEGMENT_BYTES


def test_setup_py_ships_the_profile() -> None:
    setup = (REPO / "setup.py").read_text()
    assert '*_tree("config")' in setup  # config/** (config/dds included) goes to the share
    assert (REPO / PROFILE_RELATIVE).is_file()
