"""Typed ROS parameters for the policy node, generated from the core's pydantic schema.

Every scalar field of the ``policy``, ``safety`` and ``handover`` sections is declared with
its type, default and description (units included), so ``ros2 param list/describe`` show the
whole configuration; ``robot.*`` and ``cameras.*`` (map-style structure) are declared from the
parameter file and are read-only, like ros2_controllers' structural parameters. A parameter
set at runtime is validated with the same pydantic model before it is accepted, and the
rejection reason names the field and the value.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from moe_policy_ros.core.config import (
    ConfigError,
    HandoverConfig,
    PolicyConfig,
    SafetyConfig,
    config_from_params,
    unflatten,
)

SECTIONS: dict[str, type[BaseModel]] = {
    "policy": PolicyConfig,
    "safety": SafetyConfig,
    "handover": HandoverConfig,
}
READ_ONLY_PREFIXES = ("robot.", "cameras.")
#: Parameters whose schema default must not hide the bundle's own value: declared typed but
#: unset unless the parameter file gives them, and left out of the configuration while unset
#: (:func:`nested_parameters`), so ``merge_routing`` sees only the
#: fields a user set. A bundle exported with top-1 routing runs top-1 unless the file says k.
BUNDLE_DEFAULT_PREFIXES = ("policy.routing.",)
_PARAM_TYPES = {
    bool: Parameter.Type.BOOL,
    int: Parameter.Type.INTEGER,
    float: Parameter.Type.DOUBLE,
    str: Parameter.Type.STRING,
}


def nested_parameters(node: Node) -> dict[str, Any]:
    """All of a node's parameters as nested dicts (``a.b.c`` -> ``{a: {b: {c: ...}}}``)."""
    flat: dict[str, Any] = {}
    for name, param in node._parameters.items():
        if name in ("use_sim_time", "start_type_description_service") or name.startswith(
            "qos_overrides."
        ):
            continue
        value = param.value
        if value is None and name.startswith(BUNDLE_DEFAULT_PREFIXES):
            continue  # unset: the bundle's value applies
        if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
            value = list(value)
        flat[name] = value
    return unflatten(flat)


def _leaves(prefix: str, model: type[BaseModel]) -> Iterator[tuple[str, Any, str]]:
    """(dotted name, default or None when required, description) of scalar fields."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        full = f"{prefix}.{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(full, ann)
            continue
        desc = field.description or ""
        origin = typing.get_origin(ann)
        if origin is typing.Literal:
            desc = (desc + "; " if desc else "") + "one of " + ", ".join(
                repr(a) for a in typing.get_args(ann)
            )
        default = None if field.is_required() else field.default
        yield full, default, desc


def declare_parameters(node: Node) -> None:
    """Declare the file's parameters and the schema's defaults, with descriptors."""
    overrides: dict[str, Parameter] = dict(node._parameter_overrides)
    declared: set[str] = set()
    for section, model in SECTIONS.items():
        for name, default, desc in _leaves(section, model):
            ov = overrides.get(name)
            d = ParameterDescriptor(description=desc, dynamic_typing=True)
            if ov is not None:
                node.declare_parameter(name, ov.value, d)
            elif name.startswith(BUNDLE_DEFAULT_PREFIXES) and type(default) in _PARAM_TYPES:
                # unset unless the file (or a set) gives it: the bundle's value applies then
                d.dynamic_typing = False
                d.description = (desc + "; " if desc else "") + "unset = the bundle's value"
                node.declare_parameter(name, _PARAM_TYPES[type(default)], d)
            elif isinstance(default, (bool, int, float, str)):
                node.declare_parameter(name, default, d)
            elif default is None:
                # required (policy.bundle): typed but unset until the file or a set gives it
                d.dynamic_typing = False
                node.declare_parameter(name, Parameter.Type.STRING, d)
            else:
                continue
            declared.add(name)
    for name, param in overrides.items():
        if name in declared or name in ("use_sim_time",) or node.has_parameter(name):
            continue
        read_only = name.startswith(READ_ONLY_PREFIXES)
        node.declare_parameter(
            name,
            param.value,
            ParameterDescriptor(
                description="structure (read-only)" if read_only else "",
                read_only=read_only,
                dynamic_typing=True,
            ),
        )
    node.add_on_set_parameters_callback(lambda params: _validate(node, params))


def _validate(node: Node, params: list[Parameter]) -> SetParametersResult:
    """Accept a runtime change only if the resulting configuration still validates."""
    nested = nested_parameters(node)
    relevant = False
    for p in params:
        if not p.name.startswith(("policy.", "safety.", "handover.", "robot.", "cameras.")):
            continue
        relevant = True
        node_: dict[str, Any] = nested
        *head, last = p.name.split(".")
        for h in head:
            node_ = node_.setdefault(h, {})
        node_[last] = list(p.value) if isinstance(p.value, (list, tuple)) else p.value
    if not relevant or "robot" not in nested or "bundle" not in nested.get("policy", {}):
        return SetParametersResult(successful=True)
    try:
        config_from_params(nested)
    except ConfigError as err:
        return SetParametersResult(successful=False, reason=str(err))
    return SetParametersResult(successful=True)
