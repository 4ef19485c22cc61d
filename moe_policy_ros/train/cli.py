"""`moe-policy-ros train`: arguments and entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from moe_policy_ros.models.config import FAMILIES

#: Model sizes the trainer uses unless a size flag says otherwise (the rest are
#: :class:`ModelConfig`'s defaults). Chosen for a 2-core CPU: see docs/training.md.
TRAIN_MODEL_DEFAULTS: dict[str, Any] = {
    "num_experts": 8,
    "chunk_length": 25,
    "context_dim": 128,
    "expert_hidden": 256,
    "expert_depth": 2,
    "vision_channels": 16,
    "trunk_layers": 2,
}


def _size(text: str) -> list[int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"want HxW, e.g. 120x160 (got {text!r})") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"image size {text} is too small (>= 8x8)")
    return [h, w]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moe_policy_ros.models.config import VISION_NORMS
    from moe_policy_ros.models.export import SIZE_OPTIONS
    from moe_policy_ros.train.trainer import TrainConfig

    d = TrainConfig(data="", family="", out="")
    parser.add_argument("--data", required=True, type=Path, help="dataset directory")
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from last.pt (its saved settings win)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (never falls back)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = one per core but one, at least 1: on a "
                        "shared 2-core machine two threads ran 4x slower than one)")
    n_experts = TRAIN_MODEL_DEFAULTS["num_experts"]
    parser.add_argument("--experts", type=int, default=None,
                        help=f"number of experts N (default {n_experts})")
    for key, flag, help_text in SIZE_OPTIONS:
        dflt = TRAIN_MODEL_DEFAULTS.get(key)
        parser.add_argument(flag, type=int, default=None,
                            help=help_text + (f" (default {dflt})" if dflt is not None else ""))
    parser.add_argument("--vision-norm", choices=VISION_NORMS, default=None,
                        help="vision encoder normalisation (default group; none: the encoder "
                        "of the first trained bundles)")
    parser.add_argument("--image-size", type=_size, default=None, metavar="HxW",
                        help="model image size (default: the dataset's stored size)")
    parser.add_argument("--camera", action="append", default=None,
                        help="camera to train on (repeatable; default: all in the dataset)")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    parser.add_argument("--ema-decay", type=float, default=d.ema_decay)
    parser.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max grad norm")
    parser.add_argument("--shift", type=int, default=d.shift,
                        help="random-shift augmentation, pixels (0 = off)")
    parser.add_argument("--proprio-noise", type=float, default=d.proprio_noise,
                        help="Gaussian noise on the normalised proprio input, in standard "
                        "deviations (0 = off)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction,
                        help="episodes held out for the validation loss")
    parser.add_argument("--val-every", type=int, default=d.val_every)
    parser.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    parser.add_argument("--eval-every", type=int, default=d.eval_every,
                        help="steps between in-process rollouts (0 = only at the end)")
    parser.add_argument("--rollout-episodes", type=int, default=d.rollout_episodes,
                        help="rollout episodes per evaluation (0 = no rollouts)")
    parser.add_argument("--rollout-seed-start", type=int, default=d.rollout_seed_start)
    parser.add_argument("--rollout-max-steps", type=int, default=d.rollout_max_steps)
    parser.add_argument("--task", default=None, help="rollout task (default: the dataset's)")
    parser.add_argument("--params", default=None,
                        help="parameter file of the rollouts (default: make demo's)")
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--seed", type=int, default=d.seed, help="init, split and sampling seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> Any:
    from moe_policy_ros.models.export import SIZE_OPTIONS
    from moe_policy_ros.train.trainer import TrainConfig

    model: dict[str, Any] = dict(TRAIN_MODEL_DEFAULTS)
    if args.experts is not None:
        model["num_experts"] = args.experts
    for key, _, _ in SIZE_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            model[key] = value
    if args.vision_norm is not None:
        model["vision_norm"] = args.vision_norm
    model.pop("action_dim", None)  # the dataset's joints decide
    return TrainConfig(
        data=str(args.data),
        family=args.family,
        out=str(args.out),
        model=model,
        image_size=args.image_size,
        cameras=args.camera,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        grad_clip=args.grad_clip,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        ckpt_every=args.ckpt_every,
        eval_every=args.eval_every,
        log_every=args.log_every,
        shift=args.shift,
        proprio_noise=args.proprio_noise,
        seed=args.seed,
        rollout_episodes=args.rollout_episodes,
        rollout_seed_start=args.rollout_seed_start,
        rollout_max_steps=args.rollout_max_steps,
        rollout_task=args.task,
        rollout_params=args.params,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from moe_policy_ros.train.trainer import Trainer

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - 1))
    try:
        trainer = Trainer(config_from_args(args), device=args.device, resume=args.resume,
                          progress=not args.no_progress)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    cfg = trainer.cfg
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(
        f"train {cfg.family}: {n_params} params, {len(trainer.data.train)} training frames "
        f"({len(trainer.data.train_episodes)} episodes), {len(trainer.data.val_episodes)} "
        f"validation episodes, image {trainer.model_config.cameras[0].height}x"
        f"{trainer.model_config.cameras[0].width}, step {trainer.step} of {cfg.steps} on "
        f"{trainer.device} -> {trainer.out}",
        flush=True,
    )
    try:
        summary = trainer.train()
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary, indent=2, default=str))
    best = trainer.out / "best.pt"
    print(f"best checkpoint: {best} (export: moe-policy-ros export --checkpoint {best} "
          "--out BUNDLE)")
    return 0
