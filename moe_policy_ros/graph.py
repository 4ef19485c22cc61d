"""The node graph a parameter file describes, shared by the launch files and `moe-policy-ros up`.

One YAML file feeds both ``ros2 launch`` and the bringup runner, and both start the same nodes:

* ``moe_policy`` (lifecycle, ``policy_node``): always;
* ``aloha_sim`` (``aloha_sim``): when the file has an ``aloha_sim`` section (or ``sim=True``);
* ``realsense_<camera>`` (``realsense_camera``): one per section named ``realsense_<camera>``,
  its color image remapped onto ``cameras.<camera>.topic`` and its camera_info beside it.

Both also hand each node the same parameters under any namespace: :func:`rewrite_params`
turns the file into the one the processes read (node keys that name a node from the root,
such as a bare ``moe_policy:``, are rewritten to the node's namespace, as nav2's
``RewrittenYaml`` does with its root key; overrides such as ``model``/``--model`` go into a
last section keyed by the node's full name, so that they win over every section of the file).

Pure Python (no ROS imports) so that the launch file can import it under any distro.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moe_policy_ros.core.config import ConfigError, node_fqn, node_key_matches, params_for_node
from moe_policy_ros.core.io import load_yaml

#: The launch arguments of ``dual_arm.launch.py`` (name, default, description), also declared
#: by ``sim_dual_arm.launch.py`` (which forces ``sim:=true`` and has its own params_file
#: default). ``moe-policy-ros up`` has the same options (``--namespace``, ``--model``, ...).
LAUNCH_ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("namespace", "",
     "Namespace for every node (e.g. r1: /r1/moe_policy, /r1/joint_states). The relative "
     "topic names of the parameter file follow it; absolute ones (/name) do not"),
    ("params_file", "",
     "ROS 2 parameter file that defines the graph and every node's parameters (default: "
     "the package's config/dual_arm.yaml; sim_dual_arm: config/sim_dual_arm.yaml)"),
    ("model", "",
     "Policy bundle directory overriding policy.bundle of the file (absolute, or relative "
     "to the package share directory); empty keeps the file's"),
    ("use_sim_time", "false",
     "true: every node uses /clock (aloha_sim with publish_clock) instead of system time"),
    ("log_level", "info", "Log level of every node: debug, info, warn, error or fatal"),
    ("autostart", "true",
     "true: the policy node configures and activates itself on start; false: it stays "
     "unconfigured until a lifecycle manager or `ros2 lifecycle set` moves it"),
    ("enclave", "",
     "SROS2 enclave for every node, e.g. /moe_policy_ros/moe_policy (empty: security off; "
     "see security/moe_policy_ros.policy.xml)"),
    ("sim", "false",
     "true: also start aloha_sim, the simulated ALOHA robot (MuJoCo); false: start it only "
     "when the parameter file has an aloha_sim section"),
    ("respawn", "false", "true: restart a node that exits, after 2 s"),
)

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
    doc = load_yaml(path, "parameter file", ConfigError)
    if not isinstance(doc, dict):
        raise ConfigError(f"parameter file {path} must be a mapping at top level")
    return doc


def _named_sections(doc: Mapping[str, Any], namespace: str) -> list[str]:
    """Node names that sections of ``doc`` address by name (not only through ``/**``) and
    that apply in ``namespace``: ``aloha_sim``, ``/**/aloha_sim``, ``/r1/aloha_sim`` (in r1)."""
    names = []
    for key in doc:
        name = str(key).rstrip("/").rsplit("/", 1)[-1]
        if name in ("", "*", "**"):
            continue
        if node_key_matches(str(key), node_fqn(name, namespace)) or _root_key(str(key)):
            names.append(name)
    return names


def _root_key(key: str) -> bool:
    """A key naming a node from the root (``moe_policy`` or ``/moe_policy``): written for a
    graph without a namespace; :func:`rewrite_params` moves it into the graph's namespace."""
    return "*" not in key and key.strip("/").count("/") == 0


def node_graph(
    doc: Mapping[str, Any], *, sim: bool | None = None, namespace: str = ""
) -> list[NodeSpec]:
    """The nodes to start for a parameter file (see the module docstring)."""
    specs = [
        NodeSpec(POLICY_NODE, "policy_node", "moe_policy_ros.nodes.policy_node", lifecycle=True)
    ]
    named = _named_sections(doc, namespace)
    if sim if sim is not None else SIM_NODE in named:
        specs.append(NodeSpec(SIM_NODE, "aloha_sim", "moe_policy_ros.nodes.aloha_sim"))
    params = params_for_node(_rooted(doc, namespace), POLICY_NODE, namespace)
    cams = params.get("cameras", {}) or {}
    for key in sorted(set(named)):
        if not key.startswith(REALSENSE_PREFIX):
            continue
        camera = key[len(REALSENSE_PREFIX):]
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
                key,
                "realsense_camera",
                "moe_policy_ros.nodes.realsense_camera",
                remappings=(("~/color/image_raw", topic), ("~/color/camera_info", info),
                            *remaps),
                parameters=parameters,
            )
        )
    return specs


def _rooted(doc: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """``doc`` with root node keys (``moe_policy:``) moved into ``namespace``."""
    if not namespace.strip("/"):
        return dict(doc)
    out: dict[str, Any] = {}
    for key, section in doc.items():
        k = str(key)
        out[node_fqn(k.strip("/"), namespace) if _root_key(k) else k] = section
    return out


def _nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in dotted.items():
        node = out
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def rewrite_params(
    doc: Mapping[str, Any],
    specs: list[NodeSpec],
    namespace: str = "",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The parameter file the graph's processes read (see the module docstring).

    ``overrides`` maps a node name to ``{dotted.parameter.name: value}``; each spec's own
    ``parameters`` are overrides too. Every node then gets, under ``namespace``, what it
    would get from ``doc`` without a namespace, plus its overrides.
    """
    out = copy.deepcopy(_rooted(doc, namespace))
    for spec in specs:
        values = {**spec.parameters, **((overrides or {}).get(spec.name, {}))}
        if not values:
            continue
        fqn = node_fqn(spec.name, namespace)
        section = out.pop(fqn, None) or {}  # out is a deep copy already
        if section.get("ros__parameters") is None:
            section["ros__parameters"] = {}
        _merge(section["ros__parameters"], _nested(values))
        out[fqn] = section  # last: it wins over every other section for this node
    return out


def write_params(doc: Mapping[str, Any], directory: str | Path | None = None) -> Path:
    """Write a rewritten parameter file; the path (in ``directory`` or a temporary file)."""
    text = yaml.safe_dump(dict(doc), sort_keys=False)
    if directory is not None:
        path = Path(directory) / "params.yaml"
        path.write_text(text)
        return path
    with tempfile.NamedTemporaryFile(
        "w", prefix="moe_policy_ros_", suffix=".yaml", delete=False
    ) as f:
        f.write(text)
    return Path(f.name)
