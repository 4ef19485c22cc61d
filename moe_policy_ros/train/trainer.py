"""The training loop: phases, AdamW + warm-up/cosine, EMA, validation, checkpoints, rollouts.

Design notes
------------
* **Phases.** A family may train in stages (LAR-MoE: ``latent`` then ``policy``). The trainer
  asks the model for ``training_phases()`` and ``phase_fractions()`` (defaults ``("main",)``,
  ``(1.0,)`` for models without the hooks), splits the step budget by the fractions, calls
  ``begin_phase(name)`` at each phase start and rebuilds AdamW over the parameters that still
  require grad. The learning rate warms up linearly and then follows a cosine to
  ``min_lr_ratio * lr`` *within* each phase.
* **EMA.** An exponential moving average of the weights (decay ramped as
  ``min(decay, (1 + n) / (10 + n))`` over updates n) is what validation, rollouts, checkpoints'
  ``state_dict`` and exports use; the raw weights only continue training.
* **Checkpoints** are ``torch.save`` of plain dicts loadable with ``weights_only=True``: the
  export-compatible top level (``format``, ``family``, ``config``, ``state_dict`` = the EMA
  weights after ``calibrate``) plus ``training``: raw weights, EMA, AdamW state, phase, step,
  RNG states (torch, sampler, augmentation), wall time and the run description (dataset hash,
  split, normalisation statistics, joint names), so a checkpoint exports on its own and
  ``--resume`` continues bit for bit from it. Files are written atomically.
* **Model selection.** Every ``eval_every`` steps (and at the end) the EMA model is exported to
  a bundle and run in-process (:mod:`moe_policy_ros.rollout`) on fixed seeds (100..109 by
  default, never the evaluation seeds); ``best.pt`` is the checkpoint with the highest rollout
  success, ties broken by the lower validation loss.
* **Stopping** at any point loses at most ``ckpt_every`` steps; SIGTERM and Ctrl-C write a
  checkpoint first.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from moe_policy_ros.models.config import ModelConfig
from moe_policy_ros.models.export import CHECKPOINT_FORMAT
from moe_policy_ros.models.families import MoEModel, build_model
from moe_policy_ros.train.data import Batch, FrameStore, LoadedData, NormStats, load_data

TRAINER_VERSION = "moe_policy_ros.train 0.1.0"
TRAIN_STATE_FORMAT = 1
ROLLOUT_SEED_START = 100


@dataclass
class TrainConfig:
    """Everything a run needs besides the data; stored in ``run.json`` and every checkpoint."""

    data: str
    family: str
    out: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    image_size: list[int] | None = None  # (H, W); None = the dataset's stored size
    cameras: list[str] | None = None
    steps: int = 30000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.05
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    val_samples: int = 1024
    val_every: int = 500
    ckpt_every: int = 1000
    eval_every: int = 5000
    log_every: int = 50
    # random-shift augmentation (px). Off by default: the cube is 2-3 px and the keypoints are
    # absolute image coordinates; with 6 px the normalised encoder learned to ignore the image
    # (same data and steps: image_effect 0.001 with 6 px, 0.11 without; docs/training.md).
    shift: int = 0
    # Gaussian noise on the normalised proprio input during training (0 = off): the start
    # state is the same in every episode, so only the image says where the object is; a
    # policy that can read its own path from exact joint positions learns to continue it and
    # goes to the mean object position (measured: the step-4000 adamoe ignored the cube).
    proprio_noise: float = 0.0
    action_offset: int = 1
    seed: int = 0
    rollout_episodes: int = 10
    rollout_seed_start: int = ROLLOUT_SEED_START
    rollout_max_steps: int = 400
    rollout_task: str | None = None
    rollout_params: str | None = None
    calibrate_samples: int = 4096
    keep_checkpoints: int = 3

    def validate(self) -> None:
        positive = ("steps", "batch_size", "val_every", "ckpt_every", "log_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("eval_every", "shift", "action_offset", "rollout_episodes", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (got {self.lr})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (got {self.ema_decay})")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (got {self.grad_clip})")
        if not (math.isfinite(self.proprio_noise) and self.proprio_noise >= 0):
            raise ValueError(
                f"proprio_noise must be a finite value >= 0 (got {self.proprio_noise})"
            )


# --------------------------------------------------------------------------- pieces


def lr_at(step: int, start: int, end: int, cfg: TrainConfig) -> float:
    """Learning rate at global ``step`` of the phase [start, end): warm-up, then cosine."""
    n = max(1, end - start)
    local = step - start
    warm = min(cfg.warmup_steps, n // 5)
    if warm and local < warm:
        return cfg.lr * (local + 1) / warm
    frac = min(1.0, (local - warm) / max(1, n - warm))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def phase_bounds(model: MoEModel, steps: int) -> list[tuple[str, int, int]]:
    """[(phase, first step, end step)] from the model's phase hooks (default one phase)."""
    phases = tuple(getattr(model, "training_phases", lambda: ("main",))())
    fractions = tuple(getattr(model, "phase_fractions", lambda: (1.0,))())
    if len(phases) != len(fractions) or not phases:
        raise ValueError(f"{model.cfg.family}: phases {phases} vs fractions {fractions}")
    total = float(sum(fractions))
    out, start, acc = [], 0, 0.0
    for i, (name, f) in enumerate(zip(phases, fractions, strict=True)):
        acc += f
        end = steps if i == len(phases) - 1 else round(steps * acc / total)
        out.append((str(name), start, end))
        start = end
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases, norms and 1-D tensors."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.999),
    )


@torch.no_grad()
def image_effect(model: MoEModel, batch: Batch) -> float:
    """How much the images move the prediction, relative to how much the demonstrations differ.

    Every frame's images are swapped for another frame's (a roll of the batch) while its own
    proprio stays: ``mean |act(own) - act(swapped)| / mean |target(own) - target(other)|``.
    Near 0, the policy ignores the camera and repeats the mean demonstration whatever the
    scene shows (what the first trained models did, with a val loss that looked fine); a
    policy that locates the object moves its prediction about as much as the demonstrations
    differ. A sampled family (smp) draws the same noise for both calls.
    """
    images, proprio, actions = batch
    if proprio.shape[0] < 2:
        return float("nan")
    swapped = [x.roll(1, dims=0) for x in images]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        own = model.act(images, proprio)
        torch.manual_seed(0)
        other = model.act(swapped, proprio)
    spread = (actions - actions.roll(1, dims=0)).abs().mean()
    return float((own - other).abs().mean() / spread.clamp_min(1e-6))


class Ema:
    """EMA copy of a model (parameters averaged, buffers copied)."""

    def __init__(self, model: MoEModel, decay: float) -> None:
        self.model: MoEModel = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        ema_p: list[Tensor] = list(self.model.parameters())
        src_p: list[Tensor] = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)


def call_loss(model: MoEModel, batch: Batch, phase: str) -> tuple[Tensor, dict[str, float]]:
    """The model's loss dict -> (total to backprop, float terms). Accepts ``loss``/``total``."""
    images, proprio, actions = batch
    if phase == "main":
        terms = model.loss(images, proprio, actions)
    else:
        terms = model.loss(images, proprio, actions, phase=phase)  # type: ignore[call-arg]
    total = terms.get("loss", terms.get("total"))
    if total is None:
        raise KeyError(f"{model.cfg.family}.loss returned no 'loss' (keys {sorted(terms)})")
    floats = {k: float(v.detach()) for k, v in terms.items() if k not in ("loss", "total")}
    floats["loss"] = float(total.detach())
    return total, floats


def calibrate(model: MoEModel, batches: Iterable[Batch]) -> dict[str, float]:
    """``model.calibrate(batches)`` without grad; {} for models without the hook."""
    fn = getattr(model, "calibrate", None)
    if fn is None:
        return {}
    with torch.no_grad():
        out = fn(batches)
    return {str(k): float(v) for k, v in dict(out or {}).items()}


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _cpu_state(sd: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in sd.items()}


def _optim_to_cpu(sd: dict[str, Any]) -> dict[str, Any]:
    state = {
        k: {n: (t.detach().cpu() if isinstance(t, Tensor) else t) for n, t in v.items()}
        for k, v in sd["state"].items()
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A training checkpoint (``torch.load(weights_only=True)``), checked for its keys."""
    data = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or "training" not in data or "state_dict" not in data:
        raise ValueError(f"{path}: not a moe-policy-ros train checkpoint (no 'training')")
    tr = data["training"]
    if tr.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(
            f"{path}: training state format {tr.get('format')!r} (this trainer reads "
            f"{TRAIN_STATE_FORMAT})"
        )
    return data


# --------------------------------------------------------------------------- trainer


@dataclass
class RolloutRecord:
    step: int
    successes: int
    episodes: int
    seeds: list[int]
    val_loss: float | None
    errors: list[str]
    settle_s: float = 0.0  # the episodes' settled start (AlohaSim.reset), as the dataset's


class Trainer:
    """One training run in ``cfg.out`` (fresh or resumed)."""

    def __init__(self, cfg: TrainConfig, *, device: str = "cpu", resume: bool = False,
                 progress: bool = True) -> None:
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU")
        self.progress = progress
        resume_from = self.out / "last.pt" if resume else None
        if resume and not (resume_from and resume_from.is_file()):
            raise FileNotFoundError(f"--resume: no checkpoint {resume_from} to resume from")
        if not resume and (self.out / "last.pt").exists():
            raise FileExistsError(
                f"{self.out} already holds a run (last.pt); pass --resume to continue it or "
                "choose another --out"
            )
        ckpt = read_checkpoint(resume_from) if resume_from else None  # CPU: RNG states
        if ckpt is not None:
            saved = ckpt["training"]["run"]["train_config"]
            self.cfg = cfg = TrainConfig(**{**saved, "out": str(self.out)})
        stats = NormStats.from_dict(ckpt["training"]["run"]["stats"]) if ckpt else None
        self.data: LoadedData = load_data(
            cfg.data,
            cameras=cfg.cameras,
            image_size=tuple(cfg.image_size) if cfg.image_size else None,  # type: ignore[arg-type]
            val_fraction=cfg.val_fraction,
            split_seed=cfg.seed,
            stats=stats,
            progress=progress,
        )
        if ckpt is not None:
            run = ckpt["training"]["run"]
            if run["dataset_sha256"] != self.data.sha256:
                raise ValueError(
                    f"--resume: {cfg.data} has SHA-256 {self.data.sha256[:12]}..., the run was "
                    f"trained on {run['dataset_sha256'][:12]}... (a different dataset)"
                )
        self.model_config = (
            ModelConfig.from_saved(ckpt["training"]["run"]["model_config"])
            if ckpt is not None else self._model_config()
        )
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_config).to(self.device)
        self.model.train()
        self.phases = phase_bounds(self.model, cfg.steps)
        self.step = 0
        self.phase_index = 0
        self.wall_s = 0.0
        self.sample_rng = np.random.default_rng(cfg.seed + 1)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.rollouts: list[RolloutRecord] = []
        self.best: dict[str, Any] | None = None
        self.last_val: float | None = None
        self.metrics_path = self.out / "metrics.jsonl"
        self._saved_step = -1
        self._begin_phase(0)
        self.ema = Ema(self.model, cfg.ema_decay)
        self.optimizer = make_optimizer(self.model, cfg)
        if ckpt is not None:
            self._restore(ckpt)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        (self.out / "run.json").write_text(json.dumps(self.run_info(), indent=2) + "\n")

    # ------------------------------------------------------------------ setup

    def _model_config(self) -> ModelConfig:
        d, cfg = self.data, self.cfg
        h, w = cfg.image_size or list(d.stored_size)
        j = len(d.joint_names)
        base: dict[str, Any] = {
            "family": cfg.family,
            "cameras": [{"name": c, "height": int(h), "width": int(w)} for c in d.cameras],
            "proprio_dim": j,
            "action_dim": j,
        }
        return ModelConfig.from_dict({**base, **cfg.model})

    def run_info(self) -> dict[str, Any]:
        """The run description stored in ``run.json`` and in every checkpoint."""
        d = self.data
        return {
            "trainer": TRAINER_VERSION,
            "train_config": asdict(self.cfg),
            "model_config": self.model_config.to_dict(),
            "dataset": str(d.root),
            "dataset_sha256": d.sha256,
            "task": d.task,
            "fps": d.fps,
            "joint_names": list(d.joint_names),
            "cameras": list(d.cameras),
            "stored_image_size": list(d.stored_size),
            "train_episodes": d.train_episodes,
            "val_episodes": d.val_episodes,
            "demo_seeds": d.demo_seeds,
            "train_frames": len(d.train),
            "val_frames": len(d.val) if d.val is not None else 0,
            "stats": d.stats.to_dict(),
            "phases": [list(p) for p in self.phases],
            "image_normalisation": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        }

    def _begin_phase(self, index: int) -> None:
        self.phase_index = index
        name = self.phases[index][0]
        hook = getattr(self.model, "begin_phase", None)
        if hook is not None:
            hook(name)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        tr = ckpt["training"]
        self.model.load_state_dict(tr["model"])
        self._begin_phase(int(tr["phase_index"]))
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.optimizer.load_state_dict(tr["optimizer"])
        self.ema.model.load_state_dict(tr["ema"])
        self.ema.updates = int(tr["ema_updates"])
        self.step = int(tr["step"])
        self.wall_s = float(tr["wall_time_s"])
        torch.set_rng_state(tr["rng"]["torch"])
        self.sample_rng.bit_generator.state = tr["rng"]["sample"]
        self.aug_gen.set_state(tr["rng"]["augment"])
        self.rollouts = [RolloutRecord(**r) for r in tr.get("rollouts", [])]
        self.best = tr.get("best")
        self.last_val = tr.get("val_loss")
        self._saved_step = self.step

    # ------------------------------------------------------------------ state

    def policy_model(self, calibration_samples: int | None = None) -> MoEModel:
        """A copy of the EMA model, calibrated on (a subset of) the training frames."""
        m: MoEModel = copy.deepcopy(self.ema.model).eval()
        for p in m.parameters():  # frozen params would put the transformer on its fused
            p.requires_grad_(True)  # inference path, which has no ONNX export
        n = len(self.data.train)
        take = n if calibration_samples is None else min(n, calibration_samples)
        idx = np.linspace(0, n - 1, take).round().astype(np.int64)
        calibrate(m, self._batches(self.data.train, idx))
        return m

    def _batches(self, store: FrameStore, idx: np.ndarray) -> Iterator[Batch]:
        return store.iterate(
            self.model_config.chunk_length, self.cfg.action_offset, 128, idx, self.device
        )

    def checkpoint(self, policy: MoEModel, rollout: RolloutRecord | None = None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "family": self.model_config.family,
            "config": self.model_config.to_dict(),
            "state_dict": _cpu_state(policy.state_dict()),
            "training": {
                "format": TRAIN_STATE_FORMAT,
                "step": self.step,
                "phase_index": self.phase_index,
                "phase": self.phases[self.phase_index][0],
                "model": _cpu_state(self.model.state_dict()),
                "ema": _cpu_state(self.ema.model.state_dict()),
                "ema_updates": self.ema.updates,
                "optimizer": _optim_to_cpu(self.optimizer.state_dict()),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "sample": self.sample_rng.bit_generator.state,
                    "augment": self.aug_gen.get_state(),
                },
                "wall_time_s": self.wall_s,
                "val_loss": self.last_val,
                "rollout": asdict(rollout) if rollout else None,
                "rollouts": [asdict(r) for r in self.rollouts],
                "best": self.best,
                "run": self.run_info(),
            },
        }

    def save(self, rollout: RolloutRecord | None = None, policy: MoEModel | None = None) -> Path:
        """Write ``checkpoints/step_<n>.pt`` and ``last.pt``; prune old periodic ones.

        ``policy``: the calibrated EMA model to store (default: calibrated here on a subset).
        """
        policy = policy or self.policy_model(self.cfg.calibrate_samples)
        data = self.checkpoint(policy, rollout)
        path = self.out / "checkpoints" / f"step_{self.step:07d}.pt"
        _save_atomic(data, path)
        self._saved_step = self.step
        tmp = self.out / f".last.pt.tmp{os.getpid()}"
        shutil.copyfile(path, tmp)
        os.replace(tmp, self.out / "last.pt")
        keep = {Path(self.best["path"]).name} if self.best else set()
        old = sorted((self.out / "checkpoints").glob("step_*.pt"))
        for p in old[: max(0, len(old) - self.cfg.keep_checkpoints)]:
            if p.name not in keep:
                p.unlink(missing_ok=True)
        return path

    # ------------------------------------------------------------------ metrics

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Loss of the EMA model on held-out episodes (fixed frames, no augmentation)."""
        store = self.data.val
        if store is None:
            return None
        n = len(store)
        idx = np.linspace(0, n - 1, min(n, self.cfg.val_samples)).round().astype(np.int64)
        phase = self.phases[self.phase_index][0]
        sums: dict[str, float] = {}
        count = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for batch in self._batches(store, idx):
                b = int(batch[1].shape[0])
                _, terms = call_loss(self.ema.model, batch, phase)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * b
                count += b
            out = {k: v / count for k, v in sums.items()}
            out["image_effect"] = image_effect(
                self.ema.model, next(self._batches(store, idx[:: max(1, len(idx) // 128)]))
            )
        return out

    # ------------------------------------------------------------------ rollouts

    def rollout(self, policy: MoEModel) -> RolloutRecord | None:
        """Export ``policy`` (the calibrated EMA) and run it in-process on the rollout seeds."""
        cfg = self.cfg
        if cfg.rollout_episodes <= 0:
            return None
        from moe_policy_ros.core.config import load_config
        from moe_policy_ros.rollout import InProcessRunner, LoopSettings, default_params_file
        from moe_policy_ros.train.export_run import export_trained

        task = cfg.rollout_task or self.data.task
        if task is None:
            raise ValueError("rollouts need a task: the dataset names none; pass --task")
        bundle = self.out / "rollout_bundle"
        cpu = copy.deepcopy(policy).cpu()
        export_trained(cpu, self.checkpoint(cpu), bundle, name=f"{self.out.name}_step{self.step}")
        params = Path(cfg.rollout_params) if cfg.rollout_params else default_params_file()
        seeds = list(range(cfg.rollout_seed_start, cfg.rollout_seed_start + cfg.rollout_episodes))
        # episodes start as the demonstrations did (settled at reset when they were recorded so)
        settle_s = float(self.data.meta.get("settle_s", 0.0))
        settings = LoopSettings(max_steps=cfg.rollout_max_steps, settle_s=settle_s)
        results = []
        with InProcessRunner(bundle, task, load_config(params), settings=settings) as runner:
            for s in seeds:
                results.append(runner.run(s))
        rec = RolloutRecord(
            step=self.step,
            successes=sum(r.success for r in results),
            episodes=len(results),
            seeds=seeds,
            val_loss=self.last_val,
            errors=[f"seed {r.seed}: {r.error}" for r in results if r.error],
            settle_s=settle_s,
        )
        self.rollouts.append(rec)
        return rec

    def _is_better(self, rec: RolloutRecord) -> bool:
        if self.best is None:
            return True
        key = (rec.successes / max(1, rec.episodes), -(rec.val_loss or math.inf))
        b = self.best
        best_key = (b["successes"] / max(1, b["episodes"]), -(b["val_loss"] or math.inf))
        return key > best_key

    def _evaluate_and_save(self, final: bool) -> None:
        val = self.validate()
        if val is not None:
            self.last_val = val["loss"]
            self.log({"kind": "val", "step": self.step, **val})
        policy = self.policy_model(None if final else self.cfg.calibrate_samples)
        try:
            rec = self.rollout(policy)
        except Exception as err:  # a broken rollout must not end hours of training
            rec = None
            self.log({"kind": "rollout_error", "step": self.step,
                      "error": f"{type(err).__name__}: {err}"})
            print(f"step {self.step}: rollout failed: {type(err).__name__}: {err}",
                  file=sys.stderr)
        if rec is None:  # no rollouts: rank by validation loss alone
            rec = RolloutRecord(self.step, 0, 0, [], self.last_val, [])
        else:
            self.log({"kind": "rollout", "step": self.step, **asdict(rec)})
        better = self._is_better(rec)
        path = self.out / "checkpoints" / f"step_{self.step:07d}.pt"
        if better:
            self.best = {**asdict(rec), "path": str(path)}
        self.save(rollout=rec, policy=policy)
        if better:
            shutil.copyfile(path, self.out / "best.pt")
        self.plot()
        val_text = "n/a" if self.last_val is None else f"{self.last_val:.4g}"
        print(
            f"step {self.step}: val loss {val_text}"
            + (f", rollout success {rec.successes}/{rec.episodes}" if rec.episodes else "")
            + (" (best)" if better else ""),
            file=sys.stderr,
            flush=True,
        )

    def plot(self) -> None:
        from moe_policy_ros.train.plots import plot_metrics

        try:
            plot_metrics(self.metrics_path, self.out / "loss.png")
        except Exception as err:  # a plot never stops training
            print(f"loss plot failed: {err}", file=sys.stderr)

    # ------------------------------------------------------------------ loop

    def train(self, until: int | None = None) -> dict[str, Any]:
        """Run to ``cfg.steps`` (or stop at ``until`` with a checkpoint, as an interruption
        would); returns a summary. Ctrl-C / SIGTERM save a checkpoint first."""
        cfg = self.cfg
        prev = signal.getsignal(signal.SIGTERM)

        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        if self.step == 0:
            self.log({"kind": "start", "step": 0, **self.run_info()})
        else:
            self.log({"kind": "resume", "step": self.step})
        try:
            signal.signal(signal.SIGTERM, _term)
        except ValueError:  # not the main thread
            prev = None
        try:
            limit = cfg.steps if until is None else min(until, cfg.steps)
            self._loop(limit)
            if self.step < cfg.steps and self._saved_step != self.step:
                self.save()
        except KeyboardInterrupt:
            path = self.save()
            print(f"\ninterrupted at step {self.step}: saved {path}; continue with --resume",
                  file=sys.stderr)
            raise
        finally:
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
        return {
            "steps": self.step,
            "wall_time_s": self.wall_s,
            "val_loss": self.last_val,
            "best": self.best,
        }

    def _loop(self, limit: int) -> None:
        cfg = self.cfg
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc=f"train {cfg.family}", unit="step",
            disable=not self.progress, mininterval=1.0 if tty else 30.0, dynamic_ncols=True,
        )
        window: dict[str, list[float]] = {}
        t_last, s_last = time.monotonic(), self.step
        t_seg = time.monotonic()
        n_train = len(self.data.train)
        chunk = self.model_config.chunk_length
        done_final = False
        try:
            while self.step < limit:
                name, start, end = self.phases[self.phase_index]
                if self.step >= end:
                    self._begin_phase(self.phase_index + 1)
                    self.optimizer = make_optimizer(self.model, cfg)
                    window.clear()  # the new phase has other loss terms
                    self.log({"kind": "phase", "step": self.step,
                              "phase": self.phases[self.phase_index][0]})
                    continue
                lr = lr_at(self.step, start, end, cfg)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                idx = self.sample_rng.integers(0, n_train, cfg.batch_size)
                batch = self.data.train.batch(
                    idx, chunk, cfg.action_offset, shift=cfg.shift,
                    proprio_noise=cfg.proprio_noise, generator=self.aug_gen,
                    device=self.device,
                )
                total, terms = call_loss(self.model, batch, name)
                if not math.isfinite(terms["loss"]):
                    raise FloatingPointError(
                        f"step {self.step}: loss is {terms['loss']} (terms {terms}); lower --lr"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                params = [p for p in self.model.parameters() if p.requires_grad]
                gnorm = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                self.optimizer.step()
                self.ema.update(self.model)
                self.step += 1
                now = time.monotonic()
                self.wall_s += now - t_seg
                t_seg = now
                terms["grad_norm"] = gnorm
                for k, v in terms.items():
                    window.setdefault(k, []).append(v)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = (self.step - s_last) / max(1e-9, now - t_last)
                    t_last, s_last = now, self.step
                    means = {k: float(np.mean(v)) for k, v in window.items()}
                    window.clear()
                    self.log({"kind": "train", "step": self.step, "phase": name, "lr": lr,
                              "steps_per_s": rate, "wall_time_s": self.wall_s, **means})
                    bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in means.items() if k != "grad_norm"},
                        refresh=False,
                    )
                evaluate = cfg.eval_every and self.step % cfg.eval_every == 0
                if self.step == cfg.steps:
                    self._evaluate_and_save(final=True)
                    done_final = True
                elif evaluate:
                    self._evaluate_and_save(final=False)
                elif self.step % cfg.ckpt_every == 0:
                    val = self.validate() if self.step % cfg.val_every == 0 else None
                    if val is not None:
                        self.last_val = val["loss"]
                        self.log({"kind": "val", "step": self.step, **val})
                    self.save()
                    self.plot()
                elif self.step % cfg.val_every == 0:
                    val = self.validate()
                    if val is not None:
                        self.last_val = val["loss"]
                        self.log({"kind": "val", "step": self.step, **val})
                if self.step % cfg.ckpt_every == 0 or evaluate:
                    t_last, s_last = time.monotonic(), self.step  # steps/s: training only
        finally:
            bar.close()
        if not done_final and self.step >= cfg.steps and self._saved_step != self.step:
            self._evaluate_and_save(final=True)
