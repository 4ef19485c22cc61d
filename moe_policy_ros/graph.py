"""The node graph a parameter file describes, shared by the launch files and `moe-policy-ros up`.

One YAML file feeds both ``ros2 launch`` and the bringup runner, and both start the same nodes:

* ``moe_policy`` (lifecycle, ``policy_node``): always;
* ``aloha_sim`` (``aloha_sim``): when the file has an ``aloha_sim`` section (or ``sim=True``);
* ``realsense_<camera>`` (``realsense_camera``): one per section named ``realsense_<camera>``,
  its color image remapped onto ``cameras.<camera>.topic`` and its camera_info beside it.

Pure Python (no ROS imports) so that the launch file can import it under any distro.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moe_policy_ros.core.config import ConfigError, params_for_node

POLICY_NODE = "moe_policy"
SIM_NODE = "aloha_sim"
REALSENSE_PREFIX = "realsense_"


@dataclass(frozen=True)
class NodeSpec:
    """One process of the graph."""

    name: str
    executable: str
    module: str
    lifecycle: bool = False
    remappings: tuple[tuple[str, str], ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)


def read_params_doc(path: str | Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"parameter file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"parameter file {path} is not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"parameter file {path} must be a mapping at top level")
    return doc


def node_graph(doc: Mapping[str, Any], *, sim: bool | None = None) -> list[NodeSpec]:
    """The nodes to start for a parameter file (see the module docstring)."""
    specs = [
        NodeSpec(POLICY_NODE, "policy_node", "moe_policy_ros.nodes.policy_node", lifecycle=True)
    ]
    if sim if sim is not None else SIM_NODE in doc:
        specs.append(NodeSpec(SIM_NODE, "aloha_sim", "moe_policy_ros.nodes.aloha_sim"))
    params = params_for_node(doc, POLICY_NODE)
    cams = params.get("cameras", {}) or {}
    for key in sorted(doc):
        if not str(key).startswith(REALSENSE_PREFIX):
            continue
        camera = str(key)[len(REALSENSE_PREFIX):]
        cam = cams.get(camera)
        if not isinstance(cam, Mapping) or "topic" not in cam:
            raise ConfigError(
                f"{key}: camera {camera!r} has no cameras.{camera}.topic to publish on"
            )
        topic = str(cam["topic"])
        parameters: dict[str, Any] = {"camera_name": camera}
        remaps: tuple[tuple[str, str], ...] = ()
        if cam.get("message_type") == "CompressedImage":
            # image_transport layout: <raw topic>/compressed beside <raw topic>
            raw = topic.removesuffix("/compressed")
            remaps = (("~/color/image_raw/compressed", topic),)
            parameters["compressed"] = True
            topic = raw
        info = topic.rsplit("/", 1)[0] + "/camera_info"
        specs.append(
            NodeSpec(
                str(key),
                "realsense_camera",
                "moe_policy_ros.nodes.realsense_camera",
                remappings=(("~/color/image_raw", topic), ("~/color/camera_info", info),
                            *remaps),
                parameters=parameters,
            )
        )
    return specs


def _ros_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def override_args(spec: NodeSpec, overrides: Mapping[str, Any]) -> list[str]:
    """``-p <node>:<name>:=<value>`` arguments for command-line parameter overrides.

    Prefixed with the node name so that they win over the node's own section of the
    parameter file (a bare ``-p name:=value`` is a wildcard rule, which a node-specific
    section beats). Used by both the launch files and ``moe-policy-ros up``.
    """
    args: list[str] = []
    for key, value in {**spec.parameters, **overrides}.items():
        args += ["-p", f"{spec.name}:{key}:={_ros_value(value)}"]
    return args
