"""Real-time chunking (RTC) for flow experts: guided inpainting of the next action chunk.

Black, Galliker and Levine 2025, "Real-Time Execution of Action Chunking Flow Policies"
(arXiv 2506.07339). While chunk ``n`` executes, chunk ``n + 1`` is computed from a newer
observation. Its first ``d`` actions (``d`` = inference delay in control steps) will never run:
those steps pass while it is computed and execute the commands already committed. RTC treats
the next chunk as an inpainting problem: the flow sampler is guided so that the new chunk
agrees with the committed commands, fully on the frozen prefix and with a decaying weight over
the rest of the overlap, so the switch from the old chunk to the new one is continuous and the
new chunk stays a sample of the policy (not an average of two modes, as ensembling gives).

Design notes
------------
* **Soft mask** (the paper's eq. for ``W``): for chunk row ``i`` (0-based) of ``H``, frozen
  prefix ``d`` and execution horizon ``s``: ``W_i = 1`` for ``i < d``;
  ``W_i = c_i (e^{c_i} - 1) / (e - 1)`` with ``c_i = (H - s - i) / (H - s - d + 1)`` for
  ``d <= i < H - s``; ``W_i = 0`` from ``H - s`` on. Here the overlap also ends where the
  committed commands end (``n`` rows known): rows ``>= n`` get 0 whatever ``s`` says, and
  ``d`` is capped at ``n``.
* **Guidance** (PiGDM for flows, time ``tau`` from 0 = noise to 1 = data as in our sampler):
  with ``v = v(x, tau)`` and the one-step estimate of the clean sample
  ``x1 = x + (1 - tau) v``, the guided velocity is
  ``v + min(beta, (1 - tau) / (tau r^2)) * J^T g`` where ``r^2 = (1 - tau)^2 / (tau^2 +
  (1 - tau)^2)``, ``g`` is the gradient of ``-1/2 |W (Y - A(x1))|^2`` with respect to ``x1``
  (``Y`` the committed commands, ``A`` the map from coefficients to the normalised chunk)
  and ``J = d x1 / d x = I + (1 - tau) dv/dx`` (the vector-Jacobian product). ``beta`` clips
  the weight, which is infinite at ``tau = 0``.
* **The SMP map is linear**: the chunk is ``sum_j w_j B_j x1_j`` with the basis ``B`` from the
  encoder (fixed for the chunk), so ``g_j = w_j B_j^T (W * (Y - A(x1)))`` is exact and cheap.
  The basis columns share one length ``s`` (``s * Q``, Q orthonormal: the coefficients have
  about unit variance, the scale of the noise). The guidance is taken in the coefficients'
  own units, where the paper's weight applies: the error ``Y - A(x1)`` read as coefficients
  is ``B^T (...) / s^2``, so ``g`` is divided by ``s^2`` (the mean squared column length; 1
  for an orthonormal basis). The guided chunk is then the same whatever ``s`` a bundle uses.
* **VJP of an ONNX denoiser by central finite differences.** ONNX graphs carry no gradient,
  and the bundle contract has no backward stage. The Jacobian needed is small: expert ``j``'s
  velocity depends only on its own ``R`` coefficients (the experts share the context, not
  their inputs), so ``dv/dx`` is block diagonal with ``R x R`` blocks. Perturbing coordinate
  ``r`` of every active expert at once gives column ``r`` of every block: ``2 R`` extra
  evaluations per flow step (R = 4 in the reference models: 8). They go in the same denoiser
  call as the plain velocity, as extra rows (the expert index list repeated ``2 R + 1``
  times), so a guided step costs one call; the active set is the chunk's. Central
  differences with ``fd_eps = 1e-2`` in float32 have an error near 1e-5 relative, far below
  what guidance needs. Why not an exported VJP: the TorchScript ONNX exporter cannot trace
  ``autograd`` and a backward stage would change the bundle contract for every backend;
  finite differences work on every existing bundle and backend (ONNX Runtime, TensorRT,
  torch) unchanged. The block-diagonal structure is checked on the first guided chunk of a
  policy (:func:`check_block_diagonal`; ``MoEPolicy`` raises if it does not hold).
* **Low-rank chunks (a departure: ``residual_blend``, on in the node by default through
  ``execution.rtc_residual_blend``; off in :class:`RtcGuidance` itself).** Guidance moves
  the sample only within the chunks the policy can produce. An SMP chunk lives in the span
  of its active skills' state-dependent bases (2 skills x rank 4 = 8 coefficients for a
  25 x 14 chunk), and the committed commands come from the previous chunk, another
  observation's basis, so only their projection onto the new span is reachable: in closed
  loop on the trained SMP bundle rtc's switches to a new chunk jumped twice as far as its
  steps inside a chunk (``docs/benchmarks.md``). With ``residual_blend`` the sampled chunk
  ``A`` becomes ``A + W (Y - A)`` over the known rows (the same soft mask ``W``): the
  committed commands where ``W = 1``, the policy's own sample where ``W = 0``, and for a
  policy whose guidance did reach ``Y`` nothing changes. Measured on the same bundle and
  seeds: seam p50/p99 18 / 49 mrad at +0 ms inference delay (79 / 292 without), 26 / 101 at
  +100 ms (93 / 324).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "RtcGuidance",
    "check_block_diagonal",
    "fd_vjp",
    "guidance_for",
    "guidance_weight",
    "guided_flow_sample",
    "soft_mask",
]


@dataclass(frozen=True)
class RtcGuidance:
    """What the scheduler hands the runtime for one rtc chunk.

    ``committed`` float64 [n, A], raw units: the commands that will be (or would be, without
    the new chunk) sent for the chunk's steps ``0 .. n-1`` (``n <= H``; from
    ``ChunkScheduler.committed``). ``delay_steps`` d: the frozen prefix (the estimated
    inference delay, ``DelayEstimator``). ``execution_horizon`` s and
    ``max_guidance_weight`` beta as in ``ExecutionConfig``.
    """

    committed: np.ndarray
    delay_steps: int
    execution_horizon: int
    max_guidance_weight: float = 5.0
    fd_eps: float = 1e-2
    #: after the guided sample, blend what it still misses of the committed commands in
    #: action space with the same soft mask (see the module's "Low-rank chunks")
    residual_blend: bool = False

    def __post_init__(self) -> None:
        c = np.asarray(self.committed)
        if c.ndim != 2:
            raise ValueError(f"committed must be [n, A], got shape {c.shape}")
        if not np.all(np.isfinite(c)):
            raise ValueError("committed actions must be finite")
        for name in ("delay_steps", "execution_horizon"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        b = self.max_guidance_weight
        if not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0):
            raise ValueError(f"max_guidance_weight must be a finite number > 0, got {b!r}")
        if not (isinstance(self.fd_eps, float) and 0 < self.fd_eps < 1):
            raise ValueError(f"fd_eps must be in (0, 1), got {self.fd_eps!r}")


def soft_mask(horizon: int, delay: int, execution_horizon: int, known: int) -> np.ndarray:
    """The paper's soft mask W [H] (float64) for ``known`` committed rows (see module doc)."""
    h = int(horizon)
    if h < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if execution_horizon < 0 or delay < 0 or known < 0:
        raise ValueError(
            f"delay {delay}, execution_horizon {execution_horizon}, known {known} must be >= 0"
        )
    end = min(h - int(execution_horizon), int(known))  # rows of the overlap: [0, end)
    d = min(int(delay), max(end, 0))
    w = np.zeros(h, np.float64)
    w[:d] = 1.0
    if end > d:
        # c_i runs from (end - d) / (end - d + 1) down to 1 / (end - d + 1): always in (0, 1)
        i = np.arange(d, end, dtype=np.float64)
        c = (end - i) / (end - d + 1)
        w[d:end] = c * np.expm1(c) / math.expm1(1.0)
    return w


def guidance_weight(tau: float, beta: float) -> float:
    """min(beta, (1 - tau) / (tau r^2)), r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2).

    The unclipped weight is (tau^2 + (1 - tau)^2) / (tau (1 - tau)): 2 at tau = 1/2 and
    unbounded at both ends, hence the clip at beta.
    """
    if tau <= 0.0 or tau >= 1.0:
        return float(beta)
    r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
    return float(min(beta, (1.0 - tau) / (tau * r2)))


#: Rows [n, R] (n a multiple of k; row i belongs to active expert i % k), tau -> v [n, R].
Velocity = Callable[[np.ndarray, float], np.ndarray]


def check_block_diagonal(velocity: Velocity, x: np.ndarray, eps: float = 1e-2) -> float:
    """Largest change of another expert's velocity when one expert's input moves (0 for a
    denoiser whose experts are independent given the context). k = 1 gives 0."""
    k = x.shape[0]
    if k < 2:
        return 0.0
    base = velocity(x, 0.5)
    xp = x.copy()
    xp[0] += np.float32(eps)
    moved = velocity(xp, 0.5)
    return float(np.max(np.abs(moved[1:] - base[1:])))


def _fd_rows(x: np.ndarray, eps: float) -> np.ndarray:
    """[x; x + eps e_0; x - eps e_0; ...; x - eps e_{R-1}] -> [(2R + 1) k, R] float32."""
    r = x.shape[1]
    rows = np.repeat(x[None], 2 * r + 1, axis=0)  # [2R + 1, k, R]
    for c in range(r):
        rows[1 + 2 * c, :, c] += np.float32(eps)
        rows[2 + 2 * c, :, c] -= np.float32(eps)
    return rows.reshape(-1, r)


def _vjp_from_rows(v_rows: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    k, r = g.shape
    v = np.asarray(v_rows, np.float64).reshape(2 * r + 1, k, r)
    dv = v[1::2] - v[2::2]  # [R, k, R]: column c of every block, times 2 eps
    return np.einsum("jm,cjm->jc", g, dv) / (2.0 * eps)


def fd_vjp(
    velocity: Velocity, x: np.ndarray, tau: float, g: np.ndarray, eps: float = 1e-2
) -> np.ndarray:
    """g^T dv/dx per expert [k, R] by central differences (one call of (2R + 1) k rows).

    Valid for a block-diagonal Jacobian (expert j's velocity depends on x[j] only): moving
    coordinate c of every expert at once yields column c of every expert's block.
    """
    x = np.asarray(x, np.float32)
    return _vjp_from_rows(velocity(_fd_rows(x, eps), tau), g, eps)


def guided_flow_sample(
    velocity: Velocity,
    x0: np.ndarray,
    steps: int,
    basis: np.ndarray,
    weights: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    beta: float,
    fd_eps: float = 1e-2,
) -> np.ndarray:
    """Euler-integrate the RTC-guided flow from ``x0`` [k, R] (noise) over ``steps`` steps.

    ``basis`` [k, M, R] the active experts' basis (M = H * A), ``weights`` [k],
    ``target`` [M] the committed chunk in model (normalised) space, rows past the known ones
    arbitrary, ``mask`` [M] the soft mask repeated over the action dim. Returns x1 [k, R]
    float32. With ``mask`` all zero this is exactly the unguided sampler.
    """
    b = np.asarray(basis, np.float64)
    w = np.asarray(weights, np.float64)
    y = np.asarray(target, np.float64)
    m = np.asarray(mask, np.float64)
    guided = bool(np.any(m > 0))
    scale2 = float(np.mean(np.sum(b * b, axis=1))) if guided else 1.0  # s^2, module notes
    x = np.asarray(x0, np.float32)
    dt = 1.0 / steps
    k = x.shape[0]
    for s in range(steps):
        tau = s * dt
        if not guided:
            v = velocity(x, tau)
        else:  # one call: the plain rows and the 2R perturbed copies
            rows = velocity(_fd_rows(x, fd_eps), tau)
            v = np.asarray(rows[:k], np.float32)
            x1 = x.astype(np.float64) + (1.0 - tau) * v.astype(np.float64)
            chunk = np.einsum("j,jmr,jr->m", w, b, x1)
            err = m * (y - chunk)
            g = w[:, None] * np.einsum("jmr,m->jr", b, err) / scale2  # [k, R], d(-loss)/d x1
            vjp = g + (1.0 - tau) * _vjp_from_rows(rows, g, fd_eps)
            v = (v + guidance_weight(tau, beta) * vjp).astype(np.float32)
        x = (x + np.float32(dt) * v).astype(np.float32)
    return x


class _Committed(Protocol):
    def committed(self, step: int, horizon: int) -> np.ndarray: ...


class _Delay(Protocol):
    def estimate(self) -> int: ...


def guidance_for(
    scheduler: _Committed,
    step: int,
    horizon: int,
    delay: _Delay,
    execution_horizon: int,
    max_guidance_weight: float,
    residual_blend: bool = False,
) -> RtcGuidance:
    """The guidance for a chunk whose observation is at control ``step``: the scheduler's
    committed commands from ``step`` on (``ChunkScheduler.committed``) and the frozen prefix
    from the delay estimate (``DelayEstimator.estimate``)."""
    return RtcGuidance(
        committed=scheduler.committed(step, horizon),
        delay_steps=delay.estimate(),
        execution_horizon=execution_horizon,
        max_guidance_weight=max_guidance_weight,
        residual_blend=residual_blend,
    )
