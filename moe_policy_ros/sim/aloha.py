"""The ALOHA bimanual ViperX simulation (gym-aloha's MJCF scenes) under our joint names.

No ROS here; :mod:`moe_policy_ros.nodes.aloha_sim` wraps it. The scene files are gym-aloha's
(``bimanual_viperx_transfer_cube.xml``, ``bimanual_viperx_insertion.xml``), located through the
installed package's ``assets`` directory without importing gym-aloha (which would pull in
gymnasium and dm_control).

Joints. Our 14 names (``left_waist`` .. ``left_gripper``, ``right_waist`` .. ``right_gripper``)
map to the model joints ``vx300s_<side>/<joint>`` and to the position actuators acting on them
(found through the actuator transmission, not by index). Each gripper is two slide joints
(``left_finger`` at +x, ``right_finger`` at -x), both position-actuated. Like gym-aloha's
``BimanualViperXTask``, a normalised gripper value g (0 closed .. 1 open) maps to the finger
position ``x = g * (0.058 - 0.01844) + 0.01844`` m (the "puppet" gripper range), commanded as
``+x`` / ``-x`` on the two fingers (MuJoCo clamps it to the actuators' 0.021..0.057 m), and the
measured gripper value is the left finger's position normalised the same way; the gripper
velocity is normalised by the same span.

Tasks (gym-aloha ``tasks/sim.py`` and ``utils.py``). ``reset(seed)`` puts both arms in
gym-aloha's start pose and samples the object pose with ``numpy.random.RandomState(seed)`` from
the same ranges (cube: x 0..0.2, y 0.4..0.6, z 0.05; peg x 0.1..0.2 and socket x -0.2..-0.1,
y 0.4..0.6), written into the free joints' qpos. ``reward()`` is gym-aloha's 0..4 stage from the
contact pairs (unordered here); :meth:`AlohaSim.success` is stage 4: for the cube, touching a
left gripper finger and not the table *after* the right gripper has touched it in this episode
(the hand-over; gym-aloha does not check that part), for the insertion, the peg touching the
pin inside the socket.

Rendering. :class:`CameraRenderer` wraps ``mujoco.Renderer`` with shadows and reflections off;
it must be created and used in one thread (the GL context is made current there). The OpenGL
backend is chosen before MuJoCo is imported (:func:`select_gl_backend`): ``MUJOCO_GL`` when set,
else EGL, else OSMesa with a warning; nothing usable raises naming what is missing.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from moe_policy_ros.sim.names import (
    ARM_COLUMNS,
    ARM_JOINT_NAMES,  # noqa: F401  (re-exported: the node's arms)
    ARM_JOINTS,
    GRIPPER_COLUMNS,
    JOINT_NAMES,
    SIDES,
    TASKS,
)

_log = logging.getLogger(__name__)


def select_gl_backend() -> str:
    """Pick the MuJoCo OpenGL backend (must run before ``import mujoco``); returns it.

    An explicit ``MUJOCO_GL`` is respected. When MuJoCo is already imported its choice is
    final and is returned (with a warning if it is not a headless backend). Otherwise EGL when
    ``libEGL`` can be loaded, else OSMesa when ``libOSMesa`` can (logged as a warning: it is
    much slower). ``PYOPENGL_PLATFORM`` follows unless it is set.
    """
    loaded = sys.modules.get("mujoco.rendering.classic.gl_context")
    if loaded is not None:
        # MuJoCo read MUJOCO_GL when it was imported; that choice is final for this process
        effective = str(getattr(loaded, "_MUJOCO_GL", "")) or "glfw"
        if effective not in ("egl", "osmesa"):
            _log.warning(
                "mujoco was imported before the GL backend was chosen (MUJOCO_GL=%r): "
                "offscreen rendering needs a display; set MUJOCO_GL=egl before importing mujoco",
                effective,
            )
        return effective
    # Software GL (Mesa llvmpipe) otherwise renders with one thread per core and starves the
    # controller that shares the machine; one thread keeps a 128x96 camera well under 15 ms.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not chosen:
        if ctypes.util.find_library("EGL"):
            chosen = "egl"
        elif ctypes.util.find_library("OSMesa"):
            chosen = "osmesa"
            _log.warning("libEGL not found: falling back to OSMesa software rendering (slow)")
        else:
            raise RuntimeError(
                "no headless OpenGL for MuJoCo rendering: neither libEGL nor libOSMesa found "
                "(install libegl1 or libosmesa6, or set MUJOCO_GL)"
            )
        os.environ["MUJOCO_GL"] = chosen
    if chosen in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
    return chosen


GL_BACKEND = select_gl_backend()

import mujoco  # noqa: E402  (the GL backend must be chosen first)

TaskName = Literal["transfer_cube", "insertion"]

# gym-aloha constants.py: START_ARM_POSE (per arm: 6 joints, left finger, right finger)
START_ARM_QPOS = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)
START_FINGER_POS = 0.02239  # m
# gym-aloha constants.py: PUPPET_GRIPPER_POSITION_CLOSE / _OPEN (left finger, m)
GRIPPER_POSITION_CLOSE = 0.01844
GRIPPER_POSITION_OPEN = 0.05800
_GRIPPER_SPAN = GRIPPER_POSITION_OPEN - GRIPPER_POSITION_CLOSE

_XML = {
    "transfer_cube": "bimanual_viperx_transfer_cube.xml",
    "insertion": "bimanual_viperx_insertion.xml",
}
# free joints of the task objects, in qpos order of the sampled poses
OBJECT_JOINTS = {
    "transfer_cube": ("red_box_joint",),
    "insertion": ("red_peg_joint", "blue_socket_joint"),
}


def gripper_to_finger(g: float | np.ndarray) -> float | np.ndarray:
    """Normalised gripper (0 closed .. 1 open) -> left finger position (m)."""
    return g * _GRIPPER_SPAN + GRIPPER_POSITION_CLOSE


def finger_to_gripper(x: float | np.ndarray) -> float | np.ndarray:
    """Left finger position (m) -> normalised gripper (0 closed .. 1 open)."""
    return (x - GRIPPER_POSITION_CLOSE) / _GRIPPER_SPAN


def joint_id(model: mujoco.MjModel, name: str, where: str) -> int:
    """Id of the joint ``name`` in ``model``; ``where`` (the scene file) names it when missing."""
    jid = int(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name))
    if jid < 0:
        raise RuntimeError(f"{where}: no joint named {name!r}")
    return jid


def joint_actuator(model: mujoco.MjModel, jid: int, where: str) -> int:
    """The one actuator acting on joint ``jid`` (found through its transmission, not by index)."""
    hits = [
        a
        for a in range(model.nu)
        if model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
        and model.actuator_trnid[a, 0] == jid
    ]
    if len(hits) != 1:
        raise RuntimeError(f"{where}: joint {model.joint(jid).name!r} has {hits} actuators")
    return hits[0]


def set_start_state(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    task: str,
    seed: int | None,
    arm_qadr: np.ndarray,
    finger_qadr: tuple[np.ndarray, np.ndarray],
    obj_qadr: list[int],
) -> None:
    """gym-aloha's start pose for both arms (``arm_qadr`` left then right, ``finger_qadr`` the
    left and right fingers of both grippers) and the object poses sampled from ``seed``."""
    mujoco.mj_resetData(model, data)
    data.qpos[arm_qadr] = np.tile(START_ARM_QPOS, 2)
    data.qpos[finger_qadr[0]] = START_FINGER_POS
    data.qpos[finger_qadr[1]] = -START_FINGER_POS
    obj = sample_object_qpos(task, seed)
    for k, adr in enumerate(obj_qadr):
        data.qpos[adr : adr + 7] = obj[7 * k : 7 * k + 7]
    mujoco.mj_forward(model, data)


def assets_dir() -> Path:
    """gym-aloha's ``assets`` directory, found without importing gym-aloha."""
    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gym-aloha is not installed (pip install gym-aloha): no ALOHA MJCF")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets"
    if not path.is_dir():
        raise RuntimeError(f"gym-aloha has no assets directory at {path}")
    return path


def sample_object_qpos(task: str, seed: int | None) -> np.ndarray:
    """Object poses (x y z qw qx qy qz per object) as gym-aloha's ``sample_*_pose`` draws them."""
    rng = np.random.RandomState(seed)
    quat = np.array([1.0, 0.0, 0.0, 0.0])
    if task == "transfer_cube":
        cube = rng.uniform([0.0, 0.4, 0.05], [0.2, 0.6, 0.05])
        return np.concatenate([cube, quat])
    if task == "insertion":
        peg = rng.uniform([0.1, 0.4, 0.05], [0.2, 0.6, 0.05])
        socket = rng.uniform([-0.2, 0.4, 0.05], [-0.1, 0.6, 0.05])
        return np.concatenate([peg, quat, socket, quat])
    raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")


class AlohaSim:
    """One ALOHA scene: position targets in, joint state, contacts-based success out.

    Not thread-safe: one thread steps and reads (the ROS node's physics thread); a renderer
    may live in another thread when it draws :meth:`snapshot` states.
    """

    def __init__(
        self, task: str = "transfer_cube", seed: int | None = 0, settle_s: float = 0.0
    ) -> None:
        if not (math.isfinite(settle_s) and 0.0 <= settle_s <= 10.0):
            raise ValueError(f"settle_s must be within 0..10 s, got {settle_s}")
        #: physics run at each reset with the arms held at the start pose, before the episode
        self.settle_s = float(settle_s)
        if task not in _XML:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        self.task = task
        path = assets_dir() / _XML[task]
        self.model = mujoco.MjModel.from_xml_path(str(path))
        self.data = mujoco.MjData(self.model)
        m, where = self.model, path.name

        arm_q, arm_v, arm_a = [], [], []
        lf_q, lf_v, lf_a, rf_q, rf_a = [], [], [], [], []
        for side in SIDES:
            for j in ARM_JOINTS:
                jid = joint_id(m, f"vx300s_{side}/{j}", where)
                arm_q.append(m.jnt_qposadr[jid])
                arm_v.append(m.jnt_dofadr[jid])
                arm_a.append(joint_actuator(m, jid, where))
            lf = joint_id(m, f"vx300s_{side}/left_finger", where)
            rf = joint_id(m, f"vx300s_{side}/right_finger", where)
            lf_q.append(m.jnt_qposadr[lf])
            lf_v.append(m.jnt_dofadr[lf])
            lf_a.append(joint_actuator(m, lf, where))
            rf_q.append(m.jnt_qposadr[rf])
            rf_a.append(joint_actuator(m, rf, where))
        # index arrays into our 14-vector: arm joints and grippers
        self._arm_idx = np.array(ARM_COLUMNS)
        self._grip_idx = np.array(GRIPPER_COLUMNS)
        self._arm_qadr, self._arm_vadr = np.array(arm_q), np.array(arm_v)
        self._arm_act = np.array(arm_a)
        self._lf_qadr, self._lf_vadr = np.array(lf_q), np.array(lf_v)
        self._rf_qadr = np.array(rf_q)
        self._lf_act, self._rf_act = np.array(lf_a), np.array(rf_a)
        self._obj_qadr = [int(m.jnt_qposadr[joint_id(m, n, where)]) for n in OBJECT_JOINTS[task]]
        self._geom = {
            n: int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n))
            for n in (
                "table",
                "vx300s_left/10_left_gripper_finger",
                "vx300s_left/10_right_gripper_finger",
                "vx300s_right/10_left_gripper_finger",
                "vx300s_right/10_right_gripper_finger",
                *(("red_box",) if task == "transfer_cube" else ()),
                *(
                    ("red_peg", "pin", "socket-1", "socket-2", "socket-3", "socket-4")
                    if task == "insertion"
                    else ()
                ),
            )
        }
        missing = [n for n, g in self._geom.items() if g < 0]
        if missing:
            raise RuntimeError(f"{path.name}: geoms {missing} not found")
        self._targets = np.zeros(len(JOINT_NAMES))
        self._right_touched = False
        self.seed: int | None = seed
        self.reset(seed)

    # ------------------------------------------------------------------ properties

    @property
    def timestep(self) -> float:
        """Physics timestep (s)."""
        return float(self.model.opt.timestep)

    @property
    def time(self) -> float:
        """Simulated time since the last reset (s)."""
        return float(self.data.time)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES

    @property
    def camera_names(self) -> list[str]:
        return [self.model.camera(i).name for i in range(self.model.ncam)]

    @property
    def targets(self) -> np.ndarray:
        """Current position targets (our 14 joints, grippers normalised)."""
        return self._targets.copy()

    # ------------------------------------------------------------------ control

    def reset(self, seed: int | None = None) -> None:
        """Start pose for both arms, object poses sampled from ``seed`` (None: random).

        gym-aloha places the objects 3 cm above the table; they fall and come to rest in the
        first 0.1-0.2 s. With ``settle_s`` the scene runs that long with the arms held at the
        start pose before the episode begins (the clock back at 0), so the episode starts at
        rest, as a real scene does and as a robot that holds before autonomy is engaged
        sees it."""
        self.seed = seed
        set_start_state(
            self.model,
            self.data,
            self.task,
            seed,
            self._arm_qadr,
            (self._lf_qadr, self._rf_qadr),
            self._obj_qadr,
        )
        self._right_touched = False
        self.set_targets(self.joint_positions())
        settle = round(self.settle_s / self.timestep)
        if settle:
            self.step(settle)
            self._right_touched = False
            self.data.time = 0.0

    def set_targets(self, targets: np.ndarray) -> None:
        """Position targets for our 14 joints (rad; grippers 0 closed .. 1 open)."""
        t = np.asarray(targets, dtype=np.float64).reshape(-1)
        if t.shape[0] != len(JOINT_NAMES):
            raise ValueError(f"expected {len(JOINT_NAMES)} targets, got {t.shape[0]}")
        if not np.all(np.isfinite(t)):
            raise ValueError(f"non-finite target in {t.tolist()}")
        self._targets = t.copy()
        ctrl = self.data.ctrl
        ctrl[self._arm_act] = t[self._arm_idx]
        finger = gripper_to_finger(t[self._grip_idx])
        ctrl[self._lf_act] = finger
        ctrl[self._rf_act] = -np.asarray(finger)

    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics steps toward the current targets."""
        for _ in range(n):
            mujoco.mj_step(self.model, self.data)
            if self.task == "transfer_cube" and not self._right_touched:
                self._right_touched = self._touching(
                    "red_box",
                    "vx300s_right/10_left_gripper_finger",
                    "vx300s_right/10_right_gripper_finger",
                )

    # ------------------------------------------------------------------ state

    def joint_positions(self) -> np.ndarray:
        """Our 14 joint positions (rad; grippers normalised 0 closed .. 1 open)."""
        out = np.empty(len(JOINT_NAMES))
        out[self._arm_idx] = self.data.qpos[self._arm_qadr]
        out[self._grip_idx] = finger_to_gripper(self.data.qpos[self._lf_qadr])
        return out

    def joint_velocities(self) -> np.ndarray:
        """Our 14 joint velocities (rad/s; grippers in normalised units per second)."""
        out = np.empty(len(JOINT_NAMES))
        out[self._arm_idx] = self.data.qvel[self._arm_vadr]
        out[self._grip_idx] = self.data.qvel[self._lf_vadr] / _GRIPPER_SPAN
        return out

    def object_qpos(self) -> np.ndarray:
        """Task object poses (x y z qw qx qy qz per object)."""
        return np.concatenate([self.data.qpos[a : a + 7] for a in self._obj_qadr])

    # ------------------------------------------------------------------ task

    def _contact_pairs(self) -> set[frozenset[int]]:
        ncon = self.data.ncon
        if ncon == 0:
            return set()
        geoms = self.data.contact.geom[:ncon]
        return {frozenset((int(a), int(b))) for a, b in geoms}

    def _touching(self, obj: str, *others: str) -> bool:
        ncon = self.data.ncon
        if ncon == 0:
            return False
        g = self.data.contact.geom[:ncon]
        a = self._geom[obj]
        ids = [self._geom[o] for o in others]
        return bool(
            np.any(
                ((g[:, 0] == a) & np.isin(g[:, 1], ids)) | ((g[:, 1] == a) & np.isin(g[:, 0], ids))
            )
        )

    def reward(self) -> int:
        """gym-aloha's staged reward 0..4 from the current contacts (4 = success)."""
        pairs = self._contact_pairs()
        g = self._geom

        def touch(a: str, *bs: str) -> bool:
            return any(frozenset((g[a], g[b])) in pairs for b in bs)

        left = ("vx300s_left/10_left_gripper_finger", "vx300s_left/10_right_gripper_finger")
        right = ("vx300s_right/10_left_gripper_finger", "vx300s_right/10_right_gripper_finger")
        if self.task == "transfer_cube":
            on_table = touch("red_box", "table")
            reward = 0
            if touch("red_box", *right):
                reward = 2 if not on_table else 1
            if touch("red_box", *left):
                reward = 4 if (not on_table and self._right_touched) else 3
            return reward
        sockets = ("socket-1", "socket-2", "socket-3", "socket-4")
        touch_left = any(touch(s, *left) for s in sockets)
        touch_right = touch("red_peg", *right)
        peg_table = touch("red_peg", "table")
        socket_table = any(touch(s, "table") for s in sockets)
        reward = 0
        if touch_left and touch_right:
            reward = 1
            if not peg_table and not socket_table:
                reward = 2
        if touch("red_peg", *sockets) and not peg_table and not socket_table:
            reward = 3
        if touch("red_peg", "pin"):
            reward = 4
        return reward

    def success(self) -> bool:
        """Task solved now (reward stage 4)."""
        return self.reward() == 4

    # ------------------------------------------------------------------ rendering

    def camera(
        self, name: str, width: int = 128, height: int = 96, msaa_samples: int = 0
    ) -> CameraRenderer:
        """A renderer for the MJCF camera ``name`` (create and use it in one thread)."""
        return CameraRenderer(self, name, width, height, msaa_samples)

    def snapshot(self) -> SceneState:
        """What a camera sees now (positions of everything), copied: a renderer in another
        thread can draw it while this one keeps stepping."""
        d = self.data
        return SceneState(float(d.time), d.qpos.copy(), d.mocap_pos.copy(), d.mocap_quat.copy())


@dataclass(frozen=True)
class SceneState:
    """The positions a render needs (:meth:`AlohaSim.snapshot`); ``time`` is simulated s."""

    time: float
    qpos: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray


class CameraRenderer:
    """``mujoco.Renderer`` for one camera, shadows and reflections off, RGB uint8 (H, W, 3).

    ``msaa_samples`` is the offscreen multisampling (the scene asks for 4). It defaults to 0:
    at policy resolutions it changes little, and with software GL (llvmpipe) it costs about
    2.5x the render time.
    """

    def __init__(
        self,
        sim: AlohaSim,
        camera: str,
        width: int = 128,
        height: int = 96,
        msaa_samples: int = 0,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"camera {camera!r}: size {width}x{height} must be positive")
        if camera not in sim.camera_names:
            raise ValueError(f"no camera {camera!r} in the scene; cameras are {sim.camera_names}")
        vis = sim.model.vis.global_
        # the offscreen buffer must hold the image (the scene asks for 640x480)
        vis.offwidth = max(int(vis.offwidth), width)
        vis.offheight = max(int(vis.offheight), height)
        if msaa_samples < 0:
            raise ValueError(f"msaa_samples {msaa_samples} must be >= 0")
        sim.model.vis.quality.offsamples = msaa_samples  # read when the GL context is made
        self.sim, self.name, self.width, self.height = sim, camera, width, height
        self._renderer = mujoco.Renderer(sim.model, height=height, width=width)
        self._option = mujoco.MjvOption()
        self._data: mujoco.MjData | None = None  # for snapshots: this renderer's own

    def render(self, state: SceneState | None = None) -> np.ndarray:
        """Render the scene as it is now, or as ``state`` (a snapshot, drawn from this
        renderer's own MjData so the simulation may step meanwhile): (height, width, 3) uint8
        RGB."""
        r = self._renderer
        data = self.sim.data
        if state is not None:
            if self._data is None:
                self._data = mujoco.MjData(self.sim.model)
            data = self._data
            data.time = state.time
            data.qpos[:] = state.qpos
            data.mocap_pos[:] = state.mocap_pos
            data.mocap_quat[:] = state.mocap_quat
            mujoco.mj_kinematics(self.sim.model, data)
            mujoco.mj_camlight(self.sim.model, data)
        r.update_scene(data, camera=self.name, scene_option=self._option)
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return r.render()

    def close(self) -> None:
        self._renderer.close()


@dataclass(frozen=True)
class SimBenchmark:
    render_ms: float  # mean time of one render (update_scene + render + readback)
    real_time_factor: float  # simulated seconds per wall second, physics only
    gl_backend: str


def benchmark(
    task: str = "transfer_cube",
    camera: str = "top",
    width: int = 128,
    height: int = 96,
    renders: int = 100,
    sim_seconds: float = 5.0,
) -> SimBenchmark:
    """Measure the render time and the physics-only real-time factor on this machine."""
    sim = AlohaSim(task, seed=0)
    cam = sim.camera(camera, width, height)
    try:
        cam.render()  # warm-up (shader compilation)
        t0 = time.perf_counter()
        for _ in range(renders):
            cam.render()
        render_ms = (time.perf_counter() - t0) / renders * 1e3
        steps = round(sim_seconds / sim.timestep)
        t0 = time.perf_counter()
        sim.step(steps)
        rtf = steps * sim.timestep / (time.perf_counter() - t0)
    finally:
        cam.close()
    return SimBenchmark(render_ms, rtf, GL_BACKEND)


if __name__ == "__main__":
    for t in TASKS:
        print(t, benchmark(t))
