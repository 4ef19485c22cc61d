"""Episodes in the ALOHA/ACT HDF5 layout: one file per episode, plus ``meta.json``.

Layout of ``episode_<n>.hdf5`` (what ACT's ``record_sim_episodes.py`` writes, so ACT-style
readers load our files and we load theirs)::

    /observations/qpos           (T, J) float32  measured joint positions
    /observations/qvel           (T, J) float32  measured joint velocities
    /observations/images/<cam>   (T, H, W, 3) uint8 RGB, chunked one frame per chunk, gzip
    /action                      (T, J) float32  joint command sent at step t
    attrs: sim (bool)

Our additions, all optional when reading: ``/phase`` (T,) int16 with attr ``phase_names``
(JSON list), and root attrs ``joint_names`` (JSON list), ``fps``, ``task``, ``seed``,
``success``. Grippers are normalised 0 closed .. 1 open, as in ACT.

Joint mapping (a dataset recorded on another robot). The caller passes the robot config's
joint order (``joint_names``). A file that names its joints is mapped by name, after an
optional ``rename`` (file name -> robot name), and a robot joint the file lacks is an error
naming it; file joints the robot does not use are dropped. A file without names is taken in the
robot's order when the column count matches, and is an error naming both counts otherwise.

Every problem is a :class:`DatasetError` naming the file and the key, joint or value.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from moe_policy_ros.core.io import hash_file_into
from moe_policy_ros.sim.names import JOINT_NAMES as ALOHA_JOINT_NAMES  # the sim's, no MuJoCo

FORMAT = "aloha-act-hdf5"
META_FILE = "meta.json"
EPISODE_RE = re.compile(r"^episode_(\d+)\.hdf5$")


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names file and key."""


@dataclass(frozen=True)
class Episode:
    """One demonstration, joints in robot-config order."""

    joint_names: tuple[str, ...]  # robot-config order (after mapping)
    qpos: np.ndarray  # (T, J) float32 measured positions; gripper 0 closed..1 open
    action: np.ndarray  # (T, J) float32 joint command sent at step t
    images: Mapping[str, np.ndarray]  # camera -> (T, H, W, 3) uint8 RGB
    fps: float
    phase: np.ndarray | None = None  # (T,) int16 index into phase_names
    phase_names: tuple[str, ...] = ()
    task: str | None = None
    seed: int | None = None
    success: bool | None = None
    qvel: np.ndarray | None = None  # (T, J) float32 measured velocities, when known
    extra: Mapping[str, Any] = field(default_factory=dict)  # other root attrs, as read

    def __len__(self) -> int:
        return int(self.qpos.shape[0])

    def validate(self, where: str = "episode") -> None:
        """Raise :class:`DatasetError` naming ``where`` and the field if shapes disagree."""
        j = len(self.joint_names)
        if len(set(self.joint_names)) != j:
            dup = sorted({n for n in self.joint_names if self.joint_names.count(n) > 1})
            raise DatasetError(f"{where}: repeated joint names {dup}")
        q = np.asarray(self.qpos)
        if q.ndim != 2 or q.shape[1] != j:
            raise DatasetError(f"{where}: qpos has shape {q.shape}; expected (T, {j})")
        t = q.shape[0]
        if t == 0:
            raise DatasetError(f"{where}: episode has no steps")
        for name, arr in (("action", self.action), ("qvel", self.qvel)):
            if arr is None:
                continue
            if np.asarray(arr).shape != (t, j):
                raise DatasetError(
                    f"{where}: {name} has shape {np.asarray(arr).shape}; expected {(t, j)}"
                )
        for cam, img in self.images.items():
            a = np.asarray(img)
            if a.dtype != np.uint8 or a.ndim != 4 or a.shape[0] != t or a.shape[3] != 3:
                raise DatasetError(
                    f"{where}: images/{cam} is {a.dtype} {a.shape}; "
                    f"expected uint8 (T={t}, H, W, 3)"
                )
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise DatasetError(f"{where}: fps {self.fps} must be positive")
        if self.phase is not None:
            p = np.asarray(self.phase)
            if p.shape != (t,):
                raise DatasetError(f"{where}: phase has shape {p.shape}; expected ({t},)")
            if p.size and (p.min() < 0 or p.max() >= len(self.phase_names)):
                raise DatasetError(
                    f"{where}: phase indices {int(p.min())}..{int(p.max())} outside "
                    f"phase_names {list(self.phase_names)}"
                )


# --------------------------------------------------------------------------- writing


def episode_path(root: str | Path, index: int) -> Path:
    """``root/episode_<index>.hdf5``."""
    return Path(root) / f"episode_{int(index)}.hdf5"


def write_episode(path: str | Path, ep: Episode) -> Path:
    """Write ``ep`` to ``path`` atomically (temporary file, then rename); returns the path.

    ``qvel`` is written as recorded, or, when the episode has none, as the finite difference of
    ``qpos`` (root attr ``qvel_source`` says which), so ACT-style readers always find it.
    """
    path = Path(path)
    ep.validate(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    qpos = np.asarray(ep.qpos, dtype=np.float32)
    if ep.qvel is not None:
        qvel, qvel_source = np.asarray(ep.qvel, dtype=np.float32), "measured"
    else:
        qvel = np.gradient(qpos, axis=0) * ep.fps if len(qpos) > 1 else np.zeros_like(qpos)
        qvel, qvel_source = qvel.astype(np.float32), "finite_difference"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["sim"] = True
            f.attrs["format"] = FORMAT
            f.attrs["joint_names"] = json.dumps(list(ep.joint_names))
            f.attrs["fps"] = float(ep.fps)
            f.attrs["qvel_source"] = qvel_source
            if ep.task is not None:
                f.attrs["task"] = ep.task
            if ep.seed is not None:
                f.attrs["seed"] = int(ep.seed)
            if ep.success is not None:
                f.attrs["success"] = bool(ep.success)
            obs = f.create_group("observations")
            obs.create_dataset("qpos", data=qpos)
            obs.create_dataset("qvel", data=qvel)
            img = obs.create_group("images")
            for cam, frames in ep.images.items():
                a = np.asarray(frames)
                img.create_dataset(
                    cam,
                    data=a,
                    chunks=(1, *a.shape[1:]),
                    compression="gzip",
                    compression_opts=4,
                )
            f.create_dataset("action", data=np.asarray(ep.action, dtype=np.float32))
            if ep.phase is not None:
                ph = f.create_dataset("phase", data=np.asarray(ep.phase, dtype=np.int16))
                ph.attrs["phase_names"] = json.dumps(list(ep.phase_names))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_meta(root: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``root/meta.json`` atomically; returns its path."""
    path = Path(root) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{META_FILE}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_meta(root: str | Path) -> dict[str, Any]:
    """``root/meta.json`` as a dict; ``{}`` when the dataset has none (recorded elsewhere)."""
    path = Path(root) / META_FILE
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


# --------------------------------------------------------------------------- reading


def _attr(f: h5py.File, key: str) -> Any:
    v = f.attrs.get(key)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def _json_list(path: Path, key: str, raw: Any) -> tuple[str, ...]:
    try:
        names = (
            json.loads(raw)
            if isinstance(raw, str)
            else [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
        )
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path}: attr {key!r} is not a JSON list of names ({err})") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: attr {key!r} must be a list of names, got {raw!r}")
    return tuple(names)


def _dataset(f: h5py.File, path: Path, key: str) -> np.ndarray:
    if key not in f:
        raise DatasetError(f"{path}: missing key {key!r}")
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(f"{path}: {key!r} is a group, expected an array")
    try:
        return np.asarray(node[()])
    except OSError as err:  # a corrupt chunk or filter failure
        raise DatasetError(f"{path}: cannot read {key!r} ({err})") from err


def _column_order(
    path: Path,
    file_names: tuple[str, ...] | None,
    n_cols: int,
    joint_names: Sequence[str] | None,
    rename: Mapping[str, str] | None,
) -> tuple[tuple[str, ...], np.ndarray]:
    """(robot joint names, column index into the file for each)."""
    if file_names is not None:
        if len(file_names) != n_cols:
            raise DatasetError(
                f"{path}: attr 'joint_names' lists {len(file_names)} joints but qpos has "
                f"{n_cols} columns"
            )
        mapped = tuple((rename or {}).get(n, n) for n in file_names)
        if len(set(mapped)) != len(mapped):
            raise DatasetError(f"{path}: joint names {list(mapped)} repeat after renaming")
        if joint_names is None:
            return mapped, np.arange(n_cols)
        col = {n: i for i, n in enumerate(mapped)}
        missing = [n for n in joint_names if n not in col]
        if missing:
            raise DatasetError(
                f"{path}: robot joint {missing[0]!r} does not map to any joint in the file "
                f"(file joints {list(mapped)}; missing {missing})"
            )
        return tuple(joint_names), np.array([col[n] for n in joint_names])
    names = tuple(joint_names) if joint_names is not None else None
    if names is None:
        if n_cols != len(ALOHA_JOINT_NAMES):
            raise DatasetError(
                f"{path}: the file does not name its {n_cols} joints and no robot joint names "
                f"were given (pass the robot config's joint names)"
            )
        names = ALOHA_JOINT_NAMES
    if len(names) != n_cols:
        raise DatasetError(
            f"{path}: the file has {n_cols} joint columns and does not name them, but the "
            f"robot config has {len(names)} joints {list(names)}"
        )
    return names, np.arange(n_cols)


def read_episode(
    path: str | Path,
    joint_names: Sequence[str] | None = None,
    cameras: Sequence[str] | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    fps: float | None = None,
) -> Episode:
    """Load one episode file, joints in ``joint_names`` order (the robot config's).

    ``joint_names`` None keeps the file's own names (or the ALOHA 14 for an unnamed 14-column
    file). ``cameras`` None loads every camera in the file. ``rename`` maps the file's joint
    names to the robot's. ``fps`` is used when the file has no ``fps`` attr (ACT files do not);
    a file without it and no ``fps`` given is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such episode file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from err
    with f:
        qpos = _dataset(f, path, "observations/qpos")
        action = _dataset(f, path, "action")
        if qpos.ndim != 2:
            raise DatasetError(
                f"{path}: observations/qpos has shape {qpos.shape}; expected (T, J)"
            )
        raw_names = _attr(f, "joint_names")
        file_names = None if raw_names is None else _json_list(path, "joint_names", raw_names)
        names, cols = _column_order(path, file_names, qpos.shape[1], joint_names, rename)
        if action.shape != qpos.shape:
            raise DatasetError(
                f"{path}: action has shape {action.shape} but observations/qpos has {qpos.shape}"
            )
        qvel = None
        if "observations/qvel" in f:
            qvel = _dataset(f, path, "observations/qvel")
            if qvel.shape != qpos.shape:
                raise DatasetError(
                    f"{path}: observations/qvel has shape {qvel.shape}; expected {qpos.shape}"
                )
            qvel = qvel[:, cols].astype(np.float32)
        have = sorted(f["observations/images"].keys()) if "observations/images" in f else []
        wanted = list(cameras) if cameras is not None else have
        images: dict[str, np.ndarray] = {}
        for cam in wanted:
            if cam not in have:
                raise DatasetError(
                    f"{path}: missing key 'observations/images/{cam}' (cameras in the file: "
                    f"{have})"
                )
            images[cam] = _dataset(f, path, f"observations/images/{cam}")
        phase: np.ndarray | None = None
        phase_names: tuple[str, ...] = ()
        if "phase" in f:
            phase = _dataset(f, path, "phase").astype(np.int16)
            raw = f["phase"].attrs.get("phase_names")
            if raw is None:
                raise DatasetError(f"{path}: 'phase' has no attr 'phase_names'")
            phase_names = _json_list(path, "phase/phase_names", raw)
        file_fps = _attr(f, "fps")
        if file_fps is None:
            if fps is None:
                raise DatasetError(
                    f"{path}: missing attr 'fps' (files recorded elsewhere: pass the control "
                    f"rate, e.g. fps=50 for ALOHA)"
                )
            file_fps = fps
        task, seed, success = _attr(f, "task"), _attr(f, "seed"), _attr(f, "success")
        known = {"sim", "format", "joint_names", "fps", "task", "seed", "success"}
        extra = {k: _attr(f, k) for k in f.attrs if k not in known}
    ep = Episode(
        joint_names=names,
        qpos=qpos[:, cols].astype(np.float32),
        action=action[:, cols].astype(np.float32),
        images=images,
        fps=float(file_fps),
        phase=phase,
        phase_names=phase_names,
        task=None if task is None else str(task),
        seed=None if seed is None else int(seed),
        success=None if success is None else bool(success),
        qvel=qvel,
        extra=extra,
    )
    ep.validate(str(path))
    return ep


# --------------------------------------------------------------------------- datasets


def _index(p: Path) -> int:
    m = EPISODE_RE.match(p.name)
    assert m is not None
    return int(m.group(1))


class Dataset:
    """A directory of ``episode_<n>.hdf5`` files and an optional ``meta.json``.

    Episodes are ordered by ``n`` and loaded on access (one file per ``__getitem__``).
    """

    def __init__(
        self, root: Path, meta: dict[str, Any], paths: list[Path], read: Callable[[Path], Episode]
    ) -> None:
        self.root, self.meta = root, meta
        self._paths = paths
        self._read = read

    @classmethod
    def open(
        cls,
        root: str | Path,
        joint_names: Sequence[str] | None = None,
        cameras: Sequence[str] | None = None,
        *,
        rename: Mapping[str, str] | None = None,
        fps: float | None = None,
    ) -> Dataset:
        """Open a dataset directory; ``fps`` defaults to ``meta.json``'s for files without one."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such dataset directory")
        meta = read_meta(root)
        paths = sorted((p for p in root.iterdir() if EPISODE_RE.match(p.name)), key=_index)
        if not paths:
            raise DatasetError(f"{root}: no episode_<n>.hdf5 files")
        if fps is None and "fps" in meta:
            fps = float(meta["fps"])
        read = functools.partial(
            read_episode,
            joint_names=None if joint_names is None else tuple(joint_names),
            cameras=None if cameras is None else tuple(cameras),
            rename=dict(rename) if rename else None,
            fps=fps,
        )
        return cls(root, meta, paths, read)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> Episode:
        return self._read(self._paths[i])

    def episode_paths(self) -> list[Path]:
        return list(self._paths)

    def sha256(self) -> str:
        """SHA-256 over the episode files (in episode order, with their names) and meta.json."""
        h = hashlib.sha256()
        files = [*self._paths]
        meta = self.root / META_FILE
        if meta.exists():
            files.append(meta)
        for p in files:
            h.update(p.name.encode() + b"\0")
            hash_file_into(h, p)
            h.update(b"\0")
        return h.hexdigest()
