"""Reference models and losses: shapes, finiteness, and where each gradient lands."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import torch
from torch import Tensor, nn

from moe_policy_ros.models import losses as L
from moe_policy_ros.models.config import FAMILIES, ModelConfig
from moe_policy_ros.models.families import (
    AdaMoEModel,
    DenseModel,
    DiBMModel,
    LARModel,
    MoEModel,
    SMPModel,
)
from moe_policy_ros.models.layers import StackedMLP, gram_schmidt, stacked_mlp_params

B = 6


def batch() -> tuple[list[Tensor], Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        [torch.randn(B, 3, 24, 32, generator=g)],
        torch.randn(B, 14, generator=g),
        torch.randn(B, 4, 14, generator=g),
    )


def grads_of(params: Iterable[nn.Parameter]) -> list[Tensor | None]:
    return [p.grad for p in params]


def touched(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def untouched(module: nn.Module) -> bool:
    return all(p.grad is None or p.grad.abs().sum() == 0 for p in module.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shapes_and_total_loss(family: str, tiny_model: Callable[..., MoEModel]) -> None:
    model = tiny_model(family)
    imgs, prop, y = batch()
    out = model(imgs, prop)
    e = model.cfg.num_experts
    assert out["actions"].shape == (B, 4, 14) and out["context"].shape == (B, 32)
    assert out["gate_logits"].shape == (B, e)
    assert len(model.training_phases()) == len(model.phase_fractions())
    assert sum(model.phase_fractions()) == pytest.approx(1.0)
    for phase in model.training_phases():
        model.begin_phase(phase)
        terms = model.loss(imgs, prop, y, phase=phase)
        assert "loss" in terms
        for name, v in terms.items():
            assert v.shape == () and torch.isfinite(v), name
        terms["loss"].backward()
    assert touched(model.trunk) and touched(model.vision)
    with pytest.raises(ValueError, match="unknown training phase 'bogus'"):
        model.loss(imgs, prop, y, phase="bogus")


def test_forward_selected_matches_forward_all() -> None:
    torch.manual_seed(0)
    mlp = StackedMLP(5, [6, 3], 8, 3, 7)
    a, b = torch.randn(1, 6), torch.randn(5, 3)
    all_out = mlp.forward_all([a, b.unsqueeze(0)])[0]
    idx = torch.tensor([0, 2, 4])
    sel = mlp.forward_selected([a, b[idx]], idx)
    torch.testing.assert_close(sel, all_out[idx], atol=1e-5, rtol=1e-5)


def test_gram_schmidt_orthonormal_and_differentiable() -> None:
    m = torch.randn(3, 40, 12, requires_grad=True)
    q = gram_schmidt(m)
    eye = torch.eye(12).expand(3, 12, 12)
    torch.testing.assert_close(q.transpose(1, 2) @ q, eye, atol=1e-5, rtol=0)
    # same nested column spaces as QR: Q R = M with R upper triangular
    r = q.transpose(1, 2) @ m
    torch.testing.assert_close(torch.tril(r, -1), torch.zeros_like(r), atol=1e-4, rtol=0)
    q.sum().backward()
    assert m.grad is not None and torch.isfinite(m.grad).all()


def test_smp_basis_orthonormal_and_losses(tiny_model: Callable[..., MoEModel]) -> None:
    model = tiny_model("smp")
    assert isinstance(model, SMPModel)
    imgs, prop, y = batch()
    basis = model.encode(imgs, prop)["basis"]
    assert basis.shape == (B, 4, 56, 2)
    assert float(L.orthogonality_loss(basis.detach() / model.cfg.skill_scale)) < 1e-8
    terms = model.loss(imgs, prop, y)
    assert set(terms) == {"loss", "flow_matching", "bc", "recon", "gate_kl", "orthogonality"}
    terms["flow_matching"].backward(retain_graph=True)
    assert touched(model.denoiser) and untouched(model.router)
    model.zero_grad(set_to_none=True)
    terms["gate_kl"].backward(retain_graph=True)
    assert touched(model.router) and untouched(model.denoiser)
    model.zero_grad(set_to_none=True)
    terms["recon"].backward(retain_graph=True)
    assert touched(model.basis_head) and untouched(model.denoiser) and untouched(model.router)
    model.zero_grad(set_to_none=True)
    terms["bc"].backward()
    assert touched(model.basis_head) and touched(model.denoiser)
    assert model.basis_bias.grad is not None


def test_adamoe_variant_lb_loss_touches_router_only(tiny_model: Callable[..., MoEModel]) -> None:
    """The adapter_sigmoid variant detaches the balancing loss from everything but the router."""
    model = tiny_model("adamoe", adamoe_weighting="adapter_sigmoid")
    assert isinstance(model, AdaMoEModel) and model.combination == "adapter"
    imgs, prop, y = batch()
    terms = model.loss(imgs, prop, y)
    assert set(terms) == {"loss", "bc", "load_balancing"}
    terms["load_balancing"].backward(retain_graph=True)
    assert touched(model.router)
    for m in (model.adapter, model.experts, model.trunk, model.vision, model.proprio_encoder):
        assert untouched(m)
    model.zero_grad(set_to_none=True)
    terms["bc"].backward()  # task gradient: adapter, experts, and router (straight-through)
    assert touched(model.adapter) and touched(model.experts) and touched(model.router)


def test_load_balancing_loss_values() -> None:
    assert float(L.load_balancing_loss(torch.zeros(8, 4), 2)) == pytest.approx(1.0)
    collapsed = torch.tensor([[10.0, 9.0, -10.0, -10.0]]).repeat(8, 1)
    assert float(L.load_balancing_loss(collapsed, 2)) == pytest.approx(2.0, rel=1e-3)


def test_dibm_energy_loss_ties_energies(tiny_model: Callable[..., MoEModel]) -> None:
    model = tiny_model("dibm")
    assert isinstance(model, DiBMModel)
    imgs, prop, y = batch()
    terms = model.loss(imgs, prop, y)
    terms["energy_nce"].backward(retain_graph=True)
    assert touched(model.energy) and untouched(model.experts)
    model.zero_grad(set_to_none=True)
    terms["gate"].backward()
    assert model.prior.grad is not None and model.prior.grad.abs().sum() > 0
    # the NCE loss is lowest when each expert's energy is low exactly on its own samples
    resp = torch.eye(4).repeat(2, 1)  # sample b belongs to expert b % 4
    good = L.energy_nce_loss(10.0 * (1 - resp), resp)
    bad = L.energy_nce_loss(10.0 * resp, resp)
    assert float(good) < float(bad)


def test_lar_alignment_losses(tiny_model: Callable[..., MoEModel]) -> None:
    model = tiny_model("lar")
    assert isinstance(model, LARModel)
    imgs, prop, y = batch()
    terms = model.loss(imgs, prop, y, phase="latent")
    terms["latent_align"].backward(retain_graph=True)
    assert touched(model.student) and untouched(model.teacher)
    model.zero_grad(set_to_none=True)
    terms["teacher_commit"].backward(retain_graph=True)
    assert touched(model.teacher) and untouched(model.student)
    model.zero_grad(set_to_none=True)
    terms["recon_teacher"].backward()
    assert touched(model.teacher) and touched(model.latent_decoder)
    model.zero_grad(set_to_none=True)
    terms = model.loss(imgs, prop, y, phase="policy")
    terms["router_align"].backward()
    assert touched(model.router) and untouched(model.teacher) and untouched(model.student)
    # routing similarity that follows latent similarity scores lower
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    follows = torch.tensor([[9.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    against = torch.tensor([[9.0, 0.0], [0.0, 9.0], [9.0, 0.0]])
    assert float(L.router_latent_alignment_loss(follows, z)) < float(
        L.router_latent_alignment_loss(against, z)
    )


def test_dense_matches_active_parameter_count(tiny_model: Callable[..., MoEModel]) -> None:
    model = tiny_model("dense")
    assert isinstance(model, DenseModel)
    cfg = model.cfg
    assert cfg.num_experts == 1
    per_expert = stacked_mlp_params(cfg.context_dim, cfg.expert_hidden, 1, cfg.flat_action_dim)
    dense = sum(p.numel() for p in model.experts.parameters())
    assert cfg.top_k * per_expert <= dense < cfg.top_k * per_expert + 2 * cfg.flat_action_dim


def test_bc_loss_kinds_and_config_errors() -> None:
    a, b = torch.zeros(2, 3), torch.ones(2, 3) * 2
    assert float(L.bc_loss(a, b, "l1")) == 2.0 and float(L.bc_loss(a, b, "mse")) == 4.0
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"family": "adamoe", "bogus": 1})
    with pytest.raises(ValueError, match="do not fit"):
        ModelConfig.from_dict({"family": "smp", "chunk_length": 1, "rank": 4})
    with pytest.raises(ValueError, match="top_k"):
        ModelConfig.from_dict({"family": "adamoe", "num_experts": 2, "top_k": 3})
    with pytest.raises(ValueError, match="adamoe_weighting must be one of"):
        ModelConfig.from_dict({"family": "adamoe", "adamoe_weighting": "sum"})
    # configs of the earlier model version: the mixture-basis key is ignored, except for smp
    assert ModelConfig.from_dict({"family": "dibm", "basis_mixtures": 4}).family == "dibm"
    with pytest.raises(ValueError, match="re-train"):
        ModelConfig.from_dict({"family": "smp", "basis_mixtures": 4})
