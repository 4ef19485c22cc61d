"""Reference PyTorch models for the five families (adamoe, smp, dibm, lar, dense).

All share the observation trunk (one CNN per camera + proprio MLP -> transformer -> context
c [B, D]). Each model exposes:

* ``encoder_module`` / ``expert_module``: ``nn.Module`` views whose ``forward`` takes the graph
  contract's inputs positionally (order of ``encoder_input_names`` / ``expert_input_names``,
  see ``core/manifest.py``) and returns its outputs in contract order. They are what
  ``export.py`` hands to ``torch.onnx.export``; batch size 1.
* ``encode(images, proprio)`` -> dict of the encoder outputs (any batch size).
* ``act(images, proprio, k=None)`` -> normalised chunk [B, H, A] composed the way the runtime
  composes it with the bundle's default routing (``k`` given: top-k instead).
* ``combination``: how the runtime weights the active experts (the manifest's
  ``combination``; ``core/routing.py`` implements each).
* The training hooks the trainer calls (``docs/architecture.md``, "What each family trains"):
  ``training_phases()``, ``phase_fractions()``, ``begin_phase(phase)``,
  ``loss(images, proprio, actions, *, phase)`` -> dict with ``"loss"`` (the total to
  backprop) plus the named terms, and ``calibrate(batches)`` after training.

``images`` is a sequence of [B, 3, H, W] tensors in camera order (normalised), ``proprio``
[B, P] and ``actions`` [B, H, A] normalised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from moe_policy_ros.models import losses as L
from moe_policy_ros.models.config import ModelConfig
from moe_policy_ros.models.layers import (
    ProprioEncoder,
    StackedMLP,
    TimeEmbedding,
    Trunk,
    VisionEncoder,
    gram_schmidt,
    mlp,
    stacked_mlp_params,
)

Batch = tuple[Sequence[Tensor], Tensor, Tensor]


class MoEModel(nn.Module):
    """Shared trunk, the stage views and the default training hooks; subclasses add heads."""

    family: ClassVar[str] = ""
    encoder_output_names: ClassVar[tuple[str, ...]] = ()
    expert_input_names: ClassVar[tuple[str, ...]] = ()
    expert_output_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.context_dim
        self.vision = nn.ModuleList(
            [
                VisionEncoder(c, cfg.vision_channels, d, cfg.vision_keypoints, cfg.vision_norm)
                for c in cfg.cameras
            ]
        )
        self.proprio_encoder = ProprioEncoder(cfg.proprio_dim, d)
        self.trunk = Trunk(len(cfg.cameras) + 1, d, cfg.trunk_heads, cfg.trunk_layers)

    # ----------------------------------------------------------------- contract views
    @property
    def encoder_input_names(self) -> tuple[str, ...]:
        return (*(f"image_{c.name}" for c in self.cfg.cameras), "proprio")

    @property
    def encoder_module(self) -> nn.Module:
        return EncoderStage(self)

    @property
    def expert_module(self) -> nn.Module:
        raise NotImplementedError

    @property
    def combination(self) -> str:
        """How the active experts' outputs are weighted (the manifest's ``combination``):
        ``gates`` = router gates renormalised over the active set."""
        return "gates"

    def _scale_router(self, router: nn.Linear) -> None:
        with torch.no_grad():
            router.weight.mul_(self.cfg.router_gain)

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    # ----------------------------------------------------------------- training hooks
    def training_phases(self) -> tuple[str, ...]:
        """Phases the trainer runs in order (each with its own optimiser)."""
        return ("main",)

    def phase_fractions(self) -> tuple[float, ...]:
        """Share of the step budget per phase, aligned with :meth:`training_phases`."""
        return (1.0,)

    def begin_phase(self, phase: str) -> None:
        """Called at the start of each phase (before the optimiser is built)."""
        self._check_phase(phase)

    def calibrate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Post-training calibration over the training set; nothing by default."""
        return {}

    def _check_phase(self, phase: str) -> None:
        if phase not in self.training_phases():
            raise ValueError(
                f"{self.family}: unknown training phase {phase!r}; this family trains in "
                f"phases {self.training_phases()}"
            )

    # ----------------------------------------------------------------- computation
    def trunk_context(self, images: Sequence[Tensor], proprio: Tensor) -> Tensor:
        if len(images) != len(self.vision):
            raise ValueError(f"expected {len(self.vision)} camera images, got {len(images)}")
        tokens = [enc(img) for enc, img in zip(self.vision, images, strict=True)]
        tokens.append(self.proprio_encoder(proprio))
        return self.trunk(torch.stack(tokens, dim=1))

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def act(self, images: Sequence[Tensor], proprio: Tensor, k: int | None = None) -> Tensor:
        raise NotImplementedError

    def loss(
        self, images: Sequence[Tensor], proprio: Tensor, actions: Tensor, *, phase: str = "main"
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        """Encoder outputs plus ``actions`` from :meth:`act` with the default routing."""
        out = dict(self.encode(images, proprio))
        out["actions"] = self.act(images, proprio)
        return out

    def _chunk(self, flat: Tensor) -> Tensor:
        return flat.reshape(flat.shape[0], self.cfg.chunk_length, self.cfg.action_dim)

    def _topk_weights(self, gate_logits: Tensor, k: int) -> Tensor:
        """Dense [B, E] weights: gates renormalised over the top-k (zeros elsewhere).

        Equal to the runtime's softmax over the active experts' logits; differentiable in
        the logits (the selection itself is not)."""
        g = gate_logits.softmax(dim=-1) * L.topk_mask(gate_logits, k)
        return g / g.sum(dim=-1, keepdim=True)


class EncoderStage(nn.Module):
    """Encoder/router stage: (image_<cam>..., proprio) -> contract outputs in order."""

    def __init__(self, model: MoEModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        n = len(self.model.cfg.cameras)
        out = self.model.encode(list(inputs[:n]), inputs[n])
        return tuple(out[name] for name in self.model.encoder_output_names)


class DirectExpertStage(nn.Module):
    """(context [1,D], expert_idx int64 [k], expert_weights [k]) -> actions [1,H,A]."""

    def __init__(self, model: DirectMoEModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, context: Tensor, expert_idx: Tensor, expert_weights: Tensor) -> Tensor:
        return self.model.expert_forward(context, expert_idx, expert_weights)


class FlowExpertStage(nn.Module):
    """(context [1,D], expert_idx [k], x_t [1,k,R], t [1]) -> velocity [1,k,R]."""

    def __init__(self, model: SMPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, context: Tensor, expert_idx: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return self.model.velocity_selected(context, expert_idx, x_t, t)


def _set_trainable(modules: Iterable[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


# =========================================================================== direct families


class DirectMoEModel(MoEModel):
    """Families whose experts map the context straight to a chunk (adamoe, dibm, lar, dense)."""

    expert_input_names = ("context", "expert_idx", "expert_weights")
    expert_output_names = ("actions",)

    def __init__(self, cfg: ModelConfig, expert_hidden: int | None = None) -> None:
        super().__init__(cfg)
        self.expert_hidden = expert_hidden or cfg.expert_hidden
        self.experts = StackedMLP(
            cfg.num_experts,
            [cfg.context_dim],
            self.expert_hidden,
            cfg.expert_depth,
            cfg.flat_action_dim,
        )

    @property
    def expert_module(self) -> nn.Module:
        return DirectExpertStage(self)

    def expert_forward(self, context: Tensor, expert_idx: Tensor, weights: Tensor) -> Tensor:
        """sum_j weights[j] * expert_{idx[j]}(context), computing only the k gathered experts."""
        out = self.experts.forward_selected([context], expert_idx)  # [k, N]
        flat = torch.matmul(weights.unsqueeze(0), out)  # [1, N]
        return self._chunk(flat)

    def selection_weights(self, enc: dict[str, Tensor], k: int) -> Tensor:
        """Dense [B, E] combination weights of top-k routing (zeros off the active set), as
        ``core/routing.py`` computes them for this family's ``combination``."""
        return self._topk_weights(enc["gate_logits"], k)

    def compose(self, context: Tensor, weights: Tensor) -> Tensor:
        """sum_i weights[:, i] * expert_i(context) -> [B, H, A] (all experts evaluated)."""
        outs = self.experts.forward_all([context])
        return self._chunk(torch.einsum("be,ben->bn", weights, outs))

    def act(self, images: Sequence[Tensor], proprio: Tensor, k: int | None = None) -> Tensor:
        enc = self.encode(images, proprio)
        return self.compose(enc["context"], self.selection_weights(enc, k or self.cfg.top_k))


class AdaMoEModel(DirectMoEModel):
    """AdaMoE: router top-k *selects*; the weight adds an independent scale adapter.

    Encoder outputs: context, gate_logits = router(c), adapter_weights = adapter(c).

    ``adamoe_weighting = "router_plus_adapter"`` (default; the released code): the weight of
    a selected expert is its router probability plus the adapter's output,
    w_i = softmax(gate_logits)_i + adapter_i (no renormalisation; the adapter's last layer
    starts at zero, so training starts from plain router probabilities).
    ``"adapter_sigmoid"`` (our earlier variant): adapter_weights = sigmoid(adapter(c)) and
    w_i = adapter_i alone. Either way the chunk is sum_{i in topk} w_i expert_i(c), and
    ``core/routing.py`` computes the same w from the manifest's ``combination``.
    """

    family = "adamoe"
    encoder_output_names = ("context", "gate_logits", "adapter_weights")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, e = cfg.context_dim, cfg.num_experts
        self.router = nn.Linear(d, e)
        self.adapter = mlp(d, d, e)
        self._scale_router(self.router)
        if self.paper_weighting:
            last = self.adapter[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def paper_weighting(self) -> bool:
        return self.cfg.adamoe_weighting == "router_plus_adapter"

    @property
    def combination(self) -> str:
        return "router_plus_adapter" if self.paper_weighting else "adapter"

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c = self.trunk_context(images, proprio)
        a = self.adapter(c)
        return {
            "context": c,
            "gate_logits": self.router(c),
            "adapter_weights": a if self.paper_weighting else torch.sigmoid(a),
        }

    def selection_weights(self, enc: dict[str, Tensor], k: int) -> Tensor:
        logits, a = enc["gate_logits"], enc["adapter_weights"]
        mask = L.topk_mask(logits, k)
        if self.paper_weighting:
            return (logits.softmax(dim=-1) + a) * mask
        return a * mask

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        *,
        phase: str = "main",
        lb_weight: float = 0.01,
        z_weight: float = 1e-3,
        bc: str = "l1",
    ) -> dict[str, Tensor]:
        """``router_plus_adapter``: L = BC(y_hat, y) + lambda_lb L_lb(logits) + lambda_z L_z.

        y_hat = sum_{i in topk} (g_i + a_i) expert_i(c), exactly what the runtime composes;
        the task gradient reaches the router through g_i and the adapter through a_i.
        L_lb (:func:`losses.load_balancing_loss`) and the router z-loss
        (:func:`losses.router_z_loss`) act on the router logits as in the released code.

        ``adapter_sigmoid`` (variant): y_hat = sum_{i in topk} a_i (1 + g_i - sg(g_i))
        expert_i(c), the factor being 1 in value (weights = sigmoid adapter weights as at
        inference) but passing the task gradient to g straight-through; L_lb sees a detached
        context so it reaches the router only. No z-loss.
        """
        self._check_phase(phase)
        enc = self.encode(images, proprio)
        c, logits = enc["context"], enc["gate_logits"]
        k = self.cfg.top_k
        if self.paper_weighting:
            pred = self.compose(c, self.selection_weights(enc, k))
            bc_term = L.bc_loss(pred, actions, bc)  # type: ignore[arg-type]
            lb = L.load_balancing_loss(logits, k)
            z = L.router_z_loss(logits)
            total = bc_term + lb_weight * lb + z_weight * z
            return {"loss": total, "bc": bc_term, "load_balancing": lb, "router_z": z}
        g = logits.softmax(dim=-1)
        w = enc["adapter_weights"] * L.topk_mask(logits, k) * (1.0 + g - g.detach())
        bc_term = L.bc_loss(self.compose(c, w), actions, bc)  # type: ignore[arg-type]
        lb = L.load_balancing_loss(self.router(c.detach()), k)
        return {"loss": bc_term + lb_weight * lb, "bc": bc_term, "load_balancing": lb}


class DenseModel(DirectMoEModel):
    """Dense baseline: one head whose parameter count matches ``top_k`` experts (E = 1)."""

    family = "dense"
    encoder_output_names = ("context", "gate_logits")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, expert_hidden=dense_hidden_width(cfg))

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c = self.trunk_context(images, proprio)
        return {"context": c, "gate_logits": torch.zeros_like(c[:, :1])}

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        *,
        phase: str = "main",
        bc: str = "l1",
    ) -> dict[str, Tensor]:
        """L = BC(expert(c), y)."""
        self._check_phase(phase)
        bc_term = L.bc_loss(self.act(images, proprio), actions, bc)  # type: ignore[arg-type]
        return {"loss": bc_term, "bc": bc_term}


def dense_hidden_width(cfg: ModelConfig) -> int:
    """Smallest width whose one-head parameter count reaches ``top_k`` experts' count."""
    n_in, n_out, depth = cfg.context_dim, cfg.flat_action_dim, cfg.expert_depth
    target = cfg.top_k * stacked_mlp_params(n_in, cfg.expert_hidden, depth, n_out)
    h = cfg.expert_hidden
    while stacked_mlp_params(n_in, h, depth, n_out) < target:
        h += 1
    return h


#: quantiles of the calibrated novelty score (min expert energy) kept in the bundle
NOVELTY_QUANTILES: tuple[float, ...] = (0.0, 0.5, 0.95, 0.99, 1.0)


class DiBMModel(DirectMoEModel):
    """Di-BM: per-expert energy networks E_i(c); gate_logits = -E(c) + learned prior.

    Each expert trains on its own curriculum p_i(b) = softmax_b(-E_i(c_b)) (the observations
    its energy claims), the energies learn to claim where their expert is best, with an
    entropy term that keeps each curriculum broad. After training, :meth:`calibrate` sets a
    per-expert normalising constant log Z_i = log mean_n exp(-E_i(c_n)) over the training set
    (buffer ``energy_offset``); the exported ``energies`` are E_i + log Z_i, so 0 is the
    training set's typical level for every expert and the runtime's novelty score (the
    lowest energy) has a scale that the recorded training range (buffer ``novelty_range``,
    quantiles :data:`NOVELTY_QUANTILES` of min_i energy over the training set) gives meaning
    to. The gate logits do not include the offset (the learned prior absorbs per-expert
    constants during training), so calibration never changes routing.
    """

    family = "dibm"
    encoder_output_names = ("context", "gate_logits", "energies")
    energy_offset: Tensor
    novelty_range: Tensor
    calibration_samples: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        e = cfg.num_experts
        self.energy = StackedMLP(e, [cfg.context_dim], cfg.energy_hidden, 1, 1)
        self.prior = nn.Parameter(torch.zeros(e))
        self.register_buffer("energy_offset", torch.zeros(e))
        self.register_buffer("novelty_range", torch.zeros(len(NOVELTY_QUANTILES)))
        self.register_buffer("calibration_samples", torch.zeros((), dtype=torch.int64))

    @property
    def calibrated(self) -> bool:
        return int(self.calibration_samples) > 0

    def raw_energies(self, context: Tensor) -> Tensor:
        """Uncalibrated energies E_i(c) [B, E]."""
        return self.energy.forward_all([context]).squeeze(-1)

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c = self.trunk_context(images, proprio)
        raw = self.raw_energies(c)
        return {
            "context": c,
            "gate_logits": self.prior - raw,
            "energies": raw + self.energy_offset,
        }

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        *,
        phase: str = "main",
        temperature: float = 0.1,
        energy_weight: float = 0.1,
        entropy_weight: float = 0.05,
        gate_weight: float = 0.1,
        energy_l2: float = 1e-3,
        bc: str = "l1",
    ) -> dict[str, Tensor]:
        """L = BC(y_hat, y) + L_expert + lambda_E (L_nce - beta H) + lambda_g CE(r, g)
        + alpha mean E^2.

        * y_hat = sum_{i in topk} g_i f_i(c) with the gates renormalised over the top-k:
          what the runtime composes with the bundle's default routing.
        * L_expert = mean_i sum_b sg(p_i(b)) ||f_i(c_b) - y_b||^2: expert-specific data
          weighting with p_i = softmax over the batch of -E_i (:func:`losses.curriculum_weights`).
        * r = softmax_i(-err_i / T) (no gradient): which expert explains each chunk best.
          L_nce (:func:`losses.energy_nce_loss`) pulls each curriculum p_i toward the
          observations expert i is responsible for; H (:func:`losses.curriculum_entropy`,
          weight beta = ``entropy_weight``) keeps it from collapsing onto a few of them.
        * CE(r, g) = -sum_i r_i log g_i trains the prior and energies to route there; the
          small energy L2 keeps the raw energies at a usable scale.
        """
        self._check_phase(phase)
        c = self.trunk_context(images, proprio)
        raw = self.raw_energies(c)
        logits = self.prior - raw
        outs = self.experts.forward_all([c])  # [B, E, N]
        y = actions.reshape(actions.shape[0], 1, -1)
        errors = ((outs - y) ** 2).mean(dim=-1)  # [B, E]
        r = L.responsibilities(errors, temperature)
        p = L.curriculum_weights(raw).detach()
        w = self._topk_weights(logits, self.cfg.top_k)
        pred = self._chunk(torch.einsum("be,ben->bn", w, outs))
        bc_term = L.bc_loss(pred, actions, bc)  # type: ignore[arg-type]
        expert = (p * errors).sum(dim=0).mean()
        nce = L.energy_nce_loss(raw, r)
        entropy = L.curriculum_entropy(raw)
        gate = -(r * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
        reg = (raw**2).mean()
        total = (
            bc_term
            + expert
            + energy_weight * (nce - entropy_weight * entropy)
            + gate_weight * gate
            + energy_l2 * reg
        )
        return {
            "loss": total,
            "bc": bc_term,
            "expert": expert,
            "energy_nce": nce,
            "curriculum_entropy": entropy,
            "gate": gate,
            "energy_l2": reg,
        }

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Per-expert normalising constants over the training set (``energy_offset``) and the
        range of the calibrated novelty score (``novelty_range``); returns them by name."""
        raws = [self.raw_energies(self.trunk_context(imgs, prop)) for imgs, prop, _ in batches]
        if not raws:
            raise ValueError("dibm calibrate: no batches (need the training set)")
        raw = torch.cat(raws).double()  # [N, E]
        n = raw.shape[0]
        log_z = torch.logsumexp(-raw, dim=0) - math.log(n)
        novelty = (raw + log_z).min(dim=1).values
        levels = torch.tensor(NOVELTY_QUANTILES, dtype=torch.float64, device=novelty.device)
        q = torch.quantile(novelty, levels)
        self.energy_offset.copy_(log_z.to(self.energy_offset.dtype))
        self.novelty_range.copy_(q.to(self.novelty_range.dtype))
        self.calibration_samples.fill_(n)
        out = {f"energy_offset_{i}": float(v) for i, v in enumerate(log_z)}
        for name, v in zip(_quantile_names(), q, strict=True):
            out[f"novelty_{name}"] = float(v)
        out["samples"] = float(n)
        return out


def _quantile_names() -> tuple[str, ...]:
    return tuple(
        "min" if x == 0.0 else "max" if x == 1.0 else f"p{round(100 * x)}"
        for x in NOVELTY_QUANTILES
    )


class LARModel(DirectMoEModel):
    """LAR-MoE: student latent z(c) routes; context = c + W z so experts see the latent.

    Two training phases (:meth:`training_phases`):

    1. ``latent``: student-teacher co-training of the joint observation/future-action
       latent. The teacher z_t = f_t(c, y) sees the future chunk, the student z_s = f_s(c)
       only the observation; a latent decoder (training only) reconstructs the chunk from
       (c, z) for both, and the student is pulled onto the teacher. Trains the trunk,
       student, teacher and decoder.
    2. ``policy``: those are frozen; the router, latent projection and experts train on
       BC with the top-k routing the bundle defaults to, plus a regulariser that makes
       routing similarity follow the teacher latent's similarity.

    The teacher and decoder are not in the exported graphs.
    """

    family = "lar"
    encoder_output_names = ("context", "gate_logits", "latent")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, z, e = cfg.context_dim, cfg.latent_dim, cfg.num_experts
        self.student = mlp(d, d, z)
        self.teacher = mlp(d + cfg.flat_action_dim, d, z)
        self.latent_decoder = mlp(d + z, d, cfg.flat_action_dim)
        self.latent_proj = nn.Linear(z, d)
        self.router = nn.Linear(z, e)
        self._scale_router(self.router)

    def latent_modules(self) -> tuple[nn.Module, ...]:
        """Stage-1 networks (frozen in stage 2): trunk, student, teacher, latent decoder."""
        return (
            self.vision, self.proprio_encoder, self.trunk, self.student, self.teacher,
            self.latent_decoder,
        )  # fmt: skip

    def policy_modules(self) -> tuple[nn.Module, ...]:
        """Stage-2 networks: router, latent projection, experts."""
        return (self.router, self.latent_proj, self.experts)

    def training_phases(self) -> tuple[str, ...]:
        return ("latent", "policy")

    def phase_fractions(self) -> tuple[float, ...]:
        f = self.cfg.lar_latent_fraction
        return (f, 1.0 - f)

    def begin_phase(self, phase: str) -> None:
        """``latent``: only the stage-1 networks train; ``policy``: they are frozen."""
        self._check_phase(phase)
        _set_trainable(self.latent_modules(), phase == "latent")
        _set_trainable(self.policy_modules(), phase == "policy")

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c0 = self.trunk_context(images, proprio)
        z = self.student(c0)
        return {"context": c0 + self.latent_proj(z), "gate_logits": self.router(z), "latent": z}

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        *,
        phase: str = "main",
        align_weight: float = 1.0,
        commit_weight: float = 0.25,
        route_weight: float = 0.1,
        bc: str = "l1",
    ) -> dict[str, Tensor]:
        """Stage ``latent``: L = R(z_t) + R(z_s) + lambda_a ||z_s - sg(z_t)||^2
        + beta ||sg(z_s) - z_t||^2, R(z) = BC(decoder(c, z), y); the alignment pulls the
        student onto the teacher (:func:`losses.latent_alignment_loss`), the smaller
        commitment keeps the teacher's latent predictable from the observation.

        Stage ``policy`` (latent networks under no_grad): L = BC(y_hat, y) + lambda_r L_route,
        y_hat = sum_{i in topk} g_i expert_i(c + W z_s) with gates renormalised over the top
        k (as the runtime's default), L_route (:func:`losses.router_latent_alignment_loss`)
        routing similarity following the teacher latent's similarity across the batch.
        """
        self._check_phase(phase)
        y_flat = actions.reshape(actions.shape[0], -1)
        if phase == "latent":
            c0 = self.trunk_context(images, proprio)
            z_s = self.student(c0)
            z_t = self.teacher(torch.cat([c0, y_flat], dim=-1))
            rec_t = self._chunk(self.latent_decoder(torch.cat([c0, z_t], dim=-1)))
            rec_s = self._chunk(self.latent_decoder(torch.cat([c0, z_s], dim=-1)))
            r_t = L.bc_loss(rec_t, actions, bc)  # type: ignore[arg-type]
            r_s = L.bc_loss(rec_s, actions, bc)  # type: ignore[arg-type]
            align = L.latent_alignment_loss(z_s, z_t)
            commit = L.latent_alignment_loss(z_t, z_s)
            total = r_t + r_s + align_weight * align + commit_weight * commit
            return {
                "loss": total,
                "recon_teacher": r_t,
                "recon_student": r_s,
                "latent_align": align,
                "teacher_commit": commit,
            }
        with torch.no_grad():
            c0 = self.trunk_context(images, proprio)
            z_s = self.student(c0)
            z_t = self.teacher(torch.cat([c0, y_flat], dim=-1))
        logits = self.router(z_s)
        w = self._topk_weights(logits, self.cfg.top_k)
        pred = self.compose(c0 + self.latent_proj(z_s), w)
        bc_term = L.bc_loss(pred, actions, bc)  # type: ignore[arg-type]
        route = L.router_latent_alignment_loss(logits, z_t)
        return {"loss": bc_term + route_weight * route, "bc": bc_term, "router_align": route}


# =========================================================================== flow family


class SMPModel(MoEModel):
    """SMP: flow-matching experts over a state-dependent orthonormal skill basis.

    The basis head predicts an unconstrained matrix W(c) [N, E*R] (N = H*A; a linear map of
    the context plus a learned bias) that :func:`layers.gram_schmidt` orthonormalises (QR's
    Q up to signs; QR itself has no ONNX export): basis(c) [B, E, N, R], skill i's R columns.
    Expert i is a velocity field v_i(x_t, t, c) on skill i's coefficients. The gates select
    the active skills (gate-mass routing with ``route_tau``, the bundle's default; top-k
    when ``k`` is given) and the chunk is sum_{j active} B_j(c) x_j after integrating x from
    noise (t=0) to data (t=1), with unit weights (``combination: unit``): the orthogonal
    projection of the coefficients onto the active skills' span. A chunk that lies in one
    skill's subspace therefore comes out at full length however many skills are active;
    training optimises exactly this composition.

    The exported basis is ``s * Q`` (``cfg.skill_scale``, sqrt(H*A/R) by default): the
    coefficients x = Q^T y / s of a normalised chunk then have about unit variance, the scale
    of the flow's N(0, 1) noise, as flow matching assumes of its data. With an orthonormal
    basis (s = 1, the earlier model) one skill's 4 coefficients carried a 350-value chunk at
    about 9.5 times the noise's scale, and the flow fitted them 2-3 times worse than AdaMoE
    fits the chunk at the same step (docs/training.md).
    """

    family = "smp"
    encoder_output_names = ("context", "gate_logits", "basis")
    expert_input_names = ("context", "expert_idx", "x_t", "t")
    expert_output_names = ("velocity",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, e, r, n = cfg.context_dim, cfg.num_experts, cfg.rank, cfg.flat_action_dim
        self.router = nn.Linear(d, e)
        self._scale_router(self.router)
        self.basis_head = nn.Linear(d, n * e * r)
        nn.init.normal_(self.basis_head.weight, std=1.0 / math.sqrt(n * d))
        nn.init.zeros_(self.basis_head.bias)
        self.basis_bias = nn.Parameter(torch.randn(n, e * r) / math.sqrt(n))
        self.time_embed = TimeEmbedding(cfg.time_dim)
        self.denoiser = StackedMLP(e, [d, r, cfg.time_dim], cfg.expert_hidden, cfg.expert_depth, r)

    @property
    def expert_module(self) -> nn.Module:
        return FlowExpertStage(self)

    @property
    def combination(self) -> str:
        return "unit"

    def basis_matrix(self, c: Tensor) -> Tensor:
        """The unconstrained state-dependent matrix W(c) [B, N, E*R] before orthonormalising."""
        cfg = self.cfg
        n, er = cfg.flat_action_dim, cfg.num_experts * cfg.rank
        return self.basis_bias.unsqueeze(0) + self.basis_head(c).reshape(-1, n, er)

    def basis(self, c: Tensor) -> Tensor:
        """[B, E, N, R]: ``skill_scale`` times the orthonormalised W(c), skill i's R columns."""
        cfg = self.cfg
        e, r, n = cfg.num_experts, cfg.rank, cfg.flat_action_dim
        q = gram_schmidt(self.basis_matrix(c))  # [B, N, E*R]
        return (cfg.skill_scale * q).reshape(-1, n, e, r).permute(0, 2, 1, 3)

    def coefficients(self, basis: Tensor, y: Tensor) -> Tensor:
        """Every skill's coefficients of the flat chunks ``y`` [B, N]: B^T y / s^2 [B, E, R],
        so that ``compose`` of one skill's coefficients is y's projection onto its span."""
        return torch.einsum("benr,bn->ber", basis, y) / self.cfg.skill_scale**2

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c = self.trunk_context(images, proprio)
        return {"context": c, "gate_logits": self.router(c), "basis": self.basis(c)}

    def selection_weights(self, gate_logits: Tensor, k: int | None = None) -> Tensor:
        """[B, E] unit weights on the active skills: the gate-mass set (``route_tau``) of
        the bundle's default routing, or the top-k when ``k`` is given."""
        if k is None:
            return L.mass_mask(gate_logits, self.cfg.route_tau)
        return L.topk_mask(gate_logits, k)

    @staticmethod
    def compose(basis: Tensor, coeffs: Tensor, weights: Tensor) -> Tensor:
        """sum_j weights_j B_j coeffs_j: basis [B, E, N, R], coeffs [B, E, R], weights [B, E]
        -> [B, N] (the runtime's composition, ``core.runtime.compose_skills``)."""
        return torch.einsum("be,benr,ber->bn", weights, basis, coeffs)

    def velocity_selected(
        self, context: Tensor, expert_idx: Tensor, x_t: Tensor, t: Tensor
    ) -> Tensor:
        """One denoising step of the k active experts: [1, k, R] velocities."""
        temb = self.time_embed(t)  # [1, T]
        v = self.denoiser.forward_selected([context, x_t[0], temb], expert_idx)
        return v.unsqueeze(0)

    def velocity_all(self, context: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Every expert: context [B, D], x_t [B, E, R], t [B] -> [B, E, R]."""
        temb = self.time_embed(t)
        return self.denoiser.forward_all(
            [context, x_t, temb.unsqueeze(1).expand(-1, x_t.shape[1], -1)]
        )

    def act(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        k: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        enc = self.encode(images, proprio)
        c = enc["context"]
        b, e, r = c.shape[0], self.cfg.num_experts, self.cfg.rank
        steps = steps or self.cfg.sampler_steps
        x = torch.randn(b, e, r, generator=generator, dtype=c.dtype).to(c.device)
        dt = 1.0 / steps
        for s in range(steps):
            t = torch.full((b,), s * dt, dtype=c.dtype, device=c.device)
            x = x + dt * self.velocity_all(c, x, t)
        w = self.selection_weights(enc["gate_logits"], k)
        return self._chunk(self.compose(enc["basis"], x, w))

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        *,
        phase: str = "main",
        sigma2: float = 0.05,
        kl_weight: float = 0.1,
        recon_weight: float = 1.0,
        ortho_weight: float = 1.0,
        bc: str = "mse",
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Flow matching per skill + the composed chunk + the variational gate term.

        x1 = B(c)^T y / s^2 are every skill's target coefficients (the flow target is detached).
        A = the active set the bundle's default routing picks from the gates (no gradient).

        * L_fm (:func:`losses.flow_matching_loss`): every expert learns its own skill's
          coefficients, so whichever skills routing activates denoise correctly.
        * BC = ||sum_{j in A} B_j x1_hat_j - y||^2 with the one-step data estimate
          x1_hat = x_t + (1 - t) v: the runtime's composition, trained end to end.
        * recon = ||sum_{j in A} B_j B_j^T y - y||^2: the active skills' span must hold the
          chunk (trains the basis head).
        * KL(q || g) (:func:`losses.gate_kl`), q_i ∝ g_i exp(-||y - B_i B_i^T y||^2 / 2
          sigma^2) (:func:`losses.skill_posterior`): the gates learn which skills carry the
          chunk, so the gate-mass set covers it.
        * :func:`losses.orthogonality_loss` (monitor; ~0 by construction).
        """
        self._check_phase(phase)
        enc = self.encode(images, proprio)
        c, basis, logits = enc["context"], enc["basis"], enc["gate_logits"]
        b, e = c.shape[0], self.cfg.num_experts
        y = actions.reshape(b, -1)
        x1 = self.coefficients(basis, y)
        per_skill = torch.einsum("benr,ber->ben", basis, x1)
        errors = ((per_skill - y.unsqueeze(1)) ** 2).mean(dim=-1)
        q = L.skill_posterior(logits, errors, sigma2)
        mask = self.selection_weights(logits)
        recon = ((torch.einsum("be,ben->bn", mask, per_skill) - y) ** 2).mean()
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
        t = torch.rand((b,), generator=generator, dtype=x1.dtype).to(x1.device)
        tt = t.view(b, 1, 1)
        x1d = x1.detach()
        x_t = (1.0 - tt) * x0 + tt * x1d
        v = self.velocity_all(c, x_t, t)
        fm = L.flow_matching_loss(v, x1d - x0, torch.full_like(q, 1.0 / e))
        x1_hat = x_t + (1.0 - tt) * v
        pred = self._chunk(self.compose(basis, x1_hat, mask))
        bc_term = L.bc_loss(pred, actions, bc)  # type: ignore[arg-type]
        kl = L.gate_kl(q, logits)
        ortho = L.orthogonality_loss(basis / self.cfg.skill_scale)
        total = fm + bc_term + recon_weight * recon + kl_weight * kl + ortho_weight * ortho
        return {
            "loss": total,
            "flow_matching": fm,
            "bc": bc_term,
            "recon": recon,
            "gate_kl": kl,
            "orthogonality": ortho,
        }


# =========================================================================== factory

_CLASSES: dict[str, type[MoEModel]] = {
    "adamoe": AdaMoEModel,
    "smp": SMPModel,
    "dibm": DiBMModel,
    "lar": LARModel,
    "dense": DenseModel,
}


def build_model(config: dict[str, Any] | ModelConfig) -> MoEModel:
    """Build a freshly initialised model from a config dict (see :class:`ModelConfig`)."""
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    cls = _CLASSES[cfg.family]
    return cls(cfg)
