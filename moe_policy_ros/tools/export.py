"""`moe-policy-ros export`: a checkpoint (or a fresh reference model) to a parity-checked
bundle.

This module is the command line (flags -> model, routing, normalisation statistics -> bundle,
then the optional expert labels from a dataset's phases); the exporter itself is torch code,
the library :mod:`moe_policy_ros.models.export` (:func:`export_bundle`, :func:`load_checkpoint`,
:func:`trained_export_kwargs`). Also ``python -m moe_policy_ros.tools.export``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from moe_policy_ros.core.config import RoutingConfig
from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.models.config import ADAMOE_WEIGHTINGS, FAMILIES, CameraShape
from moe_policy_ros.models.export import (
    SIZE_OPTIONS,
    ExportError,
    default_routing,
    export_bundle,
    load_checkpoint,
    trained_export_kwargs,
)
from moe_policy_ros.models.families import build_model
from moe_policy_ros.tools import add_routing_arguments, module_main, routing_overrides

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``moe-policy-ros export``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint.pt to export")
    parser.add_argument(
        "--save-checkpoint",
        type=Path,
        default=None,
        help="also write the weights-only checkpoint here, outside the bundle (for the torch "
        "backend; its SHA-256 goes into the manifest)",
    )
    src.add_argument("--family", choices=FAMILIES, help="export a fresh (untrained) model")
    parser.add_argument("--experts", type=int, default=8, help="number of experts N")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--name", default="", help="bundle name (default: out dir name)")
    parser.add_argument("--seed", type=int, default=0, help="init and parity-input seed")
    for _, flag, help_text in SIZE_OPTIONS:
        parser.add_argument(flag, type=int, default=None, help=help_text)
    parser.add_argument(
        "--camera",
        action="append",
        default=None,
        metavar="NAME:HxW",
        help="camera input (repeatable; default top:96x128)",
    )
    parser.add_argument(
        "--router-gain", type=float, default=None, help="scale of the router's initial weights"
    )
    parser.add_argument(
        "--adamoe-weighting",
        choices=ADAMOE_WEIGHTINGS,
        default=None,
        help="adamoe combination weights: router_plus_adapter (released code, default) or the "
        "adapter_sigmoid variant",
    )
    parser.add_argument("--control-period", type=float, default=0.02, help="s per step")
    for what in ("action", "proprio"):
        for stat, dflt in (("mean", "0"), ("std", "1")):
            parser.add_argument(
                f"--{what}-{stat}",
                default=None,
                metavar="V[,V...]",
                help=f"{what} normalisation {stat}: one value for all joints or one per joint "
                f"(default {dflt})",
            )
    # the manifest's default routing; its k is --top-k
    add_routing_arguments(parser, mass=True, k=False, default="per family")
    parser.add_argument("--expert-labels-from-phases", type=Path, default=None,
                        metavar="DATASET",
                        help="name each expert after the demonstration phase it dominates "
                        "most (recorded phase labels of DATASET), when the NMI between "
                        "dominant expert and phase reaches --phase-min-nmi")
    parser.add_argument("--phase-min-nmi", type=float, default=0.3,
                        help="NMI below which the experts keep skill_i labels")
    parser.add_argument("--phase-episodes", type=int, default=10,
                        help="episodes of DATASET routed for the labels (0 = all)")
    parser.add_argument("--sticky-base", choices=("topk", "mass"), default=None)


def _parse_camera(text: str) -> CameraShape:
    try:
        cam, size = text.split(":")
        h, w = size.lower().split("x")
        return CameraShape(cam, int(h), int(w))
    except ValueError:
        raise ValueError(f"--camera wants NAME:HxW, e.g. top:96x128 (got {text!r})") from None


def _stat_arg(text: str | None, dim: int) -> list[float] | None:
    if text is None:
        return None
    vals = [float(v) for v in text.split(",")]
    return vals * dim if len(vals) == 1 else vals


def run(args: argparse.Namespace) -> int:
    """Build or load the model, export it, print the parity error; 0 on success."""
    torch.manual_seed(args.seed)
    trained: dict[str, Any] = {}
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint)
        source = str(args.checkpoint)
        trained = trained_export_kwargs(
            torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        )
    else:
        config: dict[str, Any] = {"family": args.family, "num_experts": args.experts}
        for key, _, _ in SIZE_OPTIONS:
            value = getattr(args, key)
            if value is not None:
                config[key] = value
        if "action_dim" in config and "proprio_dim" not in config:
            config["proprio_dim"] = config["action_dim"]
        if args.router_gain is not None:
            config["router_gain"] = args.router_gain
        if args.adamoe_weighting is not None:
            config["adamoe_weighting"] = args.adamoe_weighting
        if args.camera:
            config["cameras"] = [_parse_camera(c) for c in args.camera]
        model = build_model(config)
        source = f"randomly initialised {args.family} (seed {args.seed}, untrained)"
    cfg = model.cfg
    base = default_routing(cfg.family, cfg.top_k, cfg.route_tau)
    overrides = routing_overrides(args)
    if args.sticky_base:
        overrides["sticky_base"] = args.sticky_base
    routing = RoutingConfig(**{**base.model_dump(), **overrides})
    name = args.name or Path(args.out).name
    given = {
        "action_mean": _stat_arg(args.action_mean, cfg.action_dim),
        "action_std": _stat_arg(args.action_std, cfg.action_dim),
        "proprio_mean": _stat_arg(args.proprio_mean, cfg.proprio_dim),
        "proprio_std": _stat_arg(args.proprio_std, cfg.proprio_dim),
    }
    kwargs: dict[str, Any] = {
        "control_period_s": args.control_period,
        "source": source,
        **trained,  # a trained checkpoint's joints, stats, cameras and provenance
        **{k: v for k, v in given.items() if v is not None},  # explicit flags win
    }
    try:
        path = export_bundle(
            model,
            args.out,
            name=name,
            routing=routing,
            seed=args.seed,
            checkpoint_out=args.save_checkpoint,
            source_checkpoint=args.checkpoint,
            **kwargs,
        )
    except ExportError as err:
        print(f"export failed: {err}")
        return 1
    m = read_manifest(path.parent)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {path.parent} ({cfg.family}, {cfg.num_experts} experts, {n_params} params, "
        f"routing {m.routing.strategy})"
    )
    print(f"parity max abs error (onnxruntime vs torch): {m.provenance.parity_max_abs_err:.3g}")
    print(m.provenance.notes)
    if args.expert_labels_from_phases is not None:
        return _labels_from_phases(path.parent, args)
    return 0


def _labels_from_phases(bundle_dir: Path, args: argparse.Namespace) -> int:
    """``--expert-labels-from-phases``: evaluation.phases names the experts (or says why
    not)."""
    from moe_policy_ros.data.episodes import DatasetError
    from moe_policy_ros.evaluation.phases import label_bundle_from_phases

    try:
        labels, reason, _ = label_bundle_from_phases(
            bundle_dir, args.expert_labels_from_phases, min_nmi=args.phase_min_nmi,
            max_episodes=args.phase_episodes,
        )
    except (DatasetError, ValueError) as err:
        print(f"expert labels from phases: {err} (the bundle keeps its labels)")
        return 1
    print(f"expert labels: {reason}: {', '.join(labels)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("python -m moe_policy_ros.tools.export", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
