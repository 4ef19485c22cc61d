"""Real-time chunking (core/rtc.py) on real ONNX Runtime: the paper's soft mask and guidance
weight, the finite-difference VJP against torch autograd, the frozen prefix honoured by the
guided sampler, and the seam between chunks through the scheduler against replace/blend."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from moe_policy_ros.core.backends import make_backend
from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.config import ExecutionConfig, RoutingConfig
from moe_policy_ros.core.rtc import (
    RtcGuidance,
    check_block_diagonal,
    fd_vjp,
    guidance_for,
    guidance_weight,
    guided_flow_sample,
    soft_mask,
)
from moe_policy_ros.core.runtime import MoEPolicy, synthetic_observation
from moe_policy_ros.core.scheduler import ChunkScheduler, DelayEstimator
from moe_policy_ros.models.export import export_bundle
from moe_policy_ros.models.families import SMPModel, build_model

REPO = Path(__file__).resolve().parents[2]
# H * A = 12 = E * R: with all three skills active the basis spans every chunk, so a shifted
# committed chunk is reachable and the test measures the guidance, not the subspace.
SMP_FULL_SPAN: dict[str, Any] = {
    "family": "smp",
    "num_experts": 3,
    "rank": 4,
    "chunk_length": 6,
    "action_dim": 2,
    "proprio_dim": 2,
    "sampler_steps": 10,
    "cameras": [{"name": "top", "height": 24, "width": 32}],
    "context_dim": 32,
    "expert_hidden": 32,
    "trunk_layers": 1,
    "trunk_heads": 2,
    "vision_channels": 4,
}


@pytest.fixture(scope="module")
def smp(tmp_path_factory: pytest.TempPathFactory) -> tuple[SMPModel, MoEPolicy]:
    torch.manual_seed(0)
    model = build_model(SMP_FULL_SPAN)
    assert isinstance(model, SMPModel)
    out = tmp_path_factory.mktemp("smp_full")
    export_bundle(model, out, name="smp_full", routing=RoutingConfig(strategy="dense", k=3))
    policy = MoEPolicy(load_bundle(out), make_backend("onnxruntime", intra_op_threads=1))
    return model, policy


def test_soft_mask_is_the_papers() -> None:
    h, d, s = 20, 3, 5
    w = soft_mask(h, d, s, known=20)
    assert np.all(w[:d] == 1.0)
    assert np.all(w[h - s :] == 0.0)
    for i in range(d, h - s):
        c = (h - s - i) / (h - s - d + 1)
        assert w[i] == pytest.approx(c * (math.exp(c) - 1) / (math.e - 1))
    assert np.all(np.diff(w[d : h - s]) < 0) and 0 < w[h - s - 1] < w[d] < 1
    # fewer committed rows than H - s: the overlap ends where they end
    w8 = soft_mask(h, d, s, known=8)
    assert np.all(w8[8:] == 0.0) and np.all(w8[:d] == 1.0) and w8[7] > 0
    # d beyond the known rows is capped; nothing known = no guidance
    assert np.all(soft_mask(h, 10, s, known=4)[:4] == 1.0)
    assert not np.any(soft_mask(h, d, s, known=0))


def test_guidance_weight_is_clipped_at_beta() -> None:
    assert guidance_weight(0.0, 5.0) == 5.0
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # (1-t)/(t r^2), r^2 = 1/2
    assert guidance_weight(0.5, 1.5) == 1.5
    assert guidance_weight(1.0, 5.0) == 5.0
    taus = np.linspace(0.05, 0.95, 19)
    w = np.array([guidance_weight(float(t), 100.0) for t in taus])
    np.testing.assert_allclose(w, (taus**2 + (1 - taus) ** 2) / (taus * (1 - taus)))
    assert w.min() == pytest.approx(2.0) and np.allclose(w, w[::-1])


def test_guidance_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="delay_steps"):
        RtcGuidance(np.zeros((3, 2)), -1, 1)
    with pytest.raises(ValueError, match="max_guidance_weight"):
        RtcGuidance(np.zeros((3, 2)), 1, 1, max_guidance_weight=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        RtcGuidance(np.full((3, 2), np.inf), 1, 1)
    assert ExecutionConfig(merge="rtc").rtc_max_guidance_weight == 5.0


def _velocity(policy: MoEPolicy, context: np.ndarray, idx: np.ndarray) -> Any:
    stage = policy.stages["experts"]

    def v(x: np.ndarray, tau: float) -> np.ndarray:
        rows = np.tile(idx, x.shape[0] // idx.shape[0])
        feeds = {"context": context, "expert_idx": rows, "x_t": x[None].astype(np.float32),
                 "t": np.array([tau], np.float32)}  # fmt: skip
        return np.asarray(stage.run(feeds)["velocity"][0])

    return v


def test_fd_vjp_matches_torch_autograd(smp: tuple[SMPModel, MoEPolicy]) -> None:
    model, policy = smp
    rng = np.random.default_rng(3)
    idx = np.array([0, 2], np.int64)
    context = rng.standard_normal((1, 32)).astype(np.float32)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    g = rng.standard_normal((2, 4))
    v = _velocity(policy, context, idx)
    assert check_block_diagonal(v, x) == 0.0  # experts do not see each other's inputs
    for tau in (0.0, 0.4, 0.9):
        xt = torch.tensor(x[None], requires_grad=True)
        vel = model.velocity_selected(torch.tensor(context), torch.tensor(idx), xt,
                                      torch.tensor([tau]))  # fmt: skip
        (exact,) = torch.autograd.grad(vel, xt, grad_outputs=torch.tensor(g[None]).float())
        got = fd_vjp(v, x, tau, g)
        np.testing.assert_allclose(got, exact[0].numpy(), atol=2e-3, rtol=1e-2)


def test_guided_sampler_honours_the_frozen_prefix(smp: tuple[SMPModel, MoEPolicy]) -> None:
    _, policy = smp
    obs = synthetic_observation(policy.manifest, seed=1)
    policy.reset()
    old = policy.infer(obs).actions  # chunk n, started at step 0
    free = policy.infer(obs).actions  # chunk n+1 unguided (second noise draw)
    policy.reset()
    policy.infer(obs)
    start, d = 2, 2  # chunk n+1 starts at step 2, its first 2 steps run from chunk n
    committed = old[start:]
    guided = policy.infer(obs, guidance=RtcGuidance(committed, d, 1, 5.0)).actions
    err_free = np.abs(free[:d] - committed[:d]).max()
    err_rtc = np.abs(guided[:d] - committed[:d]).max()
    assert err_free > 0.5  # the two samples differ: there is something to honour
    assert err_rtc < 0.05 * err_free
    # the weight decays over the overlap: later rows follow the old chunk less
    dev = np.abs(guided[: len(committed)] - committed).max(axis=1)
    assert dev[:d].max() < dev[d:].max()


def test_no_committed_actions_is_the_plain_sampler(smp: tuple[SMPModel, MoEPolicy]) -> None:
    _, policy = smp
    obs = synthetic_observation(policy.manifest, seed=2)
    policy.reset()
    plain = policy.infer(obs).actions
    policy.reset()
    empty = RtcGuidance(np.zeros((0, 2)), 3, 1)
    np.testing.assert_array_equal(policy.infer(obs, guidance=empty).actions, plain)


def test_seam_is_continuous_against_replace_and_blend(smp: tuple[SMPModel, MoEPolicy]) -> None:
    """Async execution with a delay of d steps: the new chunk (observation at step 2) arrives
    at step 4. The seam is the jump the switch adds: command sent minus what the old chunk
    would have sent, at the first steps the new chunk drives."""
    _, policy = smp
    obs = synthetic_observation(policy.manifest, seed=4)
    start, d, h = 2, 2, policy.manifest.action.chunk_length
    seams: dict[str, float] = {}
    for mode in ("replace", "blend", "rtc"):
        policy.reset()
        sched = ChunkScheduler(2, merge=mode, blend_steps=3)
        add = sched.add_guided_chunk if mode == "rtc" else sched.add_chunk
        old = policy.infer(obs).actions
        add(0, old)
        sent = [sched.action_at(t) for t in range(start)]
        if mode == "rtc":
            g = RtcGuidance(sched.committed(start, h), d, 1, 5.0)
            new = policy.infer(obs, guidance=g).actions
        else:
            new = policy.infer(obs).actions
        sent += [sched.action_at(t) for t in range(start, start + d)]  # frozen: old chunk
        add(start, new)
        sent += [sched.action_at(t) for t in range(start + d, start + h)]
        switch = start + d
        seams[mode] = float(np.abs(sent[switch] - old[switch]).max())
        if mode == "rtc":  # the robot follows the guided sample itself, no average
            np.testing.assert_array_equal(np.array(sent[switch:]), new[d:])
    assert seams["rtc"] < 0.5 * seams["replace"]
    assert seams["rtc"] < seams["blend"]


def test_rtc_on_the_demo_flow_bundle_and_direct_family_refused() -> None:
    ort = make_backend("onnxruntime", intra_op_threads=1)
    policy = MoEPolicy(load_bundle(REPO / "models" / "demo_smp"), ort)
    obs = synthetic_observation(policy.manifest, seed=0)
    first = policy.infer(obs).actions
    out = policy.infer(obs, guidance=RtcGuidance(first[5:], 3, 5, 5.0))
    assert out.actions.shape == first.shape and np.all(np.isfinite(out.actions))
    with pytest.raises(ValueError, match="execution_horizon 20"):
        policy.infer(obs, guidance=RtcGuidance(first, 3, 20))
    direct = MoEPolicy(load_bundle(REPO / "models" / "demo_adamoe"), ort)
    with pytest.raises(ValueError, match="needs a flow sampler"):
        direct.infer(synthetic_observation(direct.manifest), guidance=RtcGuidance(first, 1, 1))


def test_fd_rows_in_one_call_or_one_call_per_copy_agree(
    smp: tuple[SMPModel, MoEPolicy], monkeypatch: pytest.MonkeyPatch
) -> None:
    import moe_policy_ros.core.runtime as runtime

    _, policy = smp
    obs = synthetic_observation(policy.manifest, seed=5)
    policy.reset()
    old = policy.infer(obs).actions
    g = RtcGuidance(old[2:], 2, 1)
    batched = policy.infer(obs, guidance=g).actions
    monkeypatch.setattr(runtime, "RTC_BATCH_BYTES", 0)  # as for a large bundle
    policy.reset()
    policy.infer(obs)
    split = policy.infer(obs, guidance=g).actions
    np.testing.assert_allclose(split, batched, rtol=1e-5, atol=1e-5)


def test_async_loop_rtc_keeps_every_seam_small(smp: tuple[SMPModel, MoEPolicy]) -> None:
    """Several chunks through the scheduler with a fake control clock: a new observation
    every s = 2 steps, each chunk available d = 2 steps after its observation (the delay the
    DelayEstimator learns). At every switch, the jump the switch adds (command sent minus what
    the previous plan would have sent) is compared between rtc and replace."""
    _, policy = smp
    h, s_exec, d = policy.manifest.action.chunk_length, 2, 2
    worst: dict[str, float] = {}
    for mode in ("replace", "rtc"):
        policy.reset()
        sched = ChunkScheduler(2, merge=mode)
        add = sched.add_guided_chunk if mode == "rtc" else sched.add_chunk
        delays = DelayEstimator(window=4, initial=d)
        pending: list[tuple[int, int, np.ndarray]] = []  # (arrival step, start, actions)
        jumps = []
        for t in range(0, 16):  # one control tick per t
            before = sched.committed(t, 1)  # what the held plan would send now
            for arrival, start, actions in [p for p in pending if p[0] == t]:
                add(start, actions)
                delays.record(arrival - start)
            pending = [p for p in pending if p[0] != t]
            if t % s_exec == 0:  # the worker is free: inference from the observation at t
                obs = synthetic_observation(policy.manifest, seed=100 + t)
                g = guidance_for(sched, t, h, delays, 1, 5.0) if mode == "rtc" else None
                pending.append((t + d, t, policy.infer(obs, guidance=g).actions))
            sent = sched.action_at(t)
            if t >= d and before.shape[0] and sent is not None and t % s_exec == d % s_exec:
                jumps.append(float(np.abs(sent - before[0]).max()))
        assert len(jumps) >= 5
        worst[mode] = max(jumps)
    # measured: replace 2.33, rtc 0.59 (the switch row d has mask weight 0.37; this untrained
    # model's chunks are not smooth, so the rest of the seam is the model's own step)
    assert worst["rtc"] < 0.5 * worst["replace"], worst


def test_guidance_is_the_same_for_any_basis_scale() -> None:
    """A bundle whose basis is s * Q (coefficients in 1/s units, the trained SMP) guides to the
    same chunk as the orthonormal Q with the velocity field expressed in its units: the
    guidance is taken in coefficient units (g / s^2), so the paper's weights mean the same."""
    rng = np.random.default_rng(5)
    k, m, r, s = 2, 12, 3, 7.0
    q, _ = np.linalg.qr(rng.standard_normal((m, k * r)))
    q = q.reshape(m, k, r).transpose(1, 0, 2)  # [k, M, R], orthonormal across experts
    a = 0.3 * rng.standard_normal((k, r, r))
    c = rng.standard_normal((k, r))

    def v_unit(x: np.ndarray, tau: float) -> np.ndarray:  # per-expert affine field; FD rows too
        n = x.shape[0] // k
        return np.concatenate([np.einsum("jrs,js->jr", a, x[i * k : (i + 1) * k]) + c * (1 + tau)
                               for i in range(n)]).astype(np.float32)  # fmt: skip

    def v_scaled(x: np.ndarray, tau: float) -> np.ndarray:  # the same field for x' = x / s
        return v_unit(s * x, tau) / s

    w = np.ones(k)
    target = rng.standard_normal(m)
    mask = np.repeat(soft_mask(6, 2, 1, 6), 2)
    x0 = rng.standard_normal((k, r)).astype(np.float32)
    x1 = guided_flow_sample(v_unit, x0, 10, q, w, target, mask, 5.0)
    x1s = guided_flow_sample(v_scaled, x0 / s, 10, s * q, w, target, mask, 5.0)
    chunk = np.einsum("jmr,jr->m", q, x1)
    chunk_s = np.einsum("jmr,jr->m", s * q, x1s)
    np.testing.assert_allclose(chunk_s, chunk, rtol=1e-4, atol=1e-4)
    unguided = guided_flow_sample(v_unit, x0, 10, q, w, target, 0 * mask, 5.0)
    plain = np.einsum("jmr,jr->m", q, unguided)
    assert np.abs(plain - chunk).max() > 0.1  # the guidance moved the chunk


def test_residual_blend_reaches_the_committed_commands_a_low_rank_chunk_cannot(
    tmp_path: Path,
) -> None:
    """Three skills of rank 1 span 3 of a 6 x 2 chunk's 12 dimensions: guidance cannot bring
    the sample onto committed commands from another chunk, so the frozen prefix still
    differs. With ``residual_blend`` the prefix is the committed commands exactly (W = 1),
    the rows past the overlap are the policy's own sample (W = 0), and in between the
    residual is blended with the soft mask."""
    torch.manual_seed(0)
    model = build_model({**SMP_FULL_SPAN, "rank": 1})
    export_bundle(model, tmp_path, name="smp_rank1", routing=RoutingConfig(strategy="dense", k=3))
    policy = MoEPolicy(load_bundle(tmp_path), make_backend("onnxruntime", intra_op_threads=1))
    h = policy.manifest.action.chunk_length
    rng = np.random.default_rng(2)
    committed = policy.infer(synthetic_observation(policy.manifest, seed=1)).actions[2:]
    committed = committed + 0.5 * rng.standard_normal(committed.shape)  # off the new span
    obs = synthetic_observation(policy.manifest, seed=3)
    d, s = 2, 1
    chunks = {}
    for blend in (False, True):
        policy.reset()
        chunks[blend] = policy.infer(
            obs, guidance=RtcGuidance(committed, d, s, 5.0, residual_blend=blend)).actions
    plain, blended = chunks[False], chunks[True]
    n = committed.shape[0]
    assert np.abs(plain[:d] - committed[:d]).max() > 0.05  # guidance alone: not reachable
    np.testing.assert_allclose(blended[:d], committed[:d], atol=1e-6)
    w = soft_mask(h, d, s, n)[:, None]
    want = plain.copy()
    want[:n] = plain[:n] + w[:n] * (committed - plain[:n])
    np.testing.assert_allclose(blended, want, atol=1e-6)
    np.testing.assert_array_equal(blended[h - s:], plain[h - s:])  # past the overlap: W = 0
