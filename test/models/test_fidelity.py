"""The four seed methods as their papers train them, and the runtime composing what they train.

Each test shows the behaviour a fidelity change exists for (docs/architecture.md, "What each
family trains and composes"): SMP keeps a one-skill chunk at full length with two skills
active and predicts its basis as a full state-dependent matrix; LAR-MoE trains in two stages
with the latent frozen in the second and routes with the bundle's top-k; AdaMoE weights a
selected expert by router probability + adapter output (or the named variant), the same in
training and in the runtime; Di-BM trains each expert on the observations its energy claims
and calibrates its energies over the training set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.tiny_models import TINY
from torch import Tensor, nn

from moe_policy_ros.core.backends import make_backend
from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.core.routing import make_strategy, softmax
from moe_policy_ros.core.runtime import MoEPolicy, compose_skills, synthetic_observation
from moe_policy_ros.core.types import RouterOutputs
from moe_policy_ros.models import export_bundle, load_checkpoint, save_checkpoint
from moe_policy_ros.models import losses as L
from moe_policy_ros.models.config import ModelConfig
from moe_policy_ros.models.export import default_routing
from moe_policy_ros.models.families import (
    AdaMoEModel,
    DiBMModel,
    LARModel,
    MoEModel,
    SMPModel,
)
from moe_policy_ros.tools.inspect import bundle_summary

B = 6
E, R, H, A, D = TINY["num_experts"], TINY["rank"], TINY["chunk_length"], 14, TINY["context_dim"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ort() -> Any:
    return make_backend("onnxruntime", intra_op_threads=1)


def batch(seed: int = 1) -> tuple[list[Tensor], Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        [torch.randn(B, 3, 24, 32, generator=g)],
        torch.randn(B, 14, generator=g),
        torch.randn(B, H, A, generator=g),
    )


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model: nn.Module, before: dict[str, Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def _obs_tensors(obs: Any) -> tuple[list[Tensor], Tensor]:
    """A synthetic observation normalised as the runtime does for exported defaults
    (images mean/std 0.5, proprio mean 0 / std 1)."""
    img = (obs.images["top"].astype(np.float32) / 255.0 - 0.5) / 0.5
    return (
        [torch.from_numpy(img.transpose(2, 0, 1)[None].copy())],
        torch.from_numpy(np.asarray(obs.proprio, np.float32)[None]),
    )


# =========================================================================== SMP


def test_smp_one_skill_chunk_keeps_full_length_with_two_skills_active(
    tiny_model: Callable[..., MoEModel]
) -> None:
    model = tiny_model("smp").eval()
    assert isinstance(model, SMPModel) and model.combination == "unit"
    imgs, prop, _ = batch()
    with torch.no_grad():
        # gates ~0.73 / 0.27 on skills 1 and 2: the bundle's default gate-mass routing
        # (tau 0.8) activates both for every observation
        model.router.weight.zero_()
        model.router.bias.copy_(torch.tensor([0.0, 5.0, 4.0, 0.0]))
        enc = model.encode(imgs, prop)
        basis, logits = enc["basis"], enc["gate_logits"]
        u = torch.randn(B, R, generator=torch.Generator().manual_seed(3))
        y = torch.einsum("bnr,br->bn", basis[:, 1], u)  # lies in skill 1's subspace
        coeffs = model.coefficients(basis, y)  # exact coefficients of every skill
        mask = model.selection_weights(logits)
        assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0]] * B
        torch.testing.assert_close(model.compose(basis, coeffs, mask), y, atol=1e-5, rtol=0)
        # training optimises that composition: its reconstruction term is exactly zero here
        terms = model.loss(imgs, prop, y.reshape(B, H, A))
        assert float(terms["recon"]) < 1e-10

    # the runtime weights and composes the same way (routing from the manifest's combination)
    routing = default_routing("smp", 2, model.cfg.route_tau)
    dec = make_strategy(routing, E, model.combination).select(  # type: ignore[arg-type]
        RouterOutputs(gate_logits=logits[0].numpy())
    )
    assert dec.active.tolist() == [1, 2] and dec.weights.tolist() == [1.0, 1.0]
    b0, c0, y0 = basis[0].numpy(), coeffs[0].numpy(), y[0].numpy()
    flat = compose_skills(b0, dec.active, dec.weights, c0[dec.active])
    np.testing.assert_allclose(flat, y0, atol=1e-5)
    # the earlier composition (gates renormalised to sum 1) shortens the same chunk
    old = make_strategy(routing, E, "gates").select(RouterOutputs(gate_logits=logits[0].numpy()))
    short = compose_skills(b0, old.active, old.weights, c0[old.active])
    ratio = np.linalg.norm(short) / np.linalg.norm(y0)
    assert ratio == pytest.approx(float(old.weights[0]), rel=1e-4) and ratio < 0.8


def test_smp_trains_with_the_active_set_the_bundle_default_routing_picks() -> None:
    """``losses.mass_mask`` (training) picks what ``MassRouting`` (runtime) picks."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(300, 6, generator=g) * torch.rand(300, 1, generator=g) * 4.0
    logits[:5] = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, -1.0])  # ties: lower index first
    for tau in (0.3, 0.8, 1.0):
        mask = L.mass_mask(logits, tau)
        strategy = make_strategy(default_routing("smp", 2, tau), 6, "unit")
        for row, m in zip(logits, mask, strict=True):
            strategy.reset()
            active = strategy.select(RouterOutputs(gate_logits=row.numpy())).active
            assert np.flatnonzero(m.numpy()).tolist() == active.tolist()


def test_smp_basis_is_a_full_state_dependent_matrix_orthonormalised(
    tiny_model: Callable[..., MoEModel]
) -> None:
    model = tiny_model("smp")
    assert isinstance(model, SMPModel)
    n = H * A
    assert (model.basis_head.in_features, model.basis_head.out_features) == (D, n * E * R)
    c = torch.randn(16, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        w = model.basis_matrix(c)  # [16, N, E*R] before orthonormalising
        q = model.basis(c).permute(0, 2, 1, 3).reshape(16, n, E * R) / model.cfg.skill_scale
    # a mixture of M fixed directions would span at most M - 1 dimensions around its mean;
    # the predicted matrix moves in as many directions as the contexts do (15 here)
    flat = w.reshape(16, -1)
    assert int(torch.linalg.matrix_rank(flat - flat.mean(0))) == 15
    eye = torch.eye(E * R).expand(16, -1, -1)
    torch.testing.assert_close(q.transpose(1, 2) @ q, eye, atol=1e-5, rtol=0)
    r = q.transpose(1, 2) @ w  # W = Q R with R upper triangular: QR's Q (up to signs)
    torch.testing.assert_close(torch.tril(r, -1), torch.zeros_like(r), atol=1e-4, rtol=0)
    # different states, different skill subspaces
    p0, p1 = q[0, :, :R] @ q[0, :, :R].T, q[1, :, :R] @ q[1, :, :R].T
    assert float((p0 - p1).norm()) > 0.1


# =========================================================================== LAR-MoE

LATENT = {"vision", "proprio_encoder", "trunk", "student", "teacher", "latent_decoder"}
POLICY = {"router", "latent_proj", "experts"}


def _sgd_steps(model: MoEModel, phase: str, steps: int = 2) -> set[str]:
    imgs, prop, y = batch()
    model.begin_phase(phase)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    before = _params(model)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(imgs, prop, y, phase=phase)["loss"].backward()
        opt.step()
    return _changed(model, before)


def test_lar_trains_the_latent_first_then_the_policy_with_the_latent_frozen(
    tiny_model: Callable[..., MoEModel]
) -> None:
    model = tiny_model("lar")
    assert isinstance(model, LARModel)
    assert model.training_phases() == ("latent", "policy")
    assert model.phase_fractions() == pytest.approx((0.3, 0.7))
    model.begin_phase("latent")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert _top(trainable) == LATENT
    assert _top(_sgd_steps(model, "latent")) == LATENT
    model.begin_phase("policy")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert _top(trainable) == POLICY
    # stage 2 leaves the latent bit for bit as stage 1 left it
    assert _top(_sgd_steps(model, "policy")) == POLICY
    imgs, prop, y = batch()
    with pytest.raises(ValueError, match=r"phases \('latent', 'policy'\)"):
        model.loss(imgs, prop, y)  # phase "main" is not a LAR-MoE phase


def test_lar_policy_stage_routes_with_the_bundle_default_top_k(
    tiny_model: Callable[..., MoEModel]
) -> None:
    model = tiny_model("lar")
    assert isinstance(model, LARModel)
    k = model.cfg.top_k
    assert default_routing("lar", k).strategy == "topk" and default_routing("lar", k).k == k
    with torch.no_grad():  # experts 0 and 1 lead for every observation
        model.router.weight.zero_()
        model.router.bias.copy_(torch.tensor([3.0, 2.0, -3.0, -3.0]))
    imgs, prop, y = batch()
    model.begin_phase("policy")
    terms = model.loss(imgs, prop, y, phase="policy")
    # the trained chunk is the one act() (the runtime's default routing) produces
    torch.testing.assert_close(terms["bc"], L.bc_loss(model.act(imgs, prop), y))
    terms["bc"].backward()
    grad = model.experts.w_out.grad
    assert grad is not None
    # dense softmax decoding would train every expert; top-2 leaves 2 and 3 untouched
    assert float(grad[:2].abs().sum()) > 0 and float(grad[2:].abs().sum()) == 0.0


# =========================================================================== AdaMoE


@pytest.mark.parametrize("weighting", ["router_plus_adapter", "adapter_sigmoid"])
def test_adamoe_runtime_weights_and_composes_as_training(
    weighting: str, tiny_model: Callable[..., MoEModel]
) -> None:
    model = tiny_model("adamoe", adamoe_weighting=weighting).eval()
    assert isinstance(model, AdaMoEModel)
    with torch.no_grad():  # a trained adapter: nonzero outputs
        last = model.adapter[-1]
        assert isinstance(last, nn.Linear)
        last.weight.normal_(0.0, 0.3)
    imgs, prop, y = batch()
    with torch.no_grad():
        enc = model.encode(imgs, prop)
        acts = model.act(imgs, prop)
    strategy = make_strategy(default_routing("adamoe", 2), E, model.combination)  # type: ignore
    for b in range(B):
        logits = enc["gate_logits"][b].numpy()
        adapter = enc["adapter_weights"][b].numpy()
        dec = strategy.select(RouterOutputs(gate_logits=logits, adapter_weights=adapter))
        want = adapter[dec.active]
        if weighting == "router_plus_adapter":
            want = softmax(logits)[dec.active] + want  # router probability + adapter output
        np.testing.assert_allclose(dec.weights, want, rtol=1e-6)
        with torch.no_grad():
            idx, w = torch.from_numpy(dec.active), torch.from_numpy(dec.weights)
            ref = model.expert_forward(enc["context"][b : b + 1], idx, w)
        torch.testing.assert_close(acts[b : b + 1], ref, atol=1e-5, rtol=1e-5)
    terms = model.loss(imgs, prop, y)
    torch.testing.assert_close(terms["bc"], L.bc_loss(acts, y), atol=1e-6, rtol=1e-5)


def test_adamoe_released_weighting_losses(tiny_model: Callable[..., MoEModel]) -> None:
    model = tiny_model("adamoe")
    assert isinstance(model, AdaMoEModel) and model.combination == "router_plus_adapter"
    imgs, prop, y = batch()
    enc = model.encode(imgs, prop)
    # the adapter starts at zero: training starts from plain router probabilities
    assert float(enc["adapter_weights"].detach().abs().max()) == 0.0
    terms = model.loss(imgs, prop, y)
    assert set(terms) == {"loss", "bc", "load_balancing", "router_z"}
    z = (torch.logsumexp(enc["gate_logits"], dim=-1) ** 2).mean()
    torch.testing.assert_close(terms["router_z"], z)

    def grads(term: str) -> set[str]:
        model.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        return _top({n for n, p in model.named_parameters()
                     if p.grad is not None and float(p.grad.abs().sum()) > 0})

    # balancing and z-loss act on the router logits, through the trunk (not detached)
    assert grads("load_balancing") == {"router", "vision", "proprio_encoder", "trunk"}
    assert grads("router_z") == {"router", "vision", "proprio_encoder", "trunk"}
    assert {"router", "adapter", "experts"} <= grads("bc")


def test_adamoe_checkpoint_from_before_the_option_keeps_its_weighting(
    tmp_path: Path, tiny_model: Callable[..., MoEModel]
) -> None:
    model = tiny_model("adamoe", adamoe_weighting="adapter_sigmoid")
    path = save_checkpoint(model, tmp_path / "a.pt")
    raw = torch.load(path, weights_only=True)
    del raw["config"]["adamoe_weighting"]
    torch.save(raw, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(old, AdaMoEModel) and old.combination == "adapter"
    assert load_checkpoint(path).combination == "adapter"


def test_adamoe_variant_is_recorded_and_served_by_the_runtime(
    tmp_path: Path, ort: Any, tiny_model: Callable[..., MoEModel]
) -> None:
    for weighting, combination in (("adapter_sigmoid", "adapter"),
                                   ("router_plus_adapter", "router_plus_adapter")):
        model = tiny_model("adamoe", adamoe_weighting=weighting).eval()
        with torch.no_grad():
            model.adapter[-1].weight.normal_(0.0, 0.3)  # type: ignore[operator]
        export_bundle(model, tmp_path / weighting, name=weighting, parity_trials=1)
        b = load_bundle(tmp_path / weighting)
        assert b.manifest.combination == combination
        pol = MoEPolicy(b, ort)
        obs = synthetic_observation(b.manifest, seed=4)
        out = pol.infer(obs)
        with torch.no_grad():
            ref = model.act(*_obs_tensors(obs))[0].double().numpy()
        np.testing.assert_allclose(out.actions, ref, atol=2e-4, rtol=1e-4)


# =========================================================================== Di-BM


def test_dibm_expert_trains_on_the_observations_its_energy_claims(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Callable[..., MoEModel],
) -> None:
    model = tiny_model("dibm")
    assert isinstance(model, DiBMModel)
    imgs, prop, y = batch()
    # expert 0's energy claims observations 0-2, expert 1's claims 3-5
    energies = torch.full((B, E), 8.0)
    energies[:3, 0] = 0.0
    energies[3:, 1] = 0.0
    monkeypatch.setattr(model, "raw_energies", lambda c: energies + 0.0 * c[:, :1])

    def expert_grad(actions: Tensor) -> Tensor:
        model.zero_grad(set_to_none=True)
        model.loss(imgs, prop, actions)["expert"].backward()
        g = model.experts.w_out.grad
        assert g is not None
        return g.clone()

    g = expert_grad(y)
    y2 = y.clone()
    y2[3:] += 5.0  # new targets only for the observations expert 1 claims
    g2 = expert_grad(y2)
    rel = [float((g2[i] - g[i]).norm() / g[i].norm()) for i in range(2)]
    assert rel[0] < 1e-2  # expert 0 weighs them by e^-8: it barely notices
    assert rel[1] > 1.0  # expert 1 trains on them


def test_dibm_curriculum_entropy_term(tiny_model: Callable[..., MoEModel]) -> None:
    assert float(L.curriculum_entropy(torch.zeros(B, E))) == pytest.approx(math.log(B))
    peaked = torch.full((B, E), 20.0)
    peaked[0] = 0.0
    assert float(L.curriculum_entropy(peaked)) < 1e-6
    model = tiny_model("dibm")
    imgs, prop, y = batch()
    terms = model.loss(imgs, prop, y)
    assert 0.0 < float(terms["curriculum_entropy"].detach()) <= math.log(B) + 1e-6
    terms["curriculum_entropy"].backward()
    assert float(model.energy.w_out.grad.abs().sum()) > 0  # type: ignore[union-attr]


def test_dibm_calibration_normalises_energies_and_travels_to_the_bundle(
    tmp_path: Path, ort: Any, tiny_model: Callable[..., MoEModel]
) -> None:
    model = tiny_model("dibm").eval()
    assert isinstance(model, DiBMModel) and not model.calibrated
    batches = [batch(seed) for seed in (1, 2, 3)]
    with torch.no_grad():
        gates_before = model.encode(*batches[0][:2])["gate_logits"]
    export_bundle(model, tmp_path / "raw", name="raw", parity_trials=1)
    assert read_manifest(tmp_path / "raw").novelty is None  # uncalibrated: no range recorded

    stats = model.calibrate(batches)
    assert model.calibrated and stats["samples"] == 3 * B
    with torch.no_grad():
        energies = torch.cat([model.encode(i, p)["energies"] for i, p, _ in batches]).double()
        gates_after = model.encode(*batches[0][:2])["gate_logits"]
    torch.testing.assert_close(gates_after, gates_before)  # calibration never changes routing
    # each expert's energy normalised over the training set: mean_n exp(-E_i(c_n)) = 1
    torch.testing.assert_close(torch.exp(-energies).mean(0), torch.ones(E, dtype=torch.float64),
                               atol=1e-4, rtol=1e-4)
    novelty = energies.min(dim=1).values
    assert stats["novelty_min"] == pytest.approx(float(novelty.min()), abs=1e-5)
    assert stats["novelty_max"] == pytest.approx(float(novelty.max()), abs=1e-5)
    assert stats["novelty_min"] <= stats["novelty_p50"] <= stats["novelty_p99"]

    export_bundle(model, tmp_path / "cal", name="cal", parity_trials=1)
    m = read_manifest(tmp_path / "cal")
    assert m.novelty is not None and m.novelty.samples == 3 * B
    assert m.novelty.p99 == pytest.approx(stats["novelty_p99"], abs=1e-6)
    assert m.novelty.max == pytest.approx(stats["novelty_max"], abs=1e-6)
    assert m.novelty.energy_offsets == pytest.approx(
        [stats[f"energy_offset_{i}"] for i in range(E)], abs=1e-6
    )
    summary = bundle_summary(load_bundle(tmp_path / "cal"))
    assert summary["novelty"]["p99"] == m.novelty.p99 and summary["combination"] == "gates"
    # the runtime reports the calibrated energies (what the OOD threshold compares with)
    obs = synthetic_observation(m, seed=2)
    out = MoEPolicy(load_bundle(tmp_path / "cal"), ort).infer(obs)
    with torch.no_grad():
        want = model.encode(*_obs_tensors(obs))["energies"][0].numpy()
    assert out.decision.state.energies is not None
    np.testing.assert_allclose(out.decision.state.energies, want, atol=1e-4)

    # checkpoints keep the calibration; one written before it existed loads uncalibrated
    path = save_checkpoint(model, tmp_path / "dibm.pt")
    loaded = load_checkpoint(path)
    assert isinstance(loaded, DiBMModel) and loaded.calibrated
    torch.testing.assert_close(loaded.energy_offset, model.energy_offset)
    raw = torch.load(path, weights_only=True)
    for key in ("energy_offset", "novelty_range", "calibration_samples"):
        del raw["state_dict"][key]
    torch.save(raw, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(old, DiBMModel) and not old.calibrated
    with pytest.raises(ValueError, match="no batches"):
        model.calibrate([])


def test_hooks_default_on_every_family(tiny_model: Callable[..., MoEModel]) -> None:
    for family in ("adamoe", "smp", "dibm", "dense"):
        model = tiny_model(family)
        assert model.training_phases() == ("main",) and model.phase_fractions() == (1.0,)
        model.begin_phase("main")
        if family != "dibm":
            assert model.calibrate([batch()]) == {}
        with pytest.raises(ValueError, match="unknown training phase 'latent'"):
            model.begin_phase("latent")


def test_smp_coefficients_of_a_normalised_chunk_have_the_noise_scale(
    tiny_model: Callable[..., MoEModel]
) -> None:
    """The flow starts from N(0, 1) noise; the basis is s * Q with s = sqrt(H*A / R), so a
    chunk of unit-variance actions lying in one skill's span has unit-variance coefficients
    (with an orthonormal basis they were sqrt(H*A / R) times larger), and composing them
    gives the chunk back."""
    model = tiny_model("smp").eval()
    assert isinstance(model, SMPModel)
    s = model.cfg.skill_scale
    assert s == pytest.approx(math.sqrt(H * A / R))
    imgs, prop, _ = batch()
    with torch.no_grad():
        basis = model.encode(imgs, prop)["basis"]  # [B, E, N, R]
        lengths = basis.norm(dim=2)  # every column has length s
        torch.testing.assert_close(lengths, torch.full_like(lengths, s), atol=1e-4, rtol=0)
        q1 = basis[:, 1] / s  # skill 1's orthonormal columns
        g = torch.Generator().manual_seed(4)
        y = torch.einsum("bnr,br->bn", q1, torch.randn(B, R, generator=g)) * s
        y = y / y.std(dim=1, keepdim=True)  # a unit-variance chunk in skill 1's span
        x = model.coefficients(basis, y)
        assert float(x[:, 1].pow(2).mean()) == pytest.approx(1.0, rel=0.05)
        one = torch.zeros(B, E)
        one[:, 1] = 1.0
        torch.testing.assert_close(model.compose(basis, x, one), y, atol=1e-4, rtol=0)
    old = ModelConfig.from_saved({"family": "smp"})  # a checkpoint from before the field
    assert old.skill_scale == 1.0
