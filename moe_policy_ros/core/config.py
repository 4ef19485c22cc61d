"""Runtime configuration schema (pydantic v2), loaded from a ROS 2 parameter file.

One YAML file feeds both ``ros2 launch`` and the package's own bringup runner. It uses the ROS
parameter file layout::

    /**:
      ros__parameters:
        robot: {...}
        cameras: {...}
    /**/moe_policy:
      ros__parameters:
        policy: {...}

Values under ``/**`` apply to every node; a node's own section overrides them. The shipped
files key that section ``/**/moe_policy`` (the node in any namespace): a plain ``moe_policy``
key is ``/moe_policy`` to rcl and misses the node under ``--namespace r1``. Topic names are
relative (``joint_states``, ``left_arm_controller/commands``) so that they follow the node's
namespace; an absolute name (``/joint_states``) stays where it is.
ROS parameters cannot hold lists of maps, so repeated structures use the ros2_controllers
"map" style: a list of names plus one sub-map per name (``robot.arms: [left_arm, right_arm]``
and ``robot.left_arm.joints: [...]``). Per-joint limits are parallel lists aligned with
``joints``.

Every validation error names the field path and the bad value (:class:`ConfigError`).
Units: seconds, Hz, radians (rad/s, rad/s^2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from moe_policy_ros.core.io import load_yaml, validation_error_lines

DEFAULT_NODE_NAME = "moe_policy"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names field and value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- robot


class JointLimits(_Strict):
    """Limits of one joint (rad, rad/s, rad/s^2; grippers in their joint's unit)."""

    name: str
    min_position: float
    max_position: float
    max_velocity: float = Field(gt=0)
    max_acceleration: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> JointLimits:
        if not self.min_position < self.max_position:
            raise ValueError(
                f"joint {self.name!r}: min_position {self.min_position} must be below "
                f"max_position {self.max_position}"
            )
        return self


class ArmConfig(_Strict):
    """One arm: its joints (in command order) and its controller topics."""

    name: str
    joints: tuple[JointLimits, ...] = Field(min_length=1)
    trajectory_topic: str
    command_topic: str

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]


class RobotConfig(_Strict):
    arms: tuple[ArmConfig, ...] = Field(min_length=1)
    joint_states_topic: str = "joint_states"
    joint_states_max_age_s: float = Field(default=0.2, gt=0)

    @model_validator(mode="after")
    def _unique(self) -> RobotConfig:
        names = [j for arm in self.arms for j in arm.joint_names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"joint names must be unique across arms; repeated: {dup}")
        arm_names = [a.name for a in self.arms]
        if len(set(arm_names)) != len(arm_names):
            raise ValueError(f"arm names must be unique: {arm_names}")
        return self

    @property
    def joint_names(self) -> list[str]:
        return [j for arm in self.arms for j in arm.joint_names]

    @property
    def joints(self) -> list[JointLimits]:
        return [j for arm in self.arms for j in arm.joints]

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm named {name!r}; arms are {[a.name for a in self.arms]}")


# --------------------------------------------------------------------------- cameras


class PreprocessOverride(_Strict):
    """Per-camera override of the bundle's preprocessing (empty = the bundle's value).

    See ``manifest.PreprocessSpec``: ``mode`` resize | center_crop | roi, ``roi`` [x, y, w, h]
    in source pixels, ``interpolation`` area | linear | nearest.
    """

    mode: Literal["", "resize", "center_crop", "roi"] = Field(
        default="", description="empty = the bundle's; resize | center_crop | roi"
    )
    roi: tuple[int, ...] = Field(
        default=(), description="[x, y, w, h] source pixels for mode roi; empty = bundle's"
    )
    interpolation: Literal["", "area", "linear", "nearest"] = Field(
        default="", description="empty = the bundle's; area shrinks with INTER_AREA"
    )

    @model_validator(mode="after")
    def _roi(self) -> PreprocessOverride:
        if self.roi and (len(self.roi) != 4 or self.roi[2] <= 0 or self.roi[3] <= 0
                         or min(self.roi[:2]) < 0):
            raise ValueError(
                f"roi must be [x, y, w, h] with x, y >= 0 and w, h > 0 (got {list(self.roi)})"
            )
        return self


class CameraConfig(_Strict):
    """One camera input: where it comes from and what the policy expects of it.

    ``width`` x ``height`` is the policy's input size (the bundle's); the camera may publish
    any size, which the node brings to this one with the bundle's preprocessing (or
    ``preprocess``'s override). Left out (0), it is the bundle's, so a file serves any bundle
    with this camera; set, configure checks the bundle against it.
    """

    name: str
    topic: str
    message_type: Literal["Image", "CompressedImage"] = "Image"
    width: int = Field(default=0, ge=0,
                       description="px, the policy's input width; 0 = the bundle's")
    height: int = Field(default=0, ge=0,
                        description="px, the policy's input height; 0 = the bundle's")
    encoding: Literal["rgb8", "bgr8", "mono8"] = "rgb8"
    max_age_s: float = Field(default=0.2, gt=0)
    expected_rate_hz: float = Field(
        default=0.0, ge=0, description="Hz, the publisher's frame rate; 0 = estimate from stamps"
    )
    preprocess: PreprocessOverride = PreprocessOverride()

    @model_validator(mode="after")
    def _size_both_or_neither(self) -> CameraConfig:
        if (self.width == 0) != (self.height == 0):
            raise ValueError(
                f"camera {self.name}: width {self.width} and height {self.height}: set both "
                "(the policy's input size) or neither (the bundle's)")
        return self


# --------------------------------------------------------------------------- policy


class RoutingConfig(_Strict):
    """Routing strategy applied to the router outputs at inference.

    ``strategy`` empty means the bundle's default. ``dense`` activates every expert; ``topk``
    the ``k`` largest gates; ``mass`` the smallest set whose gate mass (``linear``: sum of
    gates, ``quadratic``: sum of squared gates over the sum of all squared gates) reaches
    ``tau``, clamped to ``k_min..k_max``; ``sticky`` keeps the incumbent set (chosen by
    ``sticky_base``) unless a challenger's gate beats the weakest incumbent by ``margin``,
    and never switches before ``min_dwell_chunks`` chunks.
    """

    strategy: Literal["", "dense", "topk", "mass", "sticky"] = Field(
        default="", description="empty = the bundle's default"
    )
    k: int = Field(default=2, ge=1, description="experts for topk")
    tau: float = Field(default=0.9, gt=0, le=1, description="gate-mass threshold")
    k_min: int = Field(default=1, ge=1, description="fewest active experts (mass)")
    k_max: int = Field(default=0, ge=0, description="0 = number of experts")
    mass: Literal["linear", "quadratic"] = Field(default="linear", description="gate mass")
    sticky_base: Literal["topk", "mass"] = Field(
        default="topk", description="how sticky routing picks a candidate set"
    )
    margin: float = Field(default=0.1, ge=0, description="gate margin to switch (sticky)")
    min_dwell_chunks: int = Field(default=3, ge=0, description="chunks before a switch")

    @model_validator(mode="after")
    def _range(self) -> RoutingConfig:
        if self.k_max and self.k_max < self.k_min:
            raise ValueError(f"k_max {self.k_max} must be >= k_min {self.k_min}")
        return self


class ExecutionConfig(_Strict):
    """How chunks reach the controllers.

    ``chunk``: one JointTrajectory per arm per new chunk. ``stream``: one Float64MultiArray
    per arm per control tick from the chunk scheduler; overlapping chunks are merged by
    ``merge`` (``ensemble``: ACT temporal ensembling with weights exp(-ensemble_decay * i),
    i = age rank of the chunk, oldest first; ``blend``: crossfade from the old chunk to the new
    over ``blend_steps`` control steps; ``replace``: the newest chunk wins; ``rtc``: real-time
    chunking for flow experts (Black et al. 2025): the next chunk's sampler is guided toward
    the commands already committed for the steps that run while it is computed, then the new
    chunk replaces the old one; see ``core/rtc.py``). ``rtc_execution_horizon`` is the paper's
    s, ``rtc_max_guidance_weight`` its beta (the clip on the guidance weight),
    ``rtc_delay_window`` the number of recent inference delays whose maximum is the frozen
    prefix d; ``rtc_residual_blend`` blends in action space what guidance could not reach of
    the committed commands (low-rank SMP chunks; ``core/rtc.py``). ``send_on_arrival`` (chunk
    mode): a new chunk's trajectory leaves when the chunk is computed, not up to a control
    period later at the next tick, as long as the last tick was policy-driven with its engage
    blend done; the next tick decides as before (a hold it decides replaces the trajectory).
    ``revise_on_arrival`` (stream mode, opt-in): a new chunk due by the next tick revises the
    setpoint at once: the command for that instant on the way from the last tick's command
    to the next tick's with the chunk merged in (a fraction ``f`` of the period has passed:
    that fraction of the step; ``SafetyFilter.revise``), and the next tick keeps to that way.
    The controller then receives a second command within that period, on the path the ticks
    make; the filter's bounds hold between every two messages in time (speed; slope changes
    of at most ``(1 + f) A dt`` at the tick after a revision).
    """

    mode: Literal["chunk", "stream"] = Field(
        default="stream", description="JointTrajectory per chunk, or a command per tick"
    )
    merge: Literal["ensemble", "blend", "replace", "rtc"] = Field(
        default="blend", description="how overlapping chunks merge (stream)"
    )
    ensemble_decay: float = Field(default=0.01, ge=0, description="ACT ensembling decay")
    blend_steps: int = Field(default=5, ge=1, description="control steps of crossfade")
    rtc_execution_horizon: int = Field(
        default=5,
        ge=1,
        description="rtc: execution horizon s, control steps of a chunk executed before the "
        "next starts; the soft mask is 0 from chunk step H - s on",
    )
    rtc_max_guidance_weight: float = Field(
        default=5.0, gt=0, le=1e3, description="rtc: maximum guidance weight beta (clip)"
    )
    rtc_delay_window: int = Field(
        default=10,
        ge=1,
        description="rtc: the frozen prefix d is the largest inference delay (control steps) "
        "among the last this many chunks",
    )
    rtc_residual_blend: bool = Field(
        default=True,
        description="rtc: blend what the guided chunk still misses of the committed commands "
        "in action space with the same soft mask (low-rank SMP chunks cannot reach them by "
        "guidance alone; core/rtc.py); false: the paper's method alone",
    )
    latency_compensation: bool = Field(
        default=True, description="skip chunk steps elapsed since the observation"
    )
    restart_on_engage: bool = Field(
        default=True,
        description="at the switch to AUTONOMY keep only the newest chunk; from HOLD (the "
        "robot stood still since its observation) it starts at the engage step",
    )
    send_on_arrival: bool = Field(
        default=True,
        description="chunk mode: send a new chunk's trajectory as soon as it is computed, on "
        "the last tick's decision (AUTONOMY, blend done), instead of at the next tick",
    )
    revise_on_arrival: bool = Field(
        default=False,
        description="stream mode: a new chunk due by the next tick revises the setpoint as "
        "soon as it is computed: the command for that instant on the way to the next tick's "
        "command with the chunk merged in (a second command within the period)",
    )


class PolicyConfig(_Strict):
    """The bundle, its backend, the two rates and how chunks execute.

    ``inference_trigger`` (``core/trigger.py``): ``timer`` starts an inference every
    ``1 / inference_rate_hz`` s whatever the cameras do; ``frame`` starts one as soon as a new
    camera frame is in and the worker is free, never sooner than ``1 / inference_rate_hz`` s
    after the previous start (the rate becomes a ceiling), so a frame waits for inference only
    as long as the ceiling demands. Both count an inference that runs longer than
    ``1 / inference_rate_hz`` s as an overrun (safety ``overrun_action``): set the rate to what
    inference sustains. ``timer`` is the default: it does not depend on the cameras' rate and
    keeps earlier parameter files behaving as before.

    ``proprio_sync``: a camera frame reaches the node tens of milliseconds after it was taken
    (render or exposure, transport, preprocessing), a joint state within a millisecond or two,
    so the newest of each are not of the same instant: measured through ROS 2 on the sim, the
    frame an inference used was 40-140 ms older than the newest joint state. Demonstrations
    pair the two at one instant, so ``image`` (the default) takes the joint state whose stamp
    is nearest the frame's (from the last :data:`~moe_policy_ros.core.inputs.JOINT_HISTORY`
    samples); ``latest`` is the earlier behaviour.
    """

    bundle: str = Field(min_length=1, description="bundle directory; relative = package share")
    sha256: str = Field(default="", description="pinned manifest SHA-256; empty = not pinned")
    backend: Literal["auto", "onnxruntime", "onnxruntime-cuda", "tensorrt", "torch"] = Field(
        default="auto", description="inference backend; auto picks the best available"
    )
    device: str = Field(default="cpu", description="cpu or cuda[:N]")
    checkpoint: str = Field(
        default="",
        description="backend torch only: weights-only checkpoint the bundle was exported from "
        "(its SHA-256 must match the bundle's provenance)",
    )
    routing: RoutingConfig = RoutingConfig()
    control_rate_hz: float = Field(default=50.0, gt=0, le=2000, description="Hz, control loop")
    inference_rate_hz: float = Field(
        default=10.0,
        gt=0,
        le=1000,
        description="Hz, new chunk requests (timer trigger) or their ceiling (frame trigger)",
    )
    inference_trigger: Literal["timer", "frame"] = Field(
        default="timer",
        description="timer: infer at inference_rate_hz; frame: infer on each new camera frame "
        "as soon as the worker is free, at most at inference_rate_hz",
    )
    proprio_sync: Literal["image", "latest"] = Field(
        default="image",
        description="image: the joint state nearest in time to the camera frame the "
        "observation uses (as training data pairs them); latest: the newest joint state",
    )
    execution: ExecutionConfig = ExecutionConfig()
    warmup_runs: int = Field(default=3, ge=0, description="inferences at configure")
    intra_op_threads: int = Field(
        default=1, ge=0, description="ONNX Runtime threads per stage; 0 = one per core"
    )
    control_thread_priority: int = Field(
        default=0,
        ge=0,
        le=99,
        description="SCHED_FIFO priority of the control loop's thread (1-99, as ros2_control's "
        "thread_priority); 0 = the normal scheduler. Needs rtprio or CAP_SYS_NICE; refused, "
        "the node warns and runs the loop normally",
    )
    gil_switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="ms, the node process's sys.setswitchinterval: how long a thread that "
        "woke (the control loop at its deadline) may wait for another thread to release the "
        "GIL; Python's default 5 ms shows as 5 ms of control-period jitter",
    )

    align_ticks: bool = Field(
        default=False,
        description="move the control loop's tick grid (slewed, at most 2% of a period per "
        "tick) so that ticks fall just after the chunks arrive: a chunk waits less for the "
        "first command computed from it (core/phase.py; opt-in: no clear gain measured live, "
        "docs/benchmarks.md)",
    )
    align_ticks_margin_ms: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="ms, align_ticks: a tick falls this long after the latest arrival of its "
        "cluster (room for chunks later than any seen)",
    )

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if v and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
            raise ValueError(f"sha256 must be 64 hex digits, got {v!r}")
        return v.lower()

    @model_validator(mode="after")
    def _rates(self) -> PolicyConfig:
        if self.inference_rate_hz > self.control_rate_hz:
            raise ValueError(
                f"inference_rate_hz {self.inference_rate_hz} must not exceed "
                f"control_rate_hz {self.control_rate_hz}"
            )
        if self.align_ticks and self.align_ticks_margin_ms >= 1e3 / self.control_rate_hz:
            raise ValueError(
                f"align_ticks_margin_ms {self.align_ticks_margin_ms} must be below the control "
                f"period ({1e3 / self.control_rate_hz:g} ms at {self.control_rate_hz} Hz)"
            )
        return self

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz


class SafetyConfig(_Strict):
    """Safety filter limits, applied to every outgoing command in every mode."""

    max_position_deviation: float = Field(default=0.5, gt=0, description="rad from measured")
    velocity_scale: float = Field(default=1.0, gt=0, le=1, description="fraction of limit")
    acceleration_scale: float = Field(default=1.0, gt=0, le=1, description="fraction of limit")
    overrun_action: Literal["finish_chunk_then_hold", "hold"] = Field(
        default="finish_chunk_then_hold", description="on inference overrun"
    )
    ood_action: Literal["ignore", "warn", "hold"] = Field(
        default="warn", description="on an out-of-distribution observation"
    )
    ood_energy_threshold: float = Field(default=math.inf, description="Di-BM min energy above")
    hold_on_stale_inputs: bool = Field(
        default=True, description="hold when an input is older than its max age"
    )


class HandoverConfig(_Strict):
    """Teleop/autonomy handover (bumpless transfer, override, deadman)."""

    initial_mode: Literal["HOLD", "TELEOP", "AUTONOMY"] = Field(
        default="HOLD", description="mode after activate (entered once safe)"
    )
    blend_time_s: float = Field(default=1.0, ge=0, description="s, TELEOP->AUTONOMY blend")
    override_threshold: float = Field(default=0.3, gt=0, description="rad teleop vs policy")
    deadman_required: bool = Field(default=False, description="hold without a deadman")
    deadman_timeout_s: float = Field(default=0.5, gt=0, description="s, deadman freshness")
    engage_max_distance: float = Field(default=0.5, gt=0, description="rad first action gap")
    teleop_topic: str = Field(
        default="teleop/joint_command", description="sensor_msgs/JointState teleop"
    )
    deadman_topic: str = Field(default="teleop/deadman", description="std_msgs/Bool")
    teleop_max_age_s: float = Field(default=0.2, gt=0, description="s; older teleop is stale")
    require_teleop_to_engage: bool = Field(
        default=True, description="refuse AUTONOMY without a fresh teleop command (override)"
    )


class RuntimeConfig(_Strict):
    """Everything the policy node needs, validated once at configure."""

    robot: RobotConfig
    cameras: tuple[CameraConfig, ...] = ()
    policy: PolicyConfig
    safety: SafetyConfig = SafetyConfig()
    handover: HandoverConfig = HandoverConfig()

    @model_validator(mode="after")
    def _cams(self) -> RuntimeConfig:
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique: {names}")
        return self


# --------------------------------------------------------------------------- loading


def _limit_list(arm: str, sub: Mapping[str, Any], key: str, n: int) -> list[Any]:
    vals = sub.get(key)
    if vals is None:
        raise ConfigError(f"robot.{arm}.{key}: required per-joint list is missing")
    if not isinstance(vals, (list, tuple)):
        raise ConfigError(f"robot.{arm}.{key}: must be a list of {n} numbers (got {vals!r})")
    if len(vals) != n:
        raise ConfigError(
            f"robot.{arm}.{key}: has {len(vals)} values for {n} joints (got {list(vals)!r})"
        )
    return list(vals)


def _robot_from_params(p: Mapping[str, Any]) -> dict[str, Any]:
    arms = p.get("arms")
    if not isinstance(arms, (list, tuple)) or not arms:
        raise ConfigError(f"robot.arms: must be a non-empty list of arm names (got {arms!r})")
    out_arms = []
    for arm in arms:
        sub = p.get(arm)
        if not isinstance(sub, Mapping):
            raise ConfigError(
                f"robot.{arm}: arm listed in robot.arms has no section (got {sub!r})"
            )
        joints = sub.get("joints")
        if not isinstance(joints, (list, tuple)) or not joints:
            raise ConfigError(f"robot.{arm}.joints: must be a non-empty list (got {joints!r})")
        n = len(joints)
        cols = {
            k: _limit_list(arm, sub, k, n)
            for k in ("min_position", "max_position", "max_velocity", "max_acceleration")
        }
        extra = set(sub) - {"joints", "trajectory_topic", "command_topic", *cols}
        if extra:
            raise ConfigError(f"robot.{arm}: unknown keys {sorted(extra)}")
        out_arms.append(
            {
                "name": arm,
                "joints": [
                    {"name": j, **{k: cols[k][i] for k in cols}} for i, j in enumerate(joints)
                ],
                "trajectory_topic": sub.get(
                    "trajectory_topic", f"{arm}_controller/joint_trajectory"
                ),
                "command_topic": sub.get("command_topic", f"{arm}_controller/commands"),
            }
        )
    rest = {k: v for k, v in p.items() if k not in ("arms", *arms)}
    return {"arms": out_arms, **rest}


def _cameras_from_params(p: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = p.get("names", [])
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"cameras.names: must be a list of camera names (got {names!r})")
    extra = set(p) - {"names", *names}
    if extra:
        raise ConfigError(f"cameras: sections {sorted(extra)} are not listed in cameras.names")
    out = []
    for name in names:
        sub = p.get(name)
        if not isinstance(sub, Mapping):
            raise ConfigError(f"cameras.{name}: camera listed in cameras.names has no section")
        out.append({"name": name, **sub})
    return out


def node_fqn(node_name: str, namespace: str = "") -> str:
    """Fully qualified node name: ``node_fqn("moe_policy", "r1") == "/r1/moe_policy"``."""
    ns = namespace.strip("/")
    return f"/{ns}/{node_name}" if ns else f"/{node_name}"


def node_key_matches(key: str, fqn: str) -> bool:
    """Whether a parameter file's top-level key applies to the node ``fqn``, as rcl matches it.

    A key is a node name, taken from the root namespace when it has no leading ``/``
    (``moe_policy`` is ``/moe_policy`` and does not apply to ``/r1/moe_policy``). ``*`` stands
    for one name token and ``**`` for any number of them, so ``/**`` applies to every node
    and ``/**/moe_policy`` to a ``moe_policy`` node in any namespace.
    """
    parts = []
    for token in str(key).strip("/").split("/"):
        if token == "**":
            parts.append(r"(?:/[^/]+)*")
        elif token == "*":
            parts.append(r"/[^/]+")
        else:
            parts.append("/" + re.escape(token))
    return re.fullmatch("".join(parts), fqn) is not None


def params_for_node(
    doc: Mapping[str, Any], node_name: str = DEFAULT_NODE_NAME, namespace: str = ""
) -> dict[str, Any]:
    """The parameters a node named ``node_name`` in ``namespace`` gets from a parameter file.

    Every section whose key matches the node (:func:`node_key_matches`) is merged in file
    order, a later section winning, as rclpy applies a parameter file.
    """
    if not isinstance(doc, Mapping):
        raise ConfigError(
            f"parameter file must be a mapping at top level (got {type(doc).__name__})"
        )
    fqn = node_fqn(node_name, namespace)
    merged: dict[str, Any] = {}
    found = False
    for key, section in doc.items():
        if not node_key_matches(str(key), fqn):
            continue
        if not isinstance(section, Mapping) or "ros__parameters" not in section:
            raise ConfigError(f"{key}: expected a 'ros__parameters' mapping")
        _deep_merge(merged, section["ros__parameters"] or {})
        found = True
    if not found:
        raise ConfigError(
            f"parameter file has no '/**' or '{node_name}' section with ros__parameters "
            f"for node {fqn} (top-level keys: {sorted(map(str, doc))}); a key such as "
            f"'/**/{node_name}' applies in any namespace"
        )
    return merged


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        elif isinstance(v, Mapping):
            dst[k] = {}
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ROS dotted parameter names (``policy.routing.k``) into nested dicts."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"parameter {key!r} conflicts with a scalar at {p!r}")
        node[parts[-1]] = value
    return out


def config_from_params(params: Mapping[str, Any]) -> RuntimeConfig:
    """Validate nested ROS parameters (one node's view) into a :class:`RuntimeConfig`."""
    known = {"robot", "cameras", "policy", "safety", "handover"}
    data = {k: v for k, v in params.items() if k in known}
    if "robot" not in data:
        raise ConfigError("robot: required section is missing")
    if not isinstance(data["robot"], Mapping):
        raise ConfigError(f"robot: must be a mapping (got {data['robot']!r})")
    data["robot"] = _robot_from_params(data["robot"])
    cams = data.get("cameras")
    if cams is not None:
        if not isinstance(cams, Mapping):
            raise ConfigError(f"cameras: must be a mapping with 'names' (got {cams!r})")
        data["cameras"] = _cameras_from_params(cams)
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(validation_error_lines(err))
        ) from None


def load_param_file(
    path: str | Path, node_name: str = DEFAULT_NODE_NAME, namespace: str = ""
) -> dict[str, Any]:
    """Read a ROS parameter file and return the merged parameters one node sees."""
    doc = load_yaml(Path(path), "parameter file", ConfigError)
    return params_for_node(doc, node_name, namespace)


def load_config(
    path: str | Path, node_name: str = DEFAULT_NODE_NAME, namespace: str = ""
) -> RuntimeConfig:
    """Load and validate the runtime configuration from a ROS parameter file."""
    params = load_param_file(path, node_name, namespace)
    try:
        return config_from_params(params)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
