"""The MuJoCo ALOHA wrapper: joint mapping, tracking, rendering, seeded resets, success."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported
pytest.importorskip("mujoco", reason="mujoco is not installed")
if importlib.util.find_spec("gym_aloha") is None:
    pytest.skip("gym-aloha (ALOHA MJCF) is not installed", allow_module_level=True)

import mujoco

from moe_policy_ros.core.config import load_config
from moe_policy_ros.sim.aloha import (
    ARM_JOINT_NAMES,
    JOINT_NAMES,
    AlohaSim,
    finger_to_gripper,
    gripper_to_finger,
)

pytestmark = pytest.mark.sim
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cube() -> AlohaSim:
    return AlohaSim("transfer_cube", seed=0)


def test_joint_names_match_the_robot_config() -> None:
    cfg = load_config(REPO / "config" / "dual_arm.yaml")
    assert list(JOINT_NAMES) == cfg.robot.joint_names
    for arm in cfg.robot.arms:
        assert list(ARM_JOINT_NAMES[arm.name]) == arm.joint_names


def test_joint_mapping_reaches_the_named_model_joints(cube: AlohaSim) -> None:
    cube.reset(0)
    m, d = cube.model, cube.data
    q = d.qpos
    assert q[m.joint("vx300s_left/shoulder").qposadr[0]] == pytest.approx(-0.96)
    assert q[m.joint("vx300s_right/elbow").qposadr[0]] == pytest.approx(1.16)
    targets = cube.targets
    targets[JOINT_NAMES.index("right_waist")] = 0.3
    targets[JOINT_NAMES.index("left_gripper")] = 1.0
    cube.set_targets(targets)
    act = {m.actuator(a).trnid[0]: a for a in range(m.nu)}
    assert d.ctrl[act[m.joint("vx300s_right/waist").id]] == pytest.approx(0.3)
    assert d.ctrl[act[m.joint("vx300s_left/waist").id]] == pytest.approx(0.0)
    # gripper 1.0 -> gym-aloha's open finger position, mirrored on the other finger
    assert d.ctrl[act[m.joint("vx300s_left/left_finger").id]] == pytest.approx(0.058)
    assert d.ctrl[act[m.joint("vx300s_left/right_finger").id]] == pytest.approx(-0.058)


def test_gripper_normalisation_round_trips() -> None:
    assert gripper_to_finger(0.0) == pytest.approx(0.01844)
    assert gripper_to_finger(1.0) == pytest.approx(0.058)
    assert finger_to_gripper(gripper_to_finger(0.37)) == pytest.approx(0.37)


def test_targets_are_reached_within_tolerance(cube: AlohaSim) -> None:
    cube.reset(0)
    targets = cube.joint_positions()
    deltas = {
        "left_waist": 0.4,
        "left_elbow": -0.3,
        "right_shoulder": 0.2,
        "right_wrist_angle": 0.3,
    }
    for name, delta in deltas.items():
        targets[JOINT_NAMES.index(name)] += delta
    targets[JOINT_NAMES.index("left_gripper")] = 0.8
    cube.set_targets(targets)
    cube.step(round(1.5 / cube.timestep))  # 1.5 s simulated
    pos = cube.joint_positions()
    arm = [i for i, n in enumerate(JOINT_NAMES) if not n.endswith("gripper")]
    np.testing.assert_allclose(pos[arm], targets[arm], atol=0.03)
    assert pos[JOINT_NAMES.index("left_gripper")] == pytest.approx(0.8, abs=0.05)
    assert np.all(np.abs(cube.joint_velocities()[arm]) < 0.05)


def test_seeded_reset_is_reproducible_and_in_range(cube: AlohaSim) -> None:
    cube.reset(3)
    first = cube.object_qpos()
    cube.step(50)
    cube.reset(3)
    np.testing.assert_array_equal(cube.object_qpos(), first)
    cube.reset(4)
    assert not np.array_equal(cube.object_qpos(), first)
    x, y, z = first[:3]
    assert 0.0 <= x <= 0.2 and 0.4 <= y <= 0.6 and z == pytest.approx(0.05)


def test_settle_starts_the_episode_with_the_cube_at_rest(cube: AlohaSim) -> None:
    """gym-aloha spawns the cube 3 cm above the table: without settling it falls during the
    episode's first 0.2 s; with ``settle_s`` the episode starts with it at rest, the arms at
    the start pose and the clock at 0."""
    cube.reset(5)
    z0 = cube.object_qpos()[2]
    cube.step(100)  # 0.2 s
    fallen = z0 - cube.object_qpos()[2]
    assert fallen > 0.02
    settled = AlohaSim("transfer_cube", seed=5, settle_s=0.3)
    assert settled.time == 0.0 and not settled.success()
    assert settled.object_qpos()[2] == pytest.approx(z0 - fallen, abs=1e-3)
    np.testing.assert_allclose(settled.targets, cube.targets)
    assert np.max(np.abs(settled.joint_positions() - settled.targets)) < 0.02  # held
    start = settled.object_qpos().copy()
    settled.step(100)
    np.testing.assert_allclose(settled.object_qpos(), start, atol=1e-4)  # at rest
    settled.reset(5)  # every reset settles
    np.testing.assert_allclose(settled.object_qpos()[:3], start[:3], atol=1e-6)
    for bad in (-0.1, float("nan"), 11.0):
        with pytest.raises(ValueError, match="settle_s"):
            AlohaSim("transfer_cube", settle_s=bad)


def test_insertion_reset_places_peg_and_socket() -> None:
    sim = AlohaSim("insertion", seed=1)
    poses = sim.object_qpos()
    assert poses.shape == (14,)
    assert 0.1 <= poses[0] <= 0.2 and -0.2 <= poses[7] <= -0.1
    assert not sim.success() and sim.reward() == 0
    sim.step(100)
    assert not sim.success()


def test_success_is_false_at_reset_and_while_resting(cube: AlohaSim) -> None:
    cube.reset(0)
    assert not cube.success() and cube.reward() == 0
    cube.step(200)
    assert not cube.success()


def test_render_shape_dtype_and_content(cube: AlohaSim) -> None:
    cube.reset(0)
    cam = cube.camera("top", width=128, height=96)
    try:
        img = cam.render()
        assert img.shape == (96, 128, 3) and img.dtype == np.uint8
        assert img.std() > 5.0  # not a blank frame
        big = cube.camera("top", width=800, height=600)  # beyond the scene's 640x480 buffer
        assert big.render().shape == (600, 800, 3)
        big.close()
    finally:
        cam.close()


def test_a_snapshot_renders_as_its_instant_while_the_sim_steps_on(cube: AlohaSim) -> None:
    """The sim node renders in its own thread from snapshots: a snapshot's image is the live
    image of that instant, pixel for pixel, and stays so after the arms have moved."""
    cube.reset(3)
    cam = cube.camera("top", width=160, height=120)
    try:
        cube.step(50)
        mujoco.mj_forward(cube.model, cube.data)  # live kinematics of the current qpos
        live = cam.render()
        snap = cube.snapshot()
        np.testing.assert_array_equal(cam.render(snap), live)
        targets = cube.targets
        targets[0] += 0.5  # left waist
        cube.set_targets(targets)
        cube.step(200)
        mujoco.mj_forward(cube.model, cube.data)
        assert np.abs(cam.render().astype(int) - live).mean() > 1.0  # the scene moved
        np.testing.assert_array_equal(cam.render(snap), live)
    finally:
        cam.close()


def test_bad_task_and_camera_are_named(cube: AlohaSim) -> None:
    with pytest.raises(ValueError, match="unknown task 'stack'"):
        AlohaSim("stack")
    with pytest.raises(ValueError, match="no camera 'wrist'"):
        cube.camera("wrist")
    assert "top" in cube.camera_names
    assert mujoco.mjtRndFlag.mjRND_SHADOW is not None
