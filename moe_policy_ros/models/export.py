"""Export a reference model to a bundle: encoder.onnx, experts.onnx, policy.yaml.

Bundles ship ONNX + manifest only: no pickle-based file goes into them. The weights-only
torch checkpoint the stages come from stays outside (``checkpoint_out`` /
``--save-checkpoint``, or the ``--checkpoint`` that was exported); the manifest records its
SHA-256 in ``provenance.checkpoint_sha256`` so the torch backend can verify it.

The graphs follow the contract in ``core/manifest.py`` (batch 1, static shapes except the
expert stage's k axis). Export uses the TorchScript-based ``torch.onnx.export`` (dynamo=False)
at opset 17 and then lowers the saved ``ir_version`` to 8 (the IR of opset 17) so that older
ONNX Runtime releases load the files. Before the manifest is written, onnxruntime (CPU) is
run against PyTorch on random inputs for both stages and random active sets of every size
k = 1..E; a max abs error above ``tolerance`` (1e-4) fails the export and no manifest is
written.

The command line (``moe-policy-ros export``, ``python -m moe_policy_ros.tools.export``) is
:mod:`moe_policy_ros.tools.export`; this module is the library it calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moe_policy_ros.core.config import RoutingConfig
from moe_policy_ros.core.io import sha256_file
from moe_policy_ros.core.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ActionSpec,
    CameraSpec,
    ExpertsSpec,
    Manifest,
    NoveltySpec,
    ObservationSpec,
    ProprioSpec,
    Provenance,
    SamplerSpec,
    StageFile,
    TrainingProvenance,
    write_manifest,
)
from moe_policy_ros.models.config import CameraShape, ModelConfig
from moe_policy_ros.models.families import DiBMModel, MoEModel, build_model

EXPORTER_VERSION = "moe_policy_ros.models.export 0.1.0"
OPSET = 17
IR_VERSION = 8
PARITY_TOLERANCE = 1e-4
CHECKPOINT_FORMAT = 1
ENCODER_FILE = "encoder.onnx"
EXPERTS_FILE = "experts.onnx"

ALOHA_JOINTS: tuple[str, ...] = tuple(
    f"{side}_{j}"
    for side in ("left", "right")
    for j in (
        "waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"
    )
)  # fmt: skip


class ExportError(RuntimeError):
    """The export failed (graph export, ONNX check, or parity above tolerance)."""


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: MoEModel, path: str | Path) -> Path:
    """Write ``{"format", "family", "config", "state_dict"}`` (weights_only-loadable)."""
    path = Path(path)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "family": model.cfg.family,
            "config": model.config_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> MoEModel:
    """Rebuild a model (eval mode) from ``checkpoint.pt`` (``torch.load(weights_only=True)``)."""
    data = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or "config" not in data or "state_dict" not in data:
        raise ValueError(f"{path}: not a moe_policy_ros checkpoint (needs config, state_dict)")
    model = build_model(ModelConfig.from_saved(data["config"]))
    missing, unexpected = model.load_state_dict(data["state_dict"], strict=False)
    # Di-BM calibration buffers postdate some checkpoints: absent = not calibrated
    missing = [k for k in missing if k not in _OPTIONAL_STATE]
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint weights do not fit the {model.cfg.family} model: missing "
            f"{missing}, unexpected {unexpected} (written by an incompatible model version?)"
        )
    return model.eval()


_OPTIONAL_STATE = frozenset({"energy_offset", "novelty_range", "calibration_samples"})


# --------------------------------------------------------------------------- helpers


def default_routing(family: str, top_k: int, tau: float = 0.8) -> RoutingConfig:
    """The routing a bundle names as its default, per family (the models train with the
    same selection: top-k with ``top_k``, smp gate mass with ``tau`` = ``route_tau``)."""
    if family == "dense":
        return RoutingConfig(strategy="dense", k=1)
    if family == "smp":
        return RoutingConfig(strategy="sticky", sticky_base="mass", tau=tau, k=top_k)
    return RoutingConfig(strategy="topk", k=top_k)


def novelty_spec(model: MoEModel) -> NoveltySpec | None:
    """The calibrated novelty range of a Di-BM model (None: not dibm or not calibrated)."""
    if not isinstance(model, DiBMModel) or not model.calibrated:
        return None
    q = [float(v) for v in model.novelty_range]
    return NoveltySpec(
        samples=int(model.calibration_samples),
        energy_offsets=tuple(float(v) for v in model.energy_offset),
        min=q[0], p50=q[1], p95=q[2], p99=q[3], max=q[4],
    )  # fmt: skip


def _encoder_inputs(model: MoEModel, gen: torch.Generator) -> tuple[Tensor, ...]:
    imgs = [torch.randn(1, 3, c.height, c.width, generator=gen) for c in model.cfg.cameras]
    return (*imgs, torch.randn(1, model.cfg.proprio_dim, generator=gen))


def _expert_inputs(
    model: MoEModel, context: Tensor, idx: Tensor, gen: torch.Generator
) -> tuple[Tensor, ...]:
    k = int(idx.shape[0])
    if model.cfg.family == "smp":
        x_t = torch.randn(1, k, model.cfg.rank, generator=gen)
        t = torch.rand(1, generator=gen)
        return (context, idx, x_t, t)
    w = torch.rand(k, generator=gen)
    return (context, idx, w / w.sum())


def _export_graph(
    module: torch.nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    proto.producer_name = "moe_policy_ros"
    proto.producer_version = EXPORTER_VERSION.rsplit(" ", 1)[-1]
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:  # onnx raises several checker exception types
        raise ExportError(f"{path.name}: ONNX check failed: {err}") from err
    onnx.save(proto, str(path))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_err(torch_out: Sequence[Tensor], ort_out: Sequence[np.ndarray]) -> float:
    err = 0.0
    for a, b in zip(torch_out, ort_out, strict=True):
        if tuple(a.shape) != tuple(b.shape):
            raise ExportError(f"parity: shape {tuple(b.shape)} from ORT vs {tuple(a.shape)}")
        err = max(err, float(np.max(np.abs(a.detach().numpy() - b))) if b.size else 0.0)
    return err


def check_parity(
    model: MoEModel,
    encoder_path: Path,
    experts_path: Path,
    *,
    trials: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Max abs error ORT vs PyTorch: encoder on ``trials`` random observations, expert stage
    on ``trials`` random active sets (sorted, unique) for every k = 1..E."""
    gen = torch.Generator().manual_seed(seed + 1)
    enc_mod, exp_mod = model.encoder_module, model.expert_module
    enc_sess, exp_sess = _session(encoder_path), _session(experts_path)
    enc_names = list(model.encoder_input_names)
    exp_names = list(model.expert_input_names)
    enc_err = exp_err = 0.0
    contexts: list[Tensor] = []
    with torch.no_grad():
        for _ in range(trials):
            args = _encoder_inputs(model, gen)
            ref = enc_mod(*args)
            got = enc_sess.run(None, {n: a.numpy() for n, a in zip(enc_names, args, strict=True)})
            enc_err = max(enc_err, _max_err(ref, got))
            contexts.append(ref[0])
        e = model.cfg.num_experts
        for k in range(1, e + 1):
            for i in range(trials):
                idx = torch.sort(torch.randperm(e, generator=gen)[:k]).values
                ctx = contexts[i % len(contexts)]
                args = _expert_inputs(model, ctx, idx, gen)
                ref_e = exp_mod(*args)
                got = exp_sess.run(
                    None, {n: a.numpy() for n, a in zip(exp_names, args, strict=True)}
                )
                exp_err = max(exp_err, _max_err((ref_e,), got))
    return {"encoder": enc_err, "experts": exp_err, "max": max(enc_err, exp_err)}


# --------------------------------------------------------------------------- export


def _export_stages(
    model: MoEModel, out: Path, *, name: str, trials: int, tolerance: float, seed: int
) -> tuple[Path, Path, dict[str, float]]:
    """Write the encoder and expert graphs into ``out`` and check their parity against the
    model; raises :class:`ExportError` when it exceeds ``tolerance``."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    enc_path, exp_path = out / ENCODER_FILE, out / EXPERTS_FILE
    enc_args = _encoder_inputs(model, gen)
    with torch.no_grad():
        context = model.encoder_module(*enc_args)[0]
    k0 = min(2, cfg.num_experts)
    exp_args = _expert_inputs(model, context, torch.arange(k0, dtype=torch.int64), gen)
    if cfg.family == "smp":
        dyn = {"expert_idx": {0: "k"}, "x_t": {1: "k"}, "velocity": {1: "k"}}
    else:
        dyn = {"expert_idx": {0: "k"}, "expert_weights": {0: "k"}}
    _export_graph(model.encoder_module, enc_args, enc_path, model.encoder_input_names,
                  model.encoder_output_names, None)
    _export_graph(model.expert_module, exp_args, exp_path, model.expert_input_names,
                  model.expert_output_names, dyn)
    parity = check_parity(model, enc_path, exp_path, trials=trials, seed=seed)
    if not parity["max"] <= tolerance:
        raise ExportError(
            f"{name}: ONNX Runtime vs PyTorch parity error {parity['max']:.3g} exceeds "
            f"{tolerance:g} (encoder {parity['encoder']:.3g}, experts {parity['experts']:.3g})"
        )
    return enc_path, exp_path, parity


def _checkpoint_sha(
    model: MoEModel, out: Path, checkpoint_out: str | Path | None,
    source_checkpoint: str | Path | None,
) -> str:
    """Save the checkpoint (outside the bundle) if asked; the SHA-256 of the one given."""
    if checkpoint_out is not None:
        ckpt_out = Path(checkpoint_out)
        if ckpt_out.resolve().is_relative_to(out.resolve()):
            raise ExportError(
                f"{ckpt_out}: the checkpoint must be saved outside the bundle {out} "
                "(bundles ship ONNX + manifest only)"
            )
        return sha256_file(save_checkpoint(model, ckpt_out))
    if source_checkpoint is not None:
        return sha256_file(Path(source_checkpoint))
    return ""


def _provenance(
    parity: dict[str, float], ckpt_sha: str, source: str, notes: str,
    training: TrainingProvenance | None, num_experts: int,
) -> Provenance:
    return Provenance(
        exporter=EXPORTER_VERSION,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        torch_version=torch.__version__,
        onnx_opset=OPSET,
        source=source or "randomly initialised reference model (untrained)",
        parity_max_abs_err=float(f"{parity['max']:.3g}"),
        checkpoint_sha256=ckpt_sha,
        training=training,
        notes=notes
        or (
            f"parity encoder {parity['encoder']:.3g}, experts {parity['experts']:.3g} "
            f"(onnxruntime CPU vs torch fp32, k=1..{num_experts})"
        ),
    )


def export_bundle(
    model: MoEModel,
    out_dir: str | Path,
    *,
    name: str,
    cameras: Sequence[CameraSpec] | None = None,
    joints: Sequence[str] | None = None,
    proprio_joints: Sequence[str] | None = None,
    action_mean: Sequence[float] | None = None,
    action_std: Sequence[float] | None = None,
    proprio_mean: Sequence[float] | None = None,
    proprio_std: Sequence[float] | None = None,
    control_period_s: float = 0.02,
    routing: RoutingConfig | None = None,
    expert_labels: Sequence[str] | None = None,
    source: str = "",
    notes: str = "",
    parity_trials: int = 3,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
    checkpoint_out: str | Path | None = None,
    source_checkpoint: str | Path | None = None,
    training: TrainingProvenance | None = None,
) -> Path:
    """Export ``model`` into ``out_dir`` and return the manifest path (``policy.yaml``).

    ``checkpoint_out`` writes the model's weights-only checkpoint there (it must lie outside
    ``out_dir``); ``source_checkpoint`` names the checkpoint the model was loaded from. The
    SHA-256 of whichever is given lands in ``provenance.checkpoint_sha256``; ``training``
    (see :func:`trained_export_kwargs`) in ``provenance.training``.

    ``cameras`` default to the model's cameras with mean/std 0.5; ``joints`` (action joint
    names) and ``proprio_joints`` default to the 14 ALOHA names when the dims are 14, else
    ``joint_<i>``; normalisation stats default to mean 0, std 1. ``routing`` defaults to
    :func:`default_routing`. Raises :class:`ExportError` when parity exceeds ``tolerance``.
    """
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()

    cams = _camera_specs(cfg.cameras, cameras)
    a_joints = _joint_names(joints, cfg.action_dim, "action joints")
    p_joints = _joint_names(proprio_joints or joints, cfg.proprio_dim, "proprio joints")

    # a failed export must not leave an old manifest describing the new files
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    enc_path, exp_path, parity = _export_stages(
        model, out, name=name, trials=parity_trials, tolerance=tolerance, seed=seed
    )
    ckpt_sha = _checkpoint_sha(model, out, checkpoint_out, source_checkpoint)

    labels = tuple(expert_labels) if expert_labels else _labels(cfg)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        family=cfg.family,  # type: ignore[arg-type]
        observation=ObservationSpec(
            cameras=cams,
            proprio=ProprioSpec(joints=p_joints, mean=_stats(proprio_mean, cfg.proprio_dim, 0.0),
                                std=_stats(proprio_std, cfg.proprio_dim, 1.0)),
        ),
        action=ActionSpec(dim=cfg.action_dim, joints=a_joints, chunk_length=cfg.chunk_length,
                          control_period_s=control_period_s,
                          mean=_stats(action_mean, cfg.action_dim, 0.0),
                          std=_stats(action_std, cfg.action_dim, 1.0)),
        experts=ExpertsSpec(count=cfg.num_experts, labels=labels),
        routing=routing or default_routing(cfg.family, cfg.top_k, cfg.route_tau),
        context_dim=cfg.context_dim,
        latent_dim=cfg.latent_dim if cfg.family == "lar" else 0,
        sampler=SamplerSpec(kind="flow_euler", steps=cfg.sampler_steps, rank=cfg.rank)
        if cfg.family == "smp" else None,
        combination=model.combination,  # type: ignore[arg-type]
        novelty=novelty_spec(model),
        stages={
            "encoder": StageFile(file=ENCODER_FILE, sha256=sha256_file(enc_path)),
            "experts": StageFile(file=EXPERTS_FILE, sha256=sha256_file(exp_path)),
        },
        provenance=_provenance(parity, ckpt_sha, source, notes, training, cfg.num_experts),
    )
    return write_manifest(out, manifest)


def _camera_specs(
    shapes: Sequence[CameraShape], given: Sequence[CameraSpec] | None
) -> tuple[CameraSpec, ...]:
    if given is None:
        return tuple(CameraSpec(name=c.name, height=c.height, width=c.width) for c in shapes)
    got = [(c.name, c.height, c.width) for c in given]
    want = [(c.name, c.height, c.width) for c in shapes]
    if got != want:
        raise ExportError(f"cameras {got} do not match the model's cameras {want}")
    return tuple(given)


def _joint_names(names: Sequence[str] | None, dim: int, what: str) -> tuple[str, ...]:
    if names is None:
        return (
            ALOHA_JOINTS if dim == len(ALOHA_JOINTS) else tuple(f"joint_{i}" for i in range(dim))
        )
    if len(names) != dim:
        raise ExportError(f"{what}: {len(names)} names for dim {dim}")
    return tuple(names)


def _stats(values: Sequence[float] | None, dim: int, fill: float) -> tuple[float, ...]:
    if values is None:
        return (fill,) * dim
    if len(values) != dim:
        raise ExportError(f"normalisation stats: {len(values)} values for dim {dim}")
    return tuple(float(v) for v in values)


def _labels(cfg: ModelConfig) -> tuple[str, ...]:
    if cfg.family == "dense":
        return ("dense",)
    prefix = "skill" if cfg.family == "smp" else "expert"
    return tuple(f"{prefix}_{i}" for i in range(cfg.num_experts))


# --------------------------------------------------------------------------- model sizes

#: The model size flags of ``moe-policy-ros export`` and ``moe-policy-ros train``: the
#: :class:`ModelConfig` field, the flag, its help text.
SIZE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("context_dim", "--context-dim", "context width D"),
    ("expert_hidden", "--expert-hidden", "expert MLP hidden width"),
    ("expert_depth", "--expert-depth", "expert MLP hidden layers"),
    ("trunk_layers", "--trunk-layers", "transformer trunk layers"),
    ("trunk_heads", "--trunk-heads", "transformer trunk heads"),
    ("vision_channels", "--vision-channels", "CNN base channels"),
    ("vision_keypoints", "--vision-keypoints", "spatial-softmax keypoints per camera (0: pool)"),
    ("chunk_length", "--chunk-length", "H, control steps per chunk"),
    ("action_dim", "--action-dim", "A (default: number of joints, 14)"),
    ("top_k", "--top-k", "default active experts k"),
    ("latent_dim", "--latent-dim", "Z, lar latent size"),
    ("rank", "--rank", "R, smp coefficients per skill"),
    ("sampler_steps", "--sampler-steps", "smp Euler steps"),
)


# --------------------------------------------------------------------------- trained checkpoints
# (owned by the training work, issue 10 part 3: what a `moe-policy-ros train` checkpoint adds)


def trained_export_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    """:func:`export_bundle` keyword arguments from a ``moe-policy-ros train`` checkpoint.

    ``data`` is the loaded checkpoint dict; one without a ``training`` section gives ``{}``.
    The run description in it supplies the joint names, the normalisation statistics of the
    training set, the cameras with the trainer's image normalisation (mean 0, std 1: the
    model sees ``x / 255``), the control period (1 / dataset fps) and the provenance: dataset
    path and hash, demonstration seeds, steps, wall time, validation loss and rollout success
    with its seeds.
    """
    tr = data.get("training") if isinstance(data, dict) else None
    if not tr:
        return {}
    run = tr["run"]
    cfg = ModelConfig.from_saved(data["config"])
    norm = run.get("image_normalisation", {"mean": [0.0] * 3, "std": [1.0] * 3})
    cameras = [
        CameraSpec(
            name=c.name,
            height=c.height,
            width=c.width,
            mean=tuple(norm["mean"]),
            std=tuple(norm["std"]),
        )
        for c in cfg.cameras
    ]
    stats = run["stats"]
    rollout = tr.get("rollout") or {}
    training = TrainingProvenance(
        trainer=str(run.get("trainer", "")),
        dataset=str(run.get("dataset", "")),
        dataset_sha256=str(run.get("dataset_sha256", "")),
        task=str(run.get("task") or ""),
        demo_seeds=tuple(int(s) for s in run.get("demo_seeds", [])),
        train_episodes=len(run.get("train_episodes", [])),
        val_episodes=len(run.get("val_episodes", [])),
        steps=int(tr["step"]),
        wall_time_s=round(float(tr.get("wall_time_s", 0.0)), 1),
        val_loss=None if tr.get("val_loss") is None else float(tr["val_loss"]),
        rollout_successes=int(rollout["successes"]) if rollout.get("episodes") else None,
        rollout_episodes=int(rollout.get("episodes", 0)),
        rollout_seeds=tuple(int(s) for s in rollout.get("seeds", [])),
        train_seed=int(run["train_config"].get("seed", 0)),
    )
    fps = float(run.get("fps") or 50.0)
    return {
        "joints": list(run["joint_names"]),
        "cameras": cameras,
        "action_mean": list(stats["action_mean"]),
        "action_std": list(stats["action_std"]),
        "proprio_mean": list(stats["proprio_mean"]),
        "proprio_std": list(stats["proprio_std"]),
        "control_period_s": 1.0 / fps,
        "source": f"moe-policy-ros train: {cfg.family} on {run.get('dataset', '?')} "
        f"(step {int(tr['step'])})",
        "training": training,
    }
