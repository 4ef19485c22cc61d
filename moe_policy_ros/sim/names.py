"""Names of the ALOHA sim (tasks, joints, arms) without MuJoCo, for readers of its data.

:mod:`moe_policy_ros.sim.aloha` and the dataset format both take them from here, so reading a
dataset or parsing ``record``'s options never imports MuJoCo.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("transfer_cube", "insertion")

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
SIDES = ("left", "right")
JOINT_NAMES: tuple[str, ...] = tuple(
    f"{side}_{j}" for side in SIDES for j in (*ARM_JOINTS, "gripper")
)
ARM_JOINT_NAMES: dict[str, tuple[str, ...]] = {
    f"{side}_arm": tuple(f"{side}_{j}" for j in (*ARM_JOINTS, "gripper")) for side in SIDES
}
# columns of our 14-vector: the 12 arm joints (left then right) and the 2 grippers
ARM_COLUMNS: tuple[int, ...] = tuple(
    i for i, n in enumerate(JOINT_NAMES) if not n.endswith("_gripper")
)
GRIPPER_COLUMNS: tuple[int, ...] = tuple(
    i for i, n in enumerate(JOINT_NAMES) if n.endswith("_gripper")
)
