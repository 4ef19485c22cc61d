"""Size and shape configuration of the reference models (plain dict <-> dataclass).

The dict form is what ``checkpoint.pt`` stores (only str/int/float/list/dict values, so that
``torch.load(weights_only=True)`` reads it) and what :func:`moe_policy_ros.models.build_model`
takes. Unknown keys are rejected with a message naming them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from moe_policy_ros.core.manifest import FAMILIES as FAMILIES  # the one family list

DIRECT_FAMILIES: tuple[str, ...] = ("adamoe", "dibm", "lar", "dense")
#: AdaMoE combination weights: ``router_plus_adapter`` is the released code's (router
#: probability of a selected expert + the scale adapter's output); ``adapter_sigmoid`` is our
#: earlier variant (sigmoid adapter weights alone, straight-through router gradient).
ADAMOE_WEIGHTINGS: tuple[str, ...] = ("router_plus_adapter", "adapter_sigmoid")
#: Vision encoder normalisation: ``group`` puts a GroupNorm after every convolution, so the
#: features of a dark image with a few-pixel object keep unit scale and the keypoint maps start
#: sharp enough to move (measured without it: activations shrank 4x through the three
#: convolutions, the spatial softmax stayed uniform and every keypoint sat at the image centre
#: for every frame, so trained policies ignored the image); ``none`` is the earlier encoder.
VISION_NORMS: tuple[str, ...] = ("group", "none")
#: Config keys of earlier model versions that are accepted and ignored (not for smp, whose
#: mixture-of-directions basis they configured; such checkpoints must be re-trained).
OBSOLETE_KEYS: tuple[str, ...] = ("basis_mixtures",)


@dataclass(frozen=True)
class CameraShape:
    """One camera input of the encoder: name and image size in pixels (3 channels)."""

    name: str
    height: int
    width: int


def _default_cameras() -> tuple[CameraShape, ...]:
    return (CameraShape("top", 96, 128),)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a reference model.

    ``num_experts`` E (forced to 1 for ``dense``), ``chunk_length`` H, ``action_dim`` A,
    ``context_dim`` D, ``expert_hidden``/``expert_depth`` width and number of hidden layers of
    each expert MLP, ``top_k`` the default active-set size (for ``dense``: the number of
    experts whose active parameter count the dense head matches), ``latent_dim`` Z (lar),
    ``rank`` R skill coefficients per expert and ``sampler_steps`` Euler steps (smp),
    ``vision_keypoints`` spatial-softmax keypoints per camera (0: the earlier average-pool
    encoder, which is what checkpoints without the field were trained with),
    ``vision_norm`` the vision encoder's normalisation (see :data:`VISION_NORMS`; checkpoints
    without the field were trained with ``none``).

    Fidelity options: ``adamoe_weighting`` (see :data:`ADAMOE_WEIGHTINGS`; recorded in the
    manifest as ``combination``), ``route_tau`` the gate-mass threshold SMP trains with and
    its bundle defaults to, ``lar_latent_fraction`` the share of the step budget LAR-MoE
    spends in stage 1 (latent pre-training), ``coeff_scale`` the length of SMP's basis
    columns (0: sqrt(H*A / R), so that a chunk of unit-variance normalised actions lying in one
    skill's span has unit-variance coefficients, the scale of the flow's N(0, 1) noise;
    checkpoints without the field were trained with 1, an orthonormal basis).
    """

    family: str
    num_experts: int = 8
    cameras: tuple[CameraShape, ...] = field(default_factory=_default_cameras)
    proprio_dim: int = 14
    action_dim: int = 14
    chunk_length: int = 20
    context_dim: int = 128
    expert_hidden: int = 128
    expert_depth: int = 1
    trunk_layers: int = 2
    trunk_heads: int = 4
    vision_channels: int = 16
    vision_keypoints: int = 16
    vision_norm: str = "group"
    top_k: int = 2
    latent_dim: int = 16
    rank: int = 4
    sampler_steps: int = 10
    time_dim: int = 16
    energy_hidden: int = 64
    router_gain: float = 1.0
    adamoe_weighting: str = "router_plus_adapter"
    route_tau: float = 0.8
    lar_latent_fraction: float = 0.3
    coeff_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES} (got {self.family!r})")
        if self.family == "dense" and self.num_experts != 1:
            object.__setattr__(self, "num_experts", 1)
        positive = (
            "num_experts", "proprio_dim", "action_dim", "chunk_length", "context_dim",
            "expert_hidden", "expert_depth", "trunk_layers", "trunk_heads", "vision_channels",
            "top_k", "latent_dim", "rank", "sampler_steps", "time_dim", "energy_hidden",
        )  # fmt: skip
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if int(self.vision_keypoints) < 0:
            raise ValueError(f"vision_keypoints must be >= 0 (got {self.vision_keypoints})")
        if self.vision_norm not in VISION_NORMS:
            raise ValueError(
                f"vision_norm must be one of {VISION_NORMS} (got {self.vision_norm!r})"
            )
        if not self.cameras:
            raise ValueError("cameras: at least one camera is needed")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique: {names}")
        if self.adamoe_weighting not in ADAMOE_WEIGHTINGS:
            raise ValueError(
                f"adamoe_weighting must be one of {ADAMOE_WEIGHTINGS} "
                f"(got {self.adamoe_weighting!r})"
            )
        if not 0.0 < self.route_tau <= 1.0:
            raise ValueError(f"route_tau must be in (0, 1] (got {self.route_tau})")
        if not 0.0 < self.lar_latent_fraction < 1.0:
            raise ValueError(
                f"lar_latent_fraction must be in (0, 1) (got {self.lar_latent_fraction})"
            )
        if not self.coeff_scale >= 0:
            raise ValueError(f"coeff_scale must be >= 0 (got {self.coeff_scale})")
        if not self.router_gain > 0:
            raise ValueError(f"router_gain must be positive (got {self.router_gain})")
        if self.context_dim % self.trunk_heads:
            raise ValueError(
                f"context_dim {self.context_dim} must be divisible by trunk_heads "
                f"{self.trunk_heads}"
            )
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even (got {self.time_dim})")
        if self.family != "dense" and self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        if self.family == "smp" and self.num_experts * self.rank > self.flat_action_dim:
            raise ValueError(
                f"smp: num_experts*rank = {self.num_experts * self.rank} orthonormal columns "
                f"do not fit in H*A = {self.flat_action_dim}"
            )

    @property
    def flat_action_dim(self) -> int:
        """H * A, the length of a flattened action chunk."""
        return self.chunk_length * self.action_dim

    @property
    def skill_scale(self) -> float:
        """SMP: the length of every basis column (``coeff_scale``, or its automatic value)."""
        if self.coeff_scale > 0:
            return float(self.coeff_scale)
        return math.sqrt(self.flat_action_dim / self.rank)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> ModelConfig:
        """:meth:`from_dict` for a config stored with weights (checkpoint, run): a field that
        postdates the file takes the value the weights were trained with, not today's default."""
        data = dict(data)
        if data.get("family") == "adamoe":
            data.setdefault("adamoe_weighting", "adapter_sigmoid")
        data.setdefault("vision_keypoints", 0)
        data.setdefault("vision_norm", "none")
        if data.get("family") == "smp":
            data.setdefault("coeff_scale", 1.0)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"] = [
            {"name": c.name, "height": c.height, "width": c.width} for c in self.cameras
        ]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        data = dict(data)
        for key in OBSOLETE_KEYS:
            if key in data:
                if data.get("family") == "smp":
                    raise ValueError(
                        f"model config key {key!r} belongs to the earlier SMP model (a basis "
                        "mixed from a few fixed directions); its weights do not fit the current "
                        "state-dependent basis: re-train"
                    )
                del data[key]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        if "family" not in data:
            raise ValueError("model config needs 'family'")
        kw = dict(data)
        if "cameras" in kw:
            cams = []
            for c in kw["cameras"]:
                if isinstance(c, CameraShape):
                    cams.append(c)
                else:
                    cams.append(CameraShape(str(c["name"]), int(c["height"]), int(c["width"])))
            kw["cameras"] = tuple(cams)
        return cls(**kw)
