"""Training data: recorded episodes in memory, normalisation, chunk targets, augmentation.

* **Split by episode**, never by frame: neighbouring frames of one demonstration are nearly
  identical, so a frame split would make the validation loss a training loss.
* **Normalisation** statistics (per joint mean/std of the measured positions and of the
  commands) come from the training episodes only; a std below :data:`STD_FLOOR` is raised to
  it so that a joint the script never moves does not blow up.
* **Chunk target** of the observation at step ``t``: ``action[t + offset .. t + offset + H)``,
  the last action repeated past the episode's end (the robot holds). ``offset`` is 1 by
  default because of how the runtime schedules chunks: the policy node (and the in-process
  loop) starts the chunk of an observation taken at control step ``s`` at step ``s + 1``.
* **Images** are kept as uint8 [N, 3, H, W] at the model's size (resized from the stored size
  with :func:`core.imageconv.resize_to` when they differ) and fed to the model as float in
  0..1, the exported bundles' camera normalisation being mean 0, std 1 (the runtime computes
  ``x / 255``). Augmentation is a random shift: replicate-pad by ``shift`` pixels and crop
  back at a random offset per sample (DrQ), so the model size is the runtime size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moe_policy_ros.core.imageconv import resize_to
from moe_policy_ros.data.episodes import Dataset, DatasetError, Episode

STD_FLOOR = 1e-2

Batch = tuple[list[Tensor], Tensor, Tensor]


@dataclass(frozen=True)
class NormStats:
    """Per-joint mean/std of proprio (measured positions) and actions (commands)."""

    proprio_mean: np.ndarray
    proprio_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray

    @classmethod
    def of(cls, episodes: Sequence[Episode]) -> NormStats:
        q = np.concatenate([np.asarray(e.qpos, np.float64) for e in episodes])
        a = np.concatenate([np.asarray(e.action, np.float64) for e in episodes])
        return cls(
            q.mean(0).astype(np.float32),
            np.maximum(q.std(0), STD_FLOOR).astype(np.float32),
            a.mean(0).astype(np.float32),
            np.maximum(a.std(0), STD_FLOOR).astype(np.float32),
        )

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        return cls(**{k: np.asarray(d[k], np.float32) for k in cls.__dataclass_fields__})


def split_episodes(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic episode split: ``round(n * val_fraction)`` (at least 1 when n >= 2 and
    the fraction is positive) held out for validation, chosen by ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    if n < 1:
        raise ValueError("no episodes to split")
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(int(i) for i in order[:n_val])
    train = sorted(int(i) for i in order[n_val:])
    return train, val


class FrameStore:
    """The frames of some episodes: uint8 images, normalised proprio and actions."""

    def __init__(
        self,
        episodes: Sequence[Episode],
        cameras: Sequence[str],
        image_size: tuple[int, int],
        stats: NormStats,
    ) -> None:
        if not episodes:
            raise ValueError("FrameStore needs at least one episode")
        lengths = [len(e) for e in episodes]
        n = int(sum(lengths))
        h, w = image_size
        self.cameras = tuple(cameras)
        self.images = {c: torch.empty((n, 3, h, w), dtype=torch.uint8) for c in cameras}
        self.proprio = torch.empty((n, episodes[0].qpos.shape[1]), dtype=torch.float32)
        self.actions = torch.empty((n, episodes[0].action.shape[1]), dtype=torch.float32)
        self.episode_end = np.empty(n, np.int64)  # one past the last frame of the episode
        at = 0
        for ep, t in zip(episodes, lengths, strict=True):
            for c in cameras:
                frames = np.asarray(ep.images[c])
                if frames.shape[1:3] != (h, w):
                    frames = np.stack([resize_to(f, (h, w)) for f in frames])
                self.images[c][at : at + t] = torch.from_numpy(
                    np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
                )
            q = (np.asarray(ep.qpos, np.float32) - stats.proprio_mean) / stats.proprio_std
            a = (np.asarray(ep.action, np.float32) - stats.action_mean) / stats.action_std
            self.proprio[at : at + t] = torch.from_numpy(q)
            self.actions[at : at + t] = torch.from_numpy(a)
            self.episode_end[at : at + t] = at + t
            at += t

    def __len__(self) -> int:
        return int(self.proprio.shape[0])

    def batch(
        self,
        idx: np.ndarray,
        chunk_length: int,
        offset: int,
        *,
        shift: int = 0,
        proprio_noise: float = 0.0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Batch:
        """Frames ``idx``: images (float 0..1, shifted when ``shift``), proprio (plus Gaussian
        noise of ``proprio_noise`` standard deviations, in the normalised units), chunks."""
        idx = np.asarray(idx, np.int64)
        steps = idx[:, None] + offset + np.arange(chunk_length)[None, :]
        steps = np.minimum(steps, self.episode_end[idx][:, None] - 1)
        ti = torch.from_numpy(idx)
        images = []
        for c in self.cameras:
            x = self.images[c][ti].to(device=device, dtype=torch.float32).div_(255.0)
            if shift > 0:
                x = random_shift(x, shift, generator)
            images.append(x)
        proprio = self.proprio[ti]
        if proprio_noise > 0:
            proprio = proprio + proprio_noise * torch.randn(proprio.shape, generator=generator)
        proprio = proprio.to(device)
        actions = self.actions[torch.from_numpy(steps)].to(device)
        return images, proprio, actions

    def iterate(
        self, chunk_length: int, offset: int, batch_size: int, indices: np.ndarray | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[Batch]:
        """Un-augmented batches over ``indices`` (default: every frame) in order."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        for s in range(0, len(idx), batch_size):
            yield self.batch(idx[s : s + batch_size], chunk_length, offset, device=device)


def random_shift(x: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Replicate-pad [B, C, H, W] by ``pad`` and crop back at a random offset per sample."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    gen_dev = "cpu" if generator is None else generator.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gen_dev).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gen_dev).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows, cols]


@dataclass
class LoadedData:
    """A dataset split into training and validation frames, with its provenance."""

    root: Path
    meta: dict[str, Any]
    sha256: str
    joint_names: tuple[str, ...]
    cameras: tuple[str, ...]
    stored_size: tuple[int, int]
    fps: float
    task: str | None
    train_episodes: list[int]
    val_episodes: list[int]
    demo_seeds: list[int]
    stats: NormStats
    train: FrameStore
    val: FrameStore | None


def load_data(
    root: str | Path,
    *,
    cameras: Sequence[str] | None,
    image_size: tuple[int, int] | None,
    val_fraction: float,
    split_seed: int,
    stats: NormStats | None = None,
    progress: bool = True,
) -> LoadedData:
    """Read every episode of ``root`` into memory, split it and normalise it.

    ``stats`` (from a run being resumed) replaces the statistics computed here, so a resumed
    run trains on exactly the numbers its checkpoints were exported with.
    """
    ds = Dataset.open(root, cameras=cameras)
    eps: list[Episode] = []
    it: Any = range(len(ds))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"loading {ds.root.name}", unit="episode", leave=False)
    for i in it:
        eps.append(ds[i])
    first = eps[0]
    cams = tuple(cameras) if cameras else tuple(first.images)
    for i, e in enumerate(eps):
        if e.joint_names != first.joint_names:
            raise DatasetError(
                f"{ds.episode_paths()[i]}: joints {list(e.joint_names)} differ from episode 0's "
                f"{list(first.joint_names)}"
            )
        missing = [c for c in cams if c not in e.images]
        if missing:
            raise DatasetError(f"{ds.episode_paths()[i]}: no camera {missing}")
    stored = tuple(int(v) for v in np.asarray(first.images[cams[0]]).shape[1:3])
    size = (int(image_size[0]), int(image_size[1])) if image_size else (stored[0], stored[1])
    train_i, val_i = split_episodes(len(eps), val_fraction, split_seed)
    stats = stats or NormStats.of([eps[i] for i in train_i])
    train = FrameStore([eps[i] for i in train_i], cams, size, stats)
    val = FrameStore([eps[i] for i in val_i], cams, size, stats) if val_i else None
    return LoadedData(
        root=ds.root,
        meta=ds.meta,
        sha256=ds.sha256(),
        joint_names=tuple(first.joint_names),
        cameras=cams,
        stored_size=(stored[0], stored[1]),
        fps=float(first.fps),
        task=first.task or ds.meta.get("task"),
        train_episodes=train_i,
        val_episodes=val_i,
        demo_seeds=[int(e.seed) for e in eps if e.seed is not None],
        stats=stats,
        train=train,
        val=val,
    )
