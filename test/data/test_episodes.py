"""The ALOHA/ACT HDF5 episode format: round trip, datasets, external files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from moe_policy_ros.data.episodes import (
    ALOHA_JOINT_NAMES,
    Dataset,
    DatasetError,
    Episode,
    episode_path,
    read_episode,
    write_episode,
    write_meta,
)

T, J = 6, len(ALOHA_JOINT_NAMES)


def make_episode(seed: int = 0, t: int = T) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        joint_names=ALOHA_JOINT_NAMES,
        qpos=rng.normal(size=(t, J)).astype(np.float32),
        action=rng.normal(size=(t, J)).astype(np.float32),
        images={"top": rng.integers(0, 255, size=(t, 12, 16, 3), dtype=np.uint8)},
        fps=50.0,
        phase=np.array([0, 0, 1, 1, 2, 2][:t], dtype=np.int16),
        phase_names=("approach", "grasp", "lift"),
        task="transfer_cube",
        seed=seed,
        success=True,
        qvel=rng.normal(size=(t, J)).astype(np.float32),
    )


def write_external(path: Path, n_joints: int = J, images: bool = True) -> np.ndarray:
    """A file as ACT's record_sim_episodes.py writes it: no joint names, no fps, no phase."""
    qpos = np.arange(T * n_joints, dtype=np.float32).reshape(T, n_joints)
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = True
        obs = f.create_group("observations")
        obs.create_dataset("qpos", data=qpos)
        obs.create_dataset("qvel", data=np.zeros_like(qpos))
        if images:
            obs.create_group("images").create_dataset(
                "top", data=np.zeros((T, 4, 5, 3), np.uint8), chunks=(1, 4, 5, 3)
            )
        f.create_dataset("action", data=qpos + 1)
    return qpos


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    ep = make_episode(3)
    path = write_episode(episode_path(tmp_path, 0), ep)
    assert path.name == "episode_0.hdf5"
    back = read_episode(path)
    assert back.joint_names == ALOHA_JOINT_NAMES
    np.testing.assert_array_equal(back.qpos, ep.qpos)
    np.testing.assert_array_equal(back.action, ep.action)
    assert back.qvel is not None and ep.qvel is not None
    np.testing.assert_array_equal(back.qvel, ep.qvel)
    np.testing.assert_array_equal(back.images["top"], ep.images["top"])
    assert back.phase is not None and back.phase.dtype == np.int16
    np.testing.assert_array_equal(back.phase, ep.phase)
    assert back.phase_names == ep.phase_names
    assert (back.fps, back.task, back.seed, back.success) == (50.0, "transfer_cube", 3, True)
    assert back.qpos.dtype == back.action.dtype == np.float32
    assert len(back) == T


def test_written_file_has_the_act_layout(tmp_path: Path) -> None:
    path = write_episode(tmp_path / "episode_0.hdf5", make_episode())
    with h5py.File(path, "r") as f:
        assert f["observations/qpos"].shape == (T, J)
        assert f["observations/qvel"].shape == (T, J)
        assert f["action"].dtype == np.float32
        img = f["observations/images/top"]
        assert img.shape == (T, 12, 16, 3) and img.dtype == np.uint8
        assert img.chunks == (1, 12, 16, 3) and img.compression == "gzip"
        assert bool(f.attrs["sim"])
        assert json.loads(f.attrs["joint_names"]) == list(ALOHA_JOINT_NAMES)
        assert json.loads(f["phase"].attrs["phase_names"]) == ["approach", "grasp", "lift"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_missing_qvel_is_written_as_a_finite_difference(tmp_path: Path) -> None:
    ep = make_episode()
    ep = Episode(ep.joint_names, ep.qpos, ep.action, ep.images, ep.fps)
    back = read_episode(write_episode(tmp_path / "episode_0.hdf5", ep))
    assert back.qvel is not None
    np.testing.assert_allclose(back.qvel, np.gradient(ep.qpos, axis=0) * 50.0, rtol=1e-5)
    assert back.extra["qvel_source"] == "finite_difference"
    assert back.phase is None and back.phase_names == ()


def test_named_joints_are_mapped_to_the_robot_order(tmp_path: Path) -> None:
    ep = make_episode()
    path = write_episode(tmp_path / "episode_0.hdf5", ep)
    order = list(reversed(ALOHA_JOINT_NAMES))
    back = read_episode(path, joint_names=order)
    assert back.joint_names == tuple(order)
    np.testing.assert_array_equal(back.qpos, ep.qpos[:, ::-1])
    np.testing.assert_array_equal(back.action, ep.action[:, ::-1])
    # a subset: the robot uses only the left arm
    left = [n for n in ALOHA_JOINT_NAMES if n.startswith("left_")]
    assert read_episode(path, joint_names=left).qpos.shape == (T, 7)


def test_rename_maps_a_users_joint_names(tmp_path: Path) -> None:
    ep = make_episode()
    theirs = tuple(f"j{i}" for i in range(J))
    path = write_episode(
        tmp_path / "episode_0.hdf5",
        Episode(theirs, ep.qpos, ep.action, ep.images, ep.fps),
    )
    back = read_episode(
        path,
        joint_names=ALOHA_JOINT_NAMES,
        rename=dict(zip(theirs, ALOHA_JOINT_NAMES, strict=True)),
    )
    np.testing.assert_array_equal(back.qpos, ep.qpos)


def test_unmapped_joint_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_episode(tmp_path / "episode_0.hdf5", make_episode())
    wanted = [*ALOHA_JOINT_NAMES[:-1], "right_finger_x"]
    with pytest.raises(DatasetError, match=r"episode_0\.hdf5.*'right_finger_x'"):
        read_episode(path, joint_names=wanted)


def test_external_file_without_our_attrs_loads(tmp_path: Path) -> None:
    path = tmp_path / "episode_7.hdf5"
    qpos = write_external(path)
    ep = read_episode(path, fps=50.0)
    assert ep.joint_names == ALOHA_JOINT_NAMES
    np.testing.assert_array_equal(ep.qpos, qpos)
    np.testing.assert_array_equal(ep.action, qpos + 1)
    assert ep.images["top"].shape == (T, 4, 5, 3)
    assert (ep.phase, ep.task, ep.seed, ep.success) == (None, None, None, None)
    # in a dataset directory without meta.json, the rate comes from the caller
    ds = Dataset.open(tmp_path, joint_names=ALOHA_JOINT_NAMES, fps=50.0)
    assert ds.meta == {} and len(ds) == 1 and ds[0].fps == 50.0


def test_external_file_needs_a_rate(tmp_path: Path) -> None:
    path = tmp_path / "episode_0.hdf5"
    write_external(path)
    with pytest.raises(DatasetError, match=r"episode_0\.hdf5.*'fps'"):
        read_episode(path)


def test_wrong_joint_count_is_an_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "episode_0.hdf5"
    write_external(path, n_joints=12)
    with pytest.raises(DatasetError, match=r"12 joint columns.*14 joints"):
        read_episode(path, joint_names=ALOHA_JOINT_NAMES, fps=50.0)
    with pytest.raises(DatasetError, match=r"does not name its 12 joints"):
        read_episode(path, fps=50.0)


@pytest.mark.parametrize("key", ["observations/qpos", "action"])
def test_missing_key_is_an_error_naming_key_and_file(tmp_path: Path, key: str) -> None:
    path = write_episode(tmp_path / "episode_0.hdf5", make_episode())
    with h5py.File(path, "a") as f:
        del f[key]
    with pytest.raises(DatasetError, match=rf"episode_0\.hdf5: missing key '{key}'"):
        read_episode(path)


def test_missing_camera_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_episode(tmp_path / "episode_0.hdf5", make_episode())
    with pytest.raises(DatasetError, match=r"observations/images/wrist.*\['top'\]"):
        read_episode(path, cameras=["wrist"])


def test_corrupt_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_episode(tmp_path / "episode_0.hdf5", make_episode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated mid-write elsewhere
    with pytest.raises(DatasetError, match=r"episode_0\.hdf5"):
        read_episode(path)
    (tmp_path / "episode_1.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match=r"episode_1\.hdf5: not a readable HDF5"):
        read_episode(tmp_path / "episode_1.hdf5")


def test_inconsistent_episode_is_refused_on_write(tmp_path: Path) -> None:
    ep = make_episode()
    bad = Episode(ep.joint_names, ep.qpos, ep.action[:-1], ep.images, ep.fps)
    with pytest.raises(DatasetError, match=r"action has shape \(5, 14\)"):
        write_episode(tmp_path / "episode_0.hdf5", bad)
    bad = Episode(
        ep.joint_names,
        ep.qpos,
        ep.action,
        ep.images,
        ep.fps,
        phase=np.full(T, 5, np.int16),
        phase_names=("a", "b"),
    )
    with pytest.raises(DatasetError, match=r"phase indices 5\.\.5"):
        write_episode(tmp_path / "episode_0.hdf5", bad)
    assert not list(tmp_path.iterdir())


def test_dataset_orders_episodes_and_hashes_stably(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        write_episode(episode_path(tmp_path, n), make_episode(n))
    write_meta(tmp_path, {"task": "transfer_cube", "fps": 50.0})
    (tmp_path / "notes.txt").write_text("ignored")
    ds = Dataset.open(tmp_path)
    assert [p.name for p in ds.episode_paths()] == [
        "episode_1.hdf5",
        "episode_2.hdf5",
        "episode_10.hdf5",
    ]
    assert len(ds) == 3 and ds[2].seed == 10 and ds.meta["task"] == "transfer_cube"
    digest = ds.sha256()
    assert digest == Dataset.open(tmp_path).sha256()
    write_meta(tmp_path, {"task": "transfer_cube", "fps": 25.0})
    assert Dataset.open(tmp_path).sha256() != digest


def test_dataset_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no episode_<n>\.hdf5"):
        Dataset.open(tmp_path)
    with pytest.raises(DatasetError, match="no such dataset directory"):
        Dataset.open(tmp_path / "nope")
    write_episode(episode_path(tmp_path, 0), make_episode())
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(DatasetError, match=r"meta\.json: not readable JSON"):
        Dataset.open(tmp_path)
