"""Reference PyTorch models for the five families (adamoe, smp, dibm, lar, dense).

All share the observation trunk (one CNN per camera + proprio MLP -> transformer -> context
c [B, D]). Each model exposes:

* ``encoder_module`` / ``expert_module``: ``nn.Module`` views whose ``forward`` takes the graph
  contract's inputs positionally (order of ``encoder_input_names`` / ``expert_input_names``,
  see ``core/manifest.py``) and returns its outputs in contract order. They are what
  ``export.py`` hands to ``torch.onnx.export``; batch size 1.
* ``encode(images, proprio)`` -> dict of the encoder outputs (any batch size).
* ``act(images, proprio, k=None)`` -> normalised chunk [B, H, A] with top-k routing (a
  training-time reference; the runtime's routing strategies live in ``core/routing.py``).
* ``loss(images, proprio, actions)`` -> dict of named loss terms plus ``total``.

``images`` is a sequence of [B, 3, H, W] tensors in camera order (normalised), ``proprio``
[B, P] and ``actions`` [B, H, A] normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class MoEModel(nn.Module):
    """Shared trunk and the stage views; subclasses add the family heads."""

    family: ClassVar[str] = ""
    encoder_output_names: ClassVar[tuple[str, ...]] = ()
    expert_input_names: ClassVar[tuple[str, ...]] = ()
    expert_output_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.context_dim
        self.vision = nn.ModuleList(
            [VisionEncoder(c, cfg.vision_channels, d) for c in cfg.cameras]
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

    def _scale_router(self, router: nn.Linear) -> None:
        with torch.no_grad():
            router.weight.mul_(self.cfg.router_gain)

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()

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
        self, images: Sequence[Tensor], proprio: Tensor, actions: Tensor
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        """Encoder outputs plus ``actions`` from :meth:`act` with the default top-k."""
        out = dict(self.encode(images, proprio))
        out["actions"] = self.act(images, proprio)
        return out

    def _chunk(self, flat: Tensor) -> Tensor:
        return flat.reshape(flat.shape[0], self.cfg.chunk_length, self.cfg.action_dim)

    def _topk_weights(self, gate_logits: Tensor, k: int) -> Tensor:
        """Dense [B, E] weights: gates renormalised over the top-k (zeros elsewhere)."""
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
        """Dense [B, E] combination weights of the default top-k routing."""
        return self._topk_weights(enc["gate_logits"], k)

    def act(self, images: Sequence[Tensor], proprio: Tensor, k: int | None = None) -> Tensor:
        enc = self.encode(images, proprio)
        w = self.selection_weights(enc, k or self.cfg.top_k)
        outs = self.experts.forward_all([enc["context"]])
        return self._chunk(torch.einsum("be,ben->bn", w, outs))


class AdaMoEModel(DirectMoEModel):
    """AdaMoE: router top-k *selects*, an independent scale adapter *weights*.

    Encoder outputs: context, gate_logits = router(c), adapter_weights = sigmoid(adapter(c)).
    The chunk is sum_{i in topk(gate_logits)} adapter_i * expert_i(c) (not renormalised).
    """

    family = "adamoe"
    encoder_output_names = ("context", "gate_logits", "adapter_weights")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, e = cfg.context_dim, cfg.num_experts
        self.router = nn.Linear(d, e)
        self.adapter = mlp(d, d, e)
        self._scale_router(self.router)

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c = self.trunk_context(images, proprio)
        return {
            "context": c,
            "gate_logits": self.router(c),
            "adapter_weights": torch.sigmoid(self.adapter(c)),
        }

    def selection_weights(self, enc: dict[str, Tensor], k: int) -> Tensor:
        return enc["adapter_weights"] * L.topk_mask(enc["gate_logits"], k)

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        lb_weight: float = 0.01,
        bc: str = "l1",
    ) -> dict[str, Tensor]:
        """L = BC(y_hat, y) + lambda_lb * L_lb(router(sg(c))).

        y_hat = sum_{i in topk} a_i (1 + g_i - sg(g_i)) expert_i(c): the factor is 1 in value
        (combination = adapter weights a_i as at inference) but passes the task gradient to
        the router probabilities g (straight-through), so the router learns *which* experts
        help while the adapter learns *how much*. The load-balancing term
        (:func:`losses.load_balancing_loss`) sees a detached context, so its gradient reaches
        the router only, never the trunk, adapter or experts.
        """
        enc = self.encode(images, proprio)
        c, logits = enc["context"], enc["gate_logits"]
        k = self.cfg.top_k
        g = logits.softmax(dim=-1)
        w = enc["adapter_weights"] * L.topk_mask(logits, k) * (1.0 + g - g.detach())
        pred = self._chunk(torch.einsum("be,ben->bn", w, self.experts.forward_all([c])))
        bc_term = L.bc_loss(pred, actions, bc)  # type: ignore[arg-type]
        lb = L.load_balancing_loss(self.router(c.detach()), k)
        return {"bc": bc_term, "load_balancing": lb, "total": bc_term + lb_weight * lb}


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
        self, images: Sequence[Tensor], proprio: Tensor, actions: Tensor, bc: str = "l1"
    ) -> dict[str, Tensor]:
        """L = BC(expert(c), y)."""
        bc_term = L.bc_loss(self.act(images, proprio), actions, bc)  # type: ignore[arg-type]
        return {"bc": bc_term, "total": bc_term}


def dense_hidden_width(cfg: ModelConfig) -> int:
    """Smallest width whose one-head parameter count reaches ``top_k`` experts' count."""
    n_in, n_out, depth = cfg.context_dim, cfg.flat_action_dim, cfg.expert_depth
    target = cfg.top_k * stacked_mlp_params(n_in, cfg.expert_hidden, depth, n_out)
    h = cfg.expert_hidden
    while stacked_mlp_params(n_in, h, depth, n_out) < target:
        h += 1
    return h


class DiBMModel(DirectMoEModel):
    """Di-BM: per-expert energy networks E_i(c); gate_logits = -E(c) + learned prior."""

    family = "dibm"
    encoder_output_names = ("context", "gate_logits", "energies")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        e = cfg.num_experts
        self.energy = StackedMLP(e, [cfg.context_dim], cfg.energy_hidden, 1, 1)
        self.prior = nn.Parameter(torch.zeros(e))

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c = self.trunk_context(images, proprio)
        energies = self.energy.forward_all([c]).squeeze(-1)
        return {"context": c, "gate_logits": self.prior - energies, "energies": energies}

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        temperature: float = 0.1,
        energy_weight: float = 0.1,
        gate_weight: float = 0.1,
        energy_l2: float = 1e-3,
        bc: str = "l1",
    ) -> dict[str, Tensor]:
        """L = BC(sum_i g_i f_i(c), y) + sum_i r_i ||f_i(c) - y||^2
        + lambda_E L_nce(E, r) + lambda_g CE(r, g) + alpha mean E^2.

        r = softmax(-err / T) are the responsibilities (which expert explains the chunk best,
        no gradient). L_nce (:func:`losses.energy_nce_loss`) ties expert i's energy to the
        observations it is responsible for; CE(r, g) = -sum_i r_i log g_i trains the prior
        and energies to route there; the small energy L2 keeps energies at a usable scale
        (min energy doubles as the runtime's novelty signal).
        """
        enc = self.encode(images, proprio)
        outs = self.experts.forward_all([enc["context"]])  # [B, E, N]
        y = actions.reshape(actions.shape[0], 1, -1)
        errors = ((outs - y) ** 2).mean(dim=-1)  # [B, E]
        r = L.responsibilities(errors, temperature)
        g = enc["gate_logits"].softmax(dim=-1)
        pred = self._chunk(torch.einsum("be,ben->bn", g, outs))
        bc_term = L.bc_loss(pred, actions, bc)  # type: ignore[arg-type]
        expert = (r * errors).sum(dim=-1).mean()
        nce = L.energy_nce_loss(enc["energies"], r)
        gate = -(r * enc["gate_logits"].log_softmax(dim=-1)).sum(dim=-1).mean()
        reg = (enc["energies"] ** 2).mean()
        total = bc_term + expert + energy_weight * nce + gate_weight * gate + energy_l2 * reg
        return {
            "bc": bc_term,
            "expert": expert,
            "energy_nce": nce,
            "gate": gate,
            "energy_l2": reg,
            "total": total,
        }


class LARModel(DirectMoEModel):
    """LAR-MoE: student latent z(c) routes; context = c + W z so experts see the latent.

    The teacher encoder sees the future chunk (training only; not in the exported graphs).
    """

    family = "lar"
    encoder_output_names = ("context", "gate_logits", "latent")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, z, e = cfg.context_dim, cfg.latent_dim, cfg.num_experts
        self.student = mlp(d, d, z)
        self.teacher = mlp(d + cfg.flat_action_dim, d, z)
        self.latent_proj = nn.Linear(z, d)
        self.router = nn.Linear(z, e)
        self._scale_router(self.router)

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c0 = self.trunk_context(images, proprio)
        z = self.student(c0)
        return {"context": c0 + self.latent_proj(z), "gate_logits": self.router(z), "latent": z}

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        align_weight: float = 1.0,
        route_weight: float = 0.1,
        bc: str = "l1",
    ) -> dict[str, Tensor]:
        """L = BC_student + BC_teacher + lambda_a ||z_s - sg(z_t)||^2 + lambda_r L_route.

        Both paths decode with the same router and experts: student z_s = f_s(c), teacher
        z_t = f_t(c, y); chunk = sum_i softmax(router(z))_i expert_i(c + W z). The teacher's
        BC makes z_t an observation+action latent; the alignment term (pre-training,
        :func:`losses.latent_alignment_loss`) teaches the student to predict it; L_route
        (post-training, :func:`losses.router_latent_alignment_loss`) makes routing
        similarity follow the teacher latent's similarity across the batch.
        """
        c0 = self.trunk_context(images, proprio)
        y_flat = actions.reshape(actions.shape[0], -1)
        z_s = self.student(c0)
        z_t = self.teacher(torch.cat([c0, y_flat], dim=-1))

        def decode(z: Tensor) -> tuple[Tensor, Tensor]:
            logits = self.router(z)
            outs = self.experts.forward_all([c0 + self.latent_proj(z)])
            flat = torch.einsum("be,ben->bn", logits.softmax(dim=-1), outs)
            return self._chunk(flat), logits

        pred_s, logits_s = decode(z_s)
        pred_t, _ = decode(z_t)
        bc_s = L.bc_loss(pred_s, actions, bc)  # type: ignore[arg-type]
        bc_t = L.bc_loss(pred_t, actions, bc)  # type: ignore[arg-type]
        align = L.latent_alignment_loss(z_s, z_t)
        route = L.router_latent_alignment_loss(logits_s, z_t)
        total = bc_s + bc_t + align_weight * align + route_weight * route
        return {
            "bc": bc_s,
            "bc_teacher": bc_t,
            "latent_align": align,
            "router_align": route,
            "total": total,
        }


# =========================================================================== flow family


class SMPModel(MoEModel):
    """SMP: flow-matching experts over a state-dependent orthonormal skill basis.

    basis(c) [B, E, N, R] has orthonormal columns across all experts (N = H*A): a learned base
    matrix plus a softmax-mixture of M learned directions, orthonormalised by
    :func:`layers.gram_schmidt`. Expert i is a velocity field v_i(x_t, t, c) on skill i's R
    coefficients; chunk = sum_j w_j basis_j @ x_j after integrating x from noise (t=0) to data
    (t=1).
    """

    family = "smp"
    encoder_output_names = ("context", "gate_logits", "basis")
    expert_input_names = ("context", "expert_idx", "x_t", "t")
    expert_output_names = ("velocity",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, e, r, n = cfg.context_dim, cfg.num_experts, cfg.rank, cfg.flat_action_dim
        m = cfg.basis_mixtures
        self.router = nn.Linear(d, e)
        self.basis_mix = nn.Linear(d, m)
        self._scale_router(self.router)
        self.basis_base = nn.Parameter(torch.randn(n, e * r) / n**0.5)
        self.basis_dirs = nn.Parameter(torch.randn(m, n * e * r) * (0.5 / n**0.5))
        self.time_embed = TimeEmbedding(cfg.time_dim)
        self.denoiser = StackedMLP(e, [d, r, cfg.time_dim], cfg.expert_hidden, cfg.expert_depth, r)

    @property
    def expert_module(self) -> nn.Module:
        return FlowExpertStage(self)

    def basis(self, c: Tensor) -> Tensor:
        cfg = self.cfg
        e, r, n = cfg.num_experts, cfg.rank, cfg.flat_action_dim
        mix = self.basis_mix(c).softmax(dim=-1)
        m = self.basis_base.unsqueeze(0) + torch.matmul(mix, self.basis_dirs).reshape(-1, n, e * r)
        q = gram_schmidt(m)  # [B, N, E*R]
        return q.reshape(-1, n, e, r).permute(0, 2, 1, 3)

    def encode(self, images: Sequence[Tensor], proprio: Tensor) -> dict[str, Tensor]:
        c = self.trunk_context(images, proprio)
        return {"context": c, "gate_logits": self.router(c), "basis": self.basis(c)}

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
        x = torch.randn(b, e, r, generator=generator, dtype=c.dtype)
        dt = 1.0 / steps
        for s in range(steps):
            t = torch.full((b,), s * dt, dtype=c.dtype)
            x = x + dt * self.velocity_all(c, x, t)
        w = self._topk_weights(enc["gate_logits"], k or self.cfg.top_k)
        flat = torch.einsum("be,benr,ber->bn", w, enc["basis"], x)
        return self._chunk(flat)

    def loss(
        self,
        images: Sequence[Tensor],
        proprio: Tensor,
        actions: Tensor,
        sigma2: float = 0.05,
        kl_weight: float = 0.1,
        ortho_weight: float = 1.0,
        bc: str = "mse",
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Negative ELBO with flow-matching experts + basis orthogonality.

        Skill i's target coefficients are the projection x1_i = B_i(c)^T y (no gradient in the
        flow target). The posterior q (:func:`losses.skill_posterior`) weighs skills by how
        well B_i B_i^T y reconstructs y. Terms: L_fm (:func:`losses.flow_matching_loss`, q
        weighted), BC = sum_i q_i ||B_i x1_hat_i - y||^2 with the one-step data estimate
        x1_hat = x_t + (1 - t) v (trains basis and denoisers on the chunk), KL(q || g)
        (:func:`losses.gate_kl`) and :func:`losses.orthogonality_loss`.
        """
        enc = self.encode(images, proprio)
        c, basis = enc["context"], enc["basis"]
        b = c.shape[0]
        y = actions.reshape(b, -1)
        x1 = torch.einsum("benr,bn->ber", basis, y)
        recon = torch.einsum("benr,ber->ben", basis, x1)
        errors = ((recon - y.unsqueeze(1)) ** 2).mean(dim=-1)
        q = L.skill_posterior(enc["gate_logits"], errors, sigma2)
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
        t = torch.rand((b,), generator=generator, dtype=x1.dtype)
        tt = t.view(b, 1, 1)
        x1d = x1.detach()
        x_t = (1.0 - tt) * x0 + tt * x1d
        v = self.velocity_all(c, x_t, t)
        fm = L.flow_matching_loss(v, x1d - x0, q)
        x1_hat = x_t + (1.0 - tt) * v
        chunk_i = torch.einsum("benr,ber->ben", basis, x1_hat)
        if bc == "l1":
            per = (chunk_i - y.unsqueeze(1)).abs().mean(dim=-1)
        else:
            per = ((chunk_i - y.unsqueeze(1)) ** 2).mean(dim=-1)
        bc_term = (q * per).sum(dim=-1).mean()
        kl = L.gate_kl(q, enc["gate_logits"])
        ortho = L.orthogonality_loss(basis)
        total = fm + bc_term + kl_weight * kl + ortho_weight * ortho
        return {
            "flow_matching": fm,
            "bc": bc_term,
            "gate_kl": kl,
            "orthogonality": ortho,
            "total": total,
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
