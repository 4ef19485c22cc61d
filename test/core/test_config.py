"""Runtime configuration schema: loads the shipped files, and every error names field + value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from moe_policy_ros.core.config import (
    ConfigError,
    config_from_params,
    load_config,
    node_key_matches,
    params_for_node,
    unflatten,
)

REPO = Path(__file__).resolve().parents[2]
DUAL_ARM = REPO / "config" / "dual_arm.yaml"


@pytest.fixture()
def doc() -> dict[str, Any]:
    return yaml.safe_load(DUAL_ARM.read_text())


def _params(doc: dict[str, Any]) -> dict[str, Any]:
    return params_for_node(doc, "moe_policy")


def test_shipped_dual_arm_config_loads() -> None:
    cfg = load_config(DUAL_ARM)
    assert [a.name for a in cfg.robot.arms] == ["left_arm", "right_arm"]
    assert len(cfg.robot.joint_names) == 14
    assert cfg.robot.joint_names[0] == "left_waist"
    assert cfg.robot.joint_names[-1] == "right_gripper"
    left = cfg.robot.arm("left_arm")
    # relative: they follow the node's namespace
    assert left.trajectory_topic == "left_arm_controller/joint_trajectory"
    assert left.command_topic == "left_arm_controller/commands"
    assert cfg.robot.joint_states_topic == "joint_states"
    assert cfg.handover.teleop_topic == "teleop/joint_command"
    assert [c.topic for c in cfg.cameras] == ["cameras/top/image_raw"]
    assert left.joints[1].min_position == pytest.approx(-1.85)
    # the size is left to the bundle (0 x 0: checked against nothing, taken from the bundle)
    assert cfg.cameras[0].name == "top" and (cfg.cameras[0].height, cfg.cameras[0].width) == (
        0, 0)
    assert cfg.policy.control_rate_hz == 50.0
    assert cfg.policy.execution.mode == "stream"


def test_every_shipped_config_validates() -> None:
    files = sorted((REPO / "config").glob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_node_section_overrides_wildcard(doc: dict[str, Any]) -> None:
    doc["/**"]["ros__parameters"]["policy"] = {"bundle": "x", "control_rate_hz": 10.0}
    merged = _params(doc)
    # the node's own section wins over /**, key by key
    assert merged["policy"]["control_rate_hz"] == 50.0
    assert merged["policy"]["bundle"] == "models/demo_adamoe"


def test_wrong_joint_count_in_limits_names_field_and_values(doc: dict[str, Any]) -> None:
    doc["/**"]["ros__parameters"]["robot"]["left_arm"]["max_velocity"] = [1.0, 2.0]
    with pytest.raises(ConfigError) as exc:
        config_from_params(_params(doc))
    msg = str(exc.value)
    assert "robot.left_arm.max_velocity" in msg and "2 values for 7 joints" in msg
    assert "[1.0, 2.0]" in msg


@pytest.mark.parametrize(
    ("path", "value", "field", "shown"),
    [
        (("policy", "control_rate_hz"), -5.0, "policy.control_rate_hz", "-5.0"),
        (("policy", "backend"), "cuda-magic", "policy.backend", "'cuda-magic'"),
        (("policy", "routing", "strategy"), "top2", "policy.routing.strategy", "'top2'"),
        (("policy", "execution", "mode"), "burst", "policy.execution.mode", "'burst'"),
        (("policy", "sha256"), "abc", "policy.sha256", "'abc'"),
        (("safety", "ood_action"), "panic", "safety.ood_action", "'panic'"),
        (("handover", "blend_time_s"), -1.0, "handover.blend_time_s", "-1.0"),
    ],
)
def test_bad_values_name_field_and_value(
    doc: dict[str, Any], path: tuple[str, ...], value: Any, field: str, shown: str
) -> None:
    params = _params(copy.deepcopy(doc))
    node = params
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as exc:
        config_from_params(params)
    assert field in str(exc.value)
    assert shown in str(exc.value)


def test_inference_faster_than_control_is_refused(doc: dict[str, Any]) -> None:
    params = _params(doc)
    params["policy"]["inference_rate_hz"] = 100.0
    with pytest.raises(ConfigError, match=r"inference_rate_hz 100.0 must not exceed"):
        config_from_params(params)


def test_min_above_max_position_is_refused(doc: dict[str, Any]) -> None:
    doc["/**"]["ros__parameters"]["robot"]["right_arm"]["min_position"][0] = 4.0
    with pytest.raises(ConfigError, match=r"right_waist.*min_position 4.0"):
        config_from_params(_params(doc))


def test_duplicate_joint_names_are_refused(doc: dict[str, Any]) -> None:
    doc["/**"]["ros__parameters"]["robot"]["right_arm"]["joints"][0] = "left_waist"
    with pytest.raises(ConfigError, match=r"repeated: \['left_waist'\]"):
        config_from_params(_params(doc))


def test_unknown_key_is_refused(doc: dict[str, Any]) -> None:
    params = _params(doc)
    params["policy"]["contol_rate_hz"] = 5.0
    with pytest.raises(ConfigError, match=r"policy.contol_rate_hz"):
        config_from_params(params)


def test_camera_not_listed_is_refused(doc: dict[str, Any]) -> None:
    doc["/**"]["ros__parameters"]["cameras"]["wrist"] = {"topic": "/w", "width": 1, "height": 1}
    with pytest.raises(ConfigError, match=r"\['wrist'\] are not listed"):
        config_from_params(_params(doc))


def test_camera_preprocess_override_and_rate(doc: dict[str, Any]) -> None:
    top = doc["/**"]["ros__parameters"]["cameras"]["top"]
    cfg = config_from_params(_params(doc))
    pre = cfg.cameras[0].preprocess
    assert (pre.mode, pre.roi, pre.interpolation) == ("", (), "")  # empty: the bundle's
    assert cfg.cameras[0].expected_rate_hz == 0.0
    top.update(preprocess={"mode": "roi", "roi": [160, 0, 960, 720]}, expected_rate_hz=30.0)
    cam = config_from_params(_params(doc)).cameras[0]
    assert (cam.preprocess.mode, cam.preprocess.roi) == ("roi", (160, 0, 960, 720))
    assert cam.expected_rate_hz == 30.0


@pytest.mark.parametrize(
    ("preprocess", "match"),
    [
        ({"mode": "stretch"}, r"cameras.0.preprocess.mode.*'stretch'"),
        ({"roi": [1, 2, 3]}, r"roi must be \[x, y, w, h\].*\[1, 2, 3\]"),
        ({"roi": [0, 0, 0, 10]}, r"w, h > 0"),
        ({"interpolation": "cubic"}, r"interpolation.*'cubic'"),
    ],
)
def test_bad_camera_preprocess_names_the_value(doc: dict[str, Any], preprocess, match) -> None:
    doc["/**"]["ros__parameters"]["cameras"]["top"]["preprocess"] = preprocess
    with pytest.raises(ConfigError, match=match):
        config_from_params(_params(doc))


def test_missing_sections_and_files() -> None:
    with pytest.raises(ConfigError, match=r"robot: required section is missing"):
        config_from_params({"policy": {"bundle": "x"}})
    with pytest.raises(ConfigError, match=r"parameter file not found: /nonexistent.yaml"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match=r"no '/\*\*' or 'moe_policy' section.*/r1/moe_pol"):
        params_for_node({"other": {"ros__parameters": {}}}, "moe_policy", "r1")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML"):
        load_config(bad)


def test_unflatten_matches_ros_dotted_names() -> None:
    flat = {"policy.routing.k": 3, "policy.bundle": "b", "robot.arms": ["a"]}
    assert unflatten(flat) == {
        "policy": {"routing": {"k": 3}, "bundle": "b"},
        "robot": {"arms": ["a"]},
    }


@pytest.mark.parametrize(
    ("key", "fqn", "matches"),
    [
        ("/**", "/moe_policy", True),
        ("/**", "/r1/moe_policy", True),
        ("/**/moe_policy", "/moe_policy", True),
        ("/**/moe_policy", "/fleet/r1/moe_policy", True),
        ("/**/moe_policy", "/r1/aloha_sim", False),
        ("moe_policy", "/moe_policy", True),
        ("moe_policy", "/r1/moe_policy", False),  # rcl: a bare key is the root node
        ("/moe_policy", "/r1/moe_policy", False),
        ("/r1/moe_policy", "/r1/moe_policy", True),
        ("/r1/moe_policy", "/r2/moe_policy", False),
        ("/*/moe_policy", "/r1/moe_policy", True),
        ("/*/moe_policy", "/moe_policy", False),
        ("/*/moe_policy", "/a/b/moe_policy", False),
        ("/r1/*", "/r1/moe_policy", True),
        ("moe_polic", "/moe_policy", False),
        ("moe.policy", "/moe_policy", False),  # no regex leaks
    ],
)
def test_node_keys_match_as_rcl_does(key: str, fqn: str, matches: bool) -> None:
    assert node_key_matches(key, fqn) is matches


def test_params_for_node_merges_matching_sections_in_file_order() -> None:
    doc = {
        "/**/moe_policy": {"ros__parameters": {"a": 2, "n": {"x": 1}}},
        "/**": {"ros__parameters": {"a": 1, "b": 1}},
        "/r1/moe_policy": {"ros__parameters": {"n": {"y": 2}}},
        "/r2/moe_policy": {"ros__parameters": {"a": 9}},
    }
    # later sections win, as in rclpy (checked against rclpy in test_launch.py)
    assert params_for_node(doc, "moe_policy", "r1") == {"a": 1, "b": 1, "n": {"x": 1, "y": 2}}
    assert params_for_node(doc, "moe_policy") == {"a": 1, "b": 1, "n": {"x": 1}}
    assert params_for_node(doc, "moe_policy", "/r2/") == {"a": 9, "b": 1, "n": {"x": 1}}
