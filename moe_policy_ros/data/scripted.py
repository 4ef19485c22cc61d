"""Scripted demonstrations: end-effector waypoints in gym-aloha's mocap scenes -> joint paths.

How a demonstration is made (the ACT recipe, written here from scratch):

1. :class:`EndEffectorSim` loads ``bimanual_viperx_end_effector_<task>.xml``: the same arms,
   but each ``gripper_link`` welded to a mocap body and no arm actuators. We set both welds'
   relative pose to identity, so the mocap pose *is* the commanded gripper-link pose (MuJoCo 3
   would otherwise take it from ``qpos0``, where the arms are stretched out), and make the
   scene a tight inverse kinematics: stiff welds, no dry friction on the arm joints, arm
   gravity compensated. (As shipped, the soft welds drag the arms against 50-60 N m of joint
   friction and lagged the targets by up to 8 cm in our runs, too much to grasp.)
2. A :class:`Script` holds, per arm, time-stamped waypoints of the tool point (the middle of
   the finger pads, ``TOOL_OFFSET_M`` along the gripper's x axis), its orientation and the gripper
   opening, plus named phases. Positions are interpolated and orientations slerped with
   smoothstep timing (at rest at each waypoint).
3. :func:`plan` runs the script at the control rate (50 Hz) in the mocap scene and reads the
   arm joints after every control step: ``actions[t]`` is the joint position the arm reached
   at the end of step ``t`` (what a joint-position command should ask for at step ``t``), with
   the script's gripper command for the grippers.
4. The recorder (:mod:`moe_policy_ros.data.record`) replays ``actions`` as joint targets in
   :class:`~moe_policy_ros.sim.aloha.AlohaSim`, the physics the runtime drives, and keeps the
   episode only if that replay succeeds.

Object poses come from the seed exactly as :meth:`AlohaSim.reset` draws them, so a scripted
plan for seed ``s`` is replayed on the same scene.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moe_policy_ros.sim.aloha import (
    ARM_COLUMNS,
    ARM_JOINTS,
    GRIPPER_COLUMNS,
    JOINT_NAMES,
    OBJECT_JOINTS,
    SIDES,
    START_FINGER_POS,
    TASKS,
    assets_dir,
    finger_to_gripper,
    gripper_to_finger,
    joint_actuator,
    joint_id,
    mujoco,
    set_start_state,
)

CONTROL_HZ = 50.0
ROLL_JOINTS = ("forearm_roll", "wrist_rotate")
ROLL_SPRING_NM_PER_RAD = 30.0  # null-space bias of the IK scene's wrist rolls toward 0
TOOL_OFFSET_M = 0.12  # gripper_link origin -> middle of the finger pads (tips at 0.154 m)
_EE_XML = {
    "transfer_cube": "bimanual_viperx_end_effector_transfer_cube.xml",
    "insertion": "bimanual_viperx_end_effector_insertion.xml",
}

# --------------------------------------------------------------------------- rotations


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def quat_axis_angle(axis: Sequence[float], angle_rad: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    return np.array([math.cos(angle_rad / 2), *(a * math.sin(angle_rad / 2))])


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, np.asarray(q, dtype=float))
    return m.reshape(3, 3)


def slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical interpolation from ``q0`` (s=0) to ``q1`` (s=1), shortest arc."""
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - s) * theta) * q0 + math.sin(s * theta) * q1) / math.sin(theta)


# Gripper orientations: the left gripper's frame at identity points its fingers along +x (world)
# with the fingers closing along y; the right arm's base is turned 180 degrees about z.
_LEFT_FORWARD = np.array([1.0, 0.0, 0.0, 0.0])
_RIGHT_FORWARD = np.array([0.0, 0.0, 0.0, 1.0])


def gripper_quat(side: str, pitch_down_rad: float, roll_rad: float = 0.0) -> np.ndarray:
    """Orientation of ``side``'s gripper facing the other arm, tilted down by ``pitch``."""
    forward = _LEFT_FORWARD if side == "left" else _RIGHT_FORWARD
    sign = 1.0 if side == "left" else -1.0
    q = quat_mul(quat_axis_angle((0, 1, 0), sign * pitch_down_rad), forward)
    return quat_mul(q, quat_axis_angle((1, 0, 0), roll_rad))


# --------------------------------------------------------------------------- scripts


@dataclass(frozen=True)
class Waypoint:
    """The tool point of one arm at time ``t_s``: position (m), orientation, gripper 0..1."""

    t_s: float
    xyz: tuple[float, float, float]
    quat: tuple[float, float, float, float]
    gripper: float


def _v(x: float, y: float, z: float) -> np.ndarray:
    return np.array([x, y, z], dtype=float)


def waypoint(
    t_s: float, xyz: np.ndarray | Sequence[float], quat: np.ndarray, gripper: float
) -> Waypoint:
    x, y, z = (float(v) for v in xyz)
    qw, qx, qy, qz = (float(v) for v in quat)
    return Waypoint(float(t_s), (x, y, z), (qw, qx, qy, qz), float(gripper))


@dataclass(frozen=True)
class Script:
    """Waypoints per arm (``left``, ``right``) and the phase that starts at each time."""

    task: str
    waypoints: dict[str, tuple[Waypoint, ...]]
    phases: tuple[tuple[float, str], ...]  # (start time s, name), increasing

    @property
    def phase_names(self) -> tuple[str, ...]:
        return tuple(name for _t, name in self.phases)

    def phase_at(self, t_s: float) -> int:
        """Index into :attr:`phase_names` of the phase running at ``t_s``."""
        idx = 0
        for i, (start, _name) in enumerate(self.phases):
            if t_s + 1e-9 >= start:
                idx = i
        return idx

    def pose_at(self, side: str, t_s: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(tool xyz, quat, gripper) of ``side`` at ``t_s``, interpolated between waypoints."""
        wps = self.waypoints[side]
        if t_s <= wps[0].t_s:
            w = wps[0]
            return np.array(w.xyz), np.array(w.quat), w.gripper
        for a, b in itertools.pairwise(wps):
            if t_s <= b.t_s:
                s = _ease((t_s - a.t_s) / max(b.t_s - a.t_s, 1e-9))
                xyz = (1 - s) * np.array(a.xyz) + s * np.array(b.xyz)
                q = slerp(np.array(a.quat), np.array(b.quat), s)
                return xyz, q, (1 - s) * a.gripper + s * b.gripper
        w = wps[-1]
        return np.array(w.xyz), np.array(w.quat), w.gripper


def _ease(s: float) -> float:
    """Smoothstep timing along a segment: at rest at each waypoint, so the joint paths have
    no velocity steps at the corners (linear timing asked up to 50 rad/s^2 there, which the
    runtime's acceleration limit of 15 rad/s^2 then cut, missing the insertion)."""
    return s * s * (3.0 - 2.0 * s)


OPEN, CLOSED = 1.0, 0.0


def _pick(
    start: tuple[np.ndarray, np.ndarray],
    grasp: np.ndarray,
    quat: np.ndarray,
    lift_t_s: float,
    lift: np.ndarray,
) -> tuple[Waypoint, ...]:
    """The first moves of every pick: from ``start`` to 10 cm above ``grasp`` (1.6 s), down
    (2.4 s), close (2.8 s), up by ``lift`` (at ``lift_t_s``)."""
    return (
        waypoint(0.0, start[0], start[1], OPEN),
        waypoint(1.6, grasp + _v(0, 0, 0.10), quat, OPEN),
        waypoint(2.4, grasp, quat, OPEN),
        waypoint(2.8, grasp, quat, CLOSED),
        waypoint(lift_t_s, grasp + lift, quat, CLOSED),
    )


# resting heights of the objects' centres on the table (m): the seeded poses start 5 cm up
CUBE_HALF_M = 0.02
PEG_HALF_M = 0.01
SOCKET_HALF_M = 0.022
TRANSFER_KNOBS: dict[str, float] = {
    "pick_pitch_deg": 75.0,
    "meet_pitch_deg": 60.0,
    "grasp_dx": 0.012,  # right tool point to the +x of the cube centre when picking
    "right_dx": 0.02,  # right tool point at the meeting point + this (x)
    "left_dx": -0.02,  # left tool point at the meeting point + this (x)
    "left_dz": 0.0,
    "meet_z": 0.25,
}


def transfer_cube_script(
    start: dict[str, tuple[np.ndarray, np.ndarray]],
    cube: np.ndarray,
    knobs: dict[str, float] | None = None,
) -> Script:
    """Right arm picks the cube, carries it to the middle, the left arm takes it over."""
    k = {**TRANSFER_KNOBS, **(knobs or {})}
    cube = np.array([cube[0], cube[1], CUBE_HALF_M])
    q_rpick = gripper_quat("right", math.radians(k["pick_pitch_deg"]))
    q_rmeet = gripper_quat("right", math.radians(k["meet_pitch_deg"]))
    q_lmeet = gripper_quat("left", math.radians(k["meet_pitch_deg"]))
    meet = np.array([0.0, 0.5, k["meet_z"]])
    grasp = cube + np.array([k["grasp_dx"], 0.0, 0.0])
    r_hold = meet + np.array([k["right_dx"], 0.0, 0.0])
    l_take = meet + np.array([k["left_dx"], 0.0, k["left_dz"]])
    ls, lq = start["left"]
    right = (
        *_pick(start["right"], grasp, q_rpick, 3.0, _v(0, 0, 0.04)),
        waypoint(4.2, r_hold, q_rmeet, CLOSED),
        waypoint(5.9, r_hold, q_rmeet, CLOSED),
        waypoint(6.3, r_hold, q_rmeet, OPEN),
        waypoint(7.2, r_hold + _v(0.12, 0.0, 0.03), q_rmeet, OPEN),
        waypoint(8.0, r_hold + _v(0.12, 0.0, 0.03), q_rmeet, OPEN),
    )
    left = (
        waypoint(0.0, ls, lq, OPEN),
        waypoint(3.4, l_take + _v(-0.12, 0.0, 0.0), q_lmeet, OPEN),
        waypoint(4.2, l_take + _v(-0.12, 0.0, 0.0), q_lmeet, OPEN),
        waypoint(5.2, l_take, q_lmeet, OPEN),
        waypoint(5.7, l_take, q_lmeet, CLOSED),
        waypoint(6.3, l_take, q_lmeet, CLOSED),
        waypoint(7.2, l_take + _v(-0.05, 0.0, 0.0), q_lmeet, CLOSED),
        waypoint(8.0, l_take + _v(-0.05, 0.0, 0.0), q_lmeet, CLOSED),
    )
    phases = (
        (0.0, "approach"),
        (1.6, "descend"),
        (2.4, "grasp"),
        (2.8, "lift"),
        (3.0, "carry"),
        (4.2, "reach_over"),
        (5.2, "hand_over"),
        (6.3, "retreat"),
    )
    return Script("transfer_cube", {"left": left, "right": right}, phases)


INSERTION_KNOBS: dict[str, float] = {
    "pitch_deg": 75.0,  # both grippers, kept from the grasp on so peg and socket stay level
    "peg_grasp_dx": 0.03,  # right tool point this far +x of the peg centre
    "socket_grasp_dx": -0.03,  # left tool point this far from the socket centre (x)
    "line_z": 0.2,  # height of the common axis of peg and socket when they meet
    "open_x": 0.0,  # where the socket's opening is when they meet
    "depth": 0.035,  # how far the peg goes into the socket (it meets the pin at 0.02)
    "tip_clearance": 0.004,  # fingertips above the table when grasping
}
PEG_HALF_LEN_M = 0.06
SOCKET_HALF_LEN_M = 0.06
FINGERTIP_M = 0.034  # fingertips beyond the tool point, along the gripper's x axis


def insertion_script(
    start: dict[str, tuple[np.ndarray, np.ndarray]],
    objects: np.ndarray,
    knobs: dict[str, float] | None = None,
) -> Script:
    """Right arm picks the peg, left arm the socket; they meet and the peg goes in."""
    k = {**INSERTION_KNOBS, **(knobs or {})}
    pitch = math.radians(k["pitch_deg"])
    q_r, q_l = gripper_quat("right", pitch), gripper_quat("left", pitch)
    tool_z = FINGERTIP_M * math.sin(pitch) + k["tip_clearance"]
    peg = np.array([objects[0], objects[1], PEG_HALF_M])
    socket = np.array([objects[7], objects[8], SOCKET_HALF_M])
    peg_grasp = np.array([peg[0] + k["peg_grasp_dx"], peg[1], max(tool_z, PEG_HALF_M)])
    sock_grasp = np.array(
        [socket[0] + k["socket_grasp_dx"], socket[1], max(tool_z, SOCKET_HALF_M)]
    )
    # object centres relative to the tool points while held (if nothing slips)
    peg_in_hand = peg - peg_grasp
    sock_in_hand = socket - sock_grasp
    line = np.array([k["open_x"], 0.5, k["line_z"]])
    # socket centre on the line, its +x opening at open_x
    l_meet = line + np.array([-SOCKET_HALF_LEN_M, 0.0, 0.0]) - sock_in_hand
    # peg centre on the line, its -x end ``depth`` inside the opening
    r_in = line + np.array([PEG_HALF_LEN_M - k["depth"], 0.0, 0.0]) - peg_in_hand
    r_ready = r_in + np.array([0.05 + k["depth"], 0.0, 0.0])
    lift = _v(0, 0, 0.06)
    right = (
        *_pick(start["right"], peg_grasp, q_r, 3.2, lift),
        waypoint(4.6, r_ready, q_r, CLOSED),
        waypoint(5.2, r_ready, q_r, CLOSED),
        waypoint(6.6, r_in, q_r, CLOSED),
        waypoint(8.0, r_in, q_r, CLOSED),
    )
    left = (
        *_pick(start["left"], sock_grasp, q_l, 3.2, lift),
        waypoint(4.6, l_meet, q_l, CLOSED),
        waypoint(8.0, l_meet, q_l, CLOSED),
    )
    phases = (
        (0.0, "approach"),
        (1.6, "descend"),
        (2.4, "grasp"),
        (2.8, "lift"),
        (3.2, "carry"),
        (4.6, "align"),
        (5.2, "insert"),
        (6.6, "hold"),
    )
    return Script("insertion", {"left": left, "right": right}, phases)


# --------------------------------------------------------------------------- mocap scene


class EndEffectorSim:
    """gym-aloha's end-effector (mocap) scene for ``task``, with our joint naming."""

    def __init__(self, task: str) -> None:
        if task not in _EE_XML:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        self.task = task
        path = assets_dir() / _EE_XML[task]
        self.model = m = mujoco.MjModel.from_xml_path(str(path))
        self.data = mujoco.MjData(m)
        where = path.name

        arm = [joint_id(m, f"vx300s_{s}/{j}", where) for s in SIDES for j in ARM_JOINTS]
        self._arm_qadr = m.jnt_qposadr[arm]
        lf = [joint_id(m, f"vx300s_{s}/left_finger", where) for s in SIDES]
        rf = [joint_id(m, f"vx300s_{s}/right_finger", where) for s in SIDES]
        self._lf_qadr, self._rf_qadr = m.jnt_qposadr[lf], m.jnt_qposadr[rf]
        self._lf_act = np.array([joint_actuator(m, j, where) for j in lf])
        self._rf_act = np.array([joint_actuator(m, j, where) for j in rf])
        self._obj_qadr = [int(m.jnt_qposadr[joint_id(m, n, where)]) for n in OBJECT_JOINTS[task]]
        self._gripper_body = {
            s: int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"vx300s_{s}/gripper_link"))
            for s in SIDES
        }
        self._mocap = {}
        for s in SIDES:
            bid = int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"mocap_{s}"))
            if bid < 0 or m.body_mocapid[bid] < 0:
                raise RuntimeError(f"{path.name}: no mocap body 'mocap_{s}'")
            self._mocap[s] = int(m.body_mocapid[bid])
        # This scene only turns tool poses into joint angles, so make it a good IK: weld
        # relative pose := identity (eq_data: anchor[3], relpos[3], relquat[4], scale) and
        # stiff, arm joints without dry friction and with gravity compensated (gym-aloha's soft
        # weld against 50-60 N m of joint friction lags the target by several centimetres).
        for e in range(m.neq):
            if m.eq_type[e] == mujoco.mjtEq.mjEQ_WELD:
                m.eq_data[e, 3:6] = 0.0
                m.eq_data[e, 6:10] = (1.0, 0.0, 0.0, 0.0)
                m.eq_solimp[e, :3] = (0.95, 0.99, 0.001)
                m.eq_solref[e, :2] = (0.004, 1.0)
        m.dof_frictionloss[m.jnt_dofadr[arm]] = 0.0
        # The wrist is roll-pitch-roll: at wrist_angle 0 (which the scripts cross on the way
        # down) forearm_roll and wrist_rotate share an axis, and the weld alone let them drift
        # in opposite directions to +-pi, one way or the other by the seed's noise. The same
        # tool pose then had three joint solutions across episodes, whose average a policy
        # learns. Weak springs to 0 on both rolls pick the one near 0 (the tool pose is the
        # weld's: the springs act only in the null space it leaves).
        for s in SIDES:
            for name in ROLL_JOINTS:
                j = joint_id(m, f"vx300s_{s}/{name}", where)
                m.jnt_stiffness[j] = ROLL_SPRING_NM_PER_RAD
                m.qpos_spring[m.jnt_qposadr[j]] = 0.0
        for s in SIDES:
            root = int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"vx300s_{s}"))
            for b in range(m.nbody):
                if self._descends(b, root):
                    m.body_gravcomp[b] = 1.0

    def _descends(self, body: int, ancestor: int) -> bool:
        while body > 0:
            if body == ancestor:
                return True
            body = int(self.model.body_parentid[body])
        return False

    def reset(self, seed: int | None) -> None:
        d = self.data
        set_start_state(
            self.model,
            d,
            self.task,
            seed,
            self._arm_qadr,
            (self._lf_qadr, self._rf_qadr),
            self._obj_qadr,
        )
        for s in SIDES:
            b = self._gripper_body[s]
            d.mocap_pos[self._mocap[s]] = d.xpos[b]
            d.mocap_quat[self._mocap[s]] = d.xquat[b]
        self.command_gripper(np.array([finger_to_gripper(START_FINGER_POS)] * 2))

    def tool_pose(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(tool point xyz, gripper quat) of ``side`` now."""
        b = self._gripper_body[side]
        rot = self.data.xmat[b].reshape(3, 3)
        return self.data.xpos[b] + rot[:, 0] * TOOL_OFFSET_M, self.data.xquat[b].copy()

    def command_pose(self, side: str, tool_xyz: np.ndarray, quat: np.ndarray) -> None:
        rot = quat_to_mat(quat)
        i = self._mocap[side]
        self.data.mocap_pos[i] = np.asarray(tool_xyz) - rot[:, 0] * TOOL_OFFSET_M
        self.data.mocap_quat[i] = quat

    def command_gripper(self, g: np.ndarray) -> None:
        """Normalised gripper commands (left, right): 0 closed .. 1 open."""
        finger = np.asarray(gripper_to_finger(np.asarray(g, dtype=float)))
        self.data.ctrl[self._lf_act] = finger
        self.data.ctrl[self._rf_act] = -finger

    def step(self, n: int) -> None:
        for _ in range(n):
            mujoco.mj_step(self.model, self.data)

    def arm_positions(self) -> np.ndarray:
        """The 12 arm joint positions (rad), left then right, in :data:`ARM_JOINTS` order."""
        return self.data.qpos[self._arm_qadr].copy()

    def object_qpos(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[a : a + 7] for a in self._obj_qadr])


@dataclass(frozen=True)
class Plan:
    """A scripted episode turned into joint commands (our 14 joints, grippers normalised)."""

    task: str
    seed: int | None
    actions: np.ndarray  # (T, 14) float64
    phase: np.ndarray  # (T,) int16
    phase_names: tuple[str, ...]
    fps: float


def make_script(task: str, ee: EndEffectorSim, knobs: dict[str, float] | None = None) -> Script:
    start = {s: ee.tool_pose(s) for s in SIDES}
    if task == "transfer_cube":
        return transfer_cube_script(start, ee.object_qpos(), knobs)
    if task == "insertion":
        return insertion_script(start, ee.object_qpos(), knobs)
    raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")


def plan(
    task: str,
    seed: int | None,
    steps: int = 400,
    fps: float = CONTROL_HZ,
    ee: EndEffectorSim | None = None,
    knobs: dict[str, float] | None = None,
) -> Plan:
    """Run the task's script in the mocap scene; the joint path as per-step commands.

    With ``steps`` shorter than the script (tests), the script is time-compressed to fit, so
    every phase still appears.
    """
    ee = ee if ee is not None else EndEffectorSim(task)
    ee.reset(seed)
    script = make_script(task, ee, knobs)
    n_sub = round(1.0 / fps / ee.model.opt.timestep)
    if n_sub < 1 or abs(n_sub * ee.model.opt.timestep * fps - 1.0) > 1e-6:
        raise ValueError(
            f"control rate {fps} Hz is not a whole number of {ee.model.opt.timestep} s steps"
        )
    duration = max(w.t_s for ws in script.waypoints.values() for w in ws)
    scale = min(1.0, steps / fps / duration) if duration > 0 else 1.0
    actions = np.empty((steps, len(JOINT_NAMES)))
    phase = np.empty(steps, dtype=np.int16)
    arm_cols, grip_cols = np.array(ARM_COLUMNS), np.array(GRIPPER_COLUMNS)
    for t in range(steps):
        ts = (t + 1) / fps / scale  # the pose the arms should reach at the end of step t
        grip = np.empty(2)
        for k, side in enumerate(SIDES):
            xyz, quat, grip[k] = script.pose_at(side, ts)
            ee.command_pose(side, xyz, quat)
        ee.command_gripper(grip)
        phase[t] = script.phase_at(t / fps / scale)
        ee.step(n_sub)
        actions[t, arm_cols] = ee.arm_positions()
        actions[t, grip_cols] = grip
    return Plan(task, seed, actions, phase, script.phase_names, fps)
