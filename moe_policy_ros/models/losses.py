"""Training losses of the reference models (pure functions on tensors).

Notation: B batch, E experts, H*A = N flattened chunk length, R skill rank, Z latent size.
Actions are normalised chunks ``y`` [B, H, A]. ``softmax(gate_logits)`` are the gates ``g``.
Which family composes which terms is documented on each model's ``loss`` method.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def bc_loss(pred: Tensor, target: Tensor, kind: Literal["l1", "mse"] = "l1") -> Tensor:
    """Behaviour cloning on action chunks.

    ``l1``: mean |y_hat - y| (ACT-style, robust to multimodal demonstrations);
    ``mse``: mean (y_hat - y)^2. Means run over batch, steps and joints.
    """
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"bc loss kind must be 'l1' or 'mse' (got {kind!r})")


def topk_mask(gate_logits: Tensor, k: int) -> Tensor:
    """[B, E] 0/1 mask of the k largest logits per row (no gradient)."""
    k = min(k, gate_logits.shape[-1])
    idx = torch.topk(gate_logits.detach(), k, dim=-1).indices
    return torch.zeros_like(gate_logits).scatter(-1, idx, 1.0)


def mass_mask(gate_logits: Tensor, tau: float, k_min: int = 1, k_max: int = 0) -> Tensor:
    """[B, E] 0/1 mask of the smallest gate-ranked set whose linear mass reaches ``tau``.

    The same choice as ``core/routing.py``'s ``MassRouting`` (ties toward the lower index,
    absolute tolerance 1e-9, clamped to ``k_min..k_max``, ``k_max`` 0 = all), so training can
    route the way a bundle with a gate-mass default routes at inference. No gradient.
    """
    e = gate_logits.shape[-1]
    k_max = e if k_max <= 0 else min(k_max, e)
    g = gate_logits.detach().softmax(dim=-1)
    # stable descending order: ties keep the lower expert index first
    order = torch.sort(-g, dim=-1, stable=True).indices
    ranked = torch.gather(g, -1, order)
    cum = ranked.cumsum(dim=-1)
    count = (cum < tau - 1e-9).sum(dim=-1, keepdim=True) + 1  # first index reaching tau
    count = count.clamp(min=k_min, max=k_max)
    keep = (torch.arange(e, device=g.device).unsqueeze(0) < count).to(g.dtype)
    return torch.zeros_like(g).scatter(-1, order, keep)


def router_z_loss(gate_logits: Tensor) -> Tensor:
    """ST-MoE router z-loss: mean over the batch of logsumexp(logits)^2.

    Keeps router logits small so the softmax stays in a well-conditioned range; AdaMoE's
    released code adds it to the load-balancing loss.
    """
    return (torch.logsumexp(gate_logits, dim=-1) ** 2).mean()


def load_balancing_loss(gate_logits: Tensor, k: int) -> Tensor:
    """Switch/GShard auxiliary load-balancing loss.

    L_lb = E * sum_i f_i * P_i, with f_i = (1 / (B k)) sum_b 1[i in topk_k(g_b)] the share of
    routing slots dispatched to expert i (no gradient) and P_i = (1/B) sum_b g_{b,i} the mean
    router probability. L_lb = 1 at perfect balance and grows to E/k as routing collapses. Its
    gradient only reaches whatever produced ``gate_logits`` (AdaMoE's ``adapter_sigmoid``
    variant feeds it ``router(context.detach())``; the released code's weighting does not).
    """
    e = gate_logits.shape[-1]
    probs = gate_logits.softmax(dim=-1)
    f = topk_mask(gate_logits, k).mean(dim=0) / min(k, e)
    return e * (f * probs.mean(dim=0)).sum()


def flow_matching_loss(velocity: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Conditional flow matching (rectified flow), weighted per expert.

    With x_t = (1 - t) x_0 + t x_1, x_0 ~ N(0, I), the target velocity is u = x_1 - x_0 and
    L_fm = (1/B) sum_b sum_i w_{b,i} * mean_r (v_i(x_t, t, c)_r - u_{b,i,r})^2.
    ``velocity``/``target`` [B, E, R], ``weights`` [B, E] (the SMP skill posterior q).
    """
    per = ((velocity - target) ** 2).mean(dim=-1)
    return (weights * per).sum(dim=-1).mean()


def skill_posterior(gate_logits: Tensor, errors: Tensor, sigma2: float) -> Tensor:
    """Variational posterior over skills (E-step), no gradient.

    q_i ∝ g_i * exp(-err_i / (2 sigma^2)), where err_i is how badly skill i alone explains
    the demonstrated chunk (a Gaussian likelihood with variance sigma^2).
    """
    logits = gate_logits.log_softmax(dim=-1) - errors / (2.0 * sigma2)
    return logits.softmax(dim=-1).detach()


def gate_kl(posterior: Tensor, gate_logits: Tensor) -> Tensor:
    """KL(q || g) = sum_i q_i (log q_i - log g_i), batch mean: the ELBO's prior term.

    Together with the q-weighted likelihood terms this is the negative evidence lower bound
    -log p(y | c) <= E_q[-log p(y | i, c)] + KL(q || g); its gradient pulls the gates toward
    the skills that explain the data.
    """
    logq = torch.log(posterior.clamp_min(1e-12))
    return (posterior * (logq - gate_logits.log_softmax(dim=-1))).sum(dim=-1).mean()


def orthogonality_loss(basis: Tensor) -> Tensor:
    """||Q^T Q - I||_F^2 / C for the skill basis [B, E, N, R] viewed as Q [B, N, E*R].

    The Gram-Schmidt construction makes Q orthonormal by design, so this is ~0; it is kept as a
    monitored regulariser that flags (and resists) loss of orthogonality from degenerate
    predicted matrices, where the eps in the normalisation takes over.
    """
    b, e, n, r = basis.shape
    q = basis.permute(0, 2, 1, 3).reshape(b, n, e * r)
    gram = torch.matmul(q.transpose(1, 2), q)
    eye = torch.eye(e * r, dtype=basis.dtype, device=basis.device)
    return ((gram - eye) ** 2).sum(dim=(1, 2)).mean() / (e * r)


def responsibilities(errors: Tensor, temperature: float) -> Tensor:
    """Which expert handles each sample: r_{b,i} = softmax_i(-err_{b,i} / T), no gradient."""
    return (-errors / temperature).softmax(dim=-1).detach()


def energy_nce_loss(energies: Tensor, resp: Tensor) -> Tensor:
    """Di-BM: each expert's energy models the observations that expert handles.

    Expert i's energy defines a density over observations p_i(c) ∝ exp(-E_i(c)); normalising
    it over the batch (in-batch negatives, InfoNCE-style) gives p_i(b) = softmax_b(-E_i(c_b)).
    The data distribution of expert i is its responsibility share t_{b,i} = r_{b,i} / sum_b'
    r_{b',i}. L = -(1/E) sum_i sum_b t_{b,i} log p_i(b): low energy on the observations an
    expert handles, high energy on the others'. Needs B >= 2 (with B = 1 it is 0).
    """
    logp = (-energies).log_softmax(dim=0)
    t = resp / resp.sum(dim=0, keepdim=True).clamp_min(1e-12)
    return -(t * logp).sum(dim=0).mean()


def curriculum_weights(energies: Tensor) -> Tensor:
    """Di-BM per-expert data distribution over the batch: p_i(b) = softmax_b(-E_i(c_b)).

    ``energies`` [B, E] -> [B, E], each column sums to 1: the observations expert i claims.
    """
    return (-energies).softmax(dim=0)


def curriculum_entropy(energies: Tensor) -> Tensor:
    """Mean over experts of the entropy (nats) of p_i(b) = softmax_b(-E_i(c_b)).

    Maximised (subtracted from the loss) so that an expert's curriculum does not collapse
    onto a handful of observations; ln(B) when an expert claims the whole batch evenly.
    """
    logp = (-energies).log_softmax(dim=0)
    return -(logp.exp() * logp).sum(dim=0).mean()


def latent_alignment_loss(z_student: Tensor, z_teacher: Tensor) -> Tensor:
    """LAR-MoE student-teacher alignment: mean ||z_s - sg(z_t)||^2.

    The teacher (which sees the future actions) is the target; the stop-gradient keeps the
    teacher from collapsing toward the student.
    """
    return F.mse_loss(z_student, z_teacher.detach())


def router_latent_alignment_loss(gate_logits: Tensor, latent: Tensor) -> Tensor:
    """LAR-MoE routing follows the latent: pairwise similarity matching over the batch.

    S^g_{ab} = cos(g_a, g_b) (gates are non-negative, so in [0, 1]) must follow
    S^z_{ab} = max(0, cos(z_a, z_b)) (latent, no gradient):
    L = mean over a != b of (S^g_{ab} - S^z_{ab})^2. Samples close in the latent share
    experts; distant ones are pushed to different experts, which counters expert collapse
    without skill labels. Needs B >= 2.
    """
    g = F.normalize(gate_logits.softmax(dim=-1), dim=-1)
    z = F.normalize(latent.detach(), dim=-1)
    sg = g @ g.T
    sz = (z @ z.T).clamp_min(0.0)
    b = gate_logits.shape[0]
    off = 1.0 - torch.eye(b, dtype=g.dtype, device=g.device)
    return (((sg - sz) ** 2) * off).sum() / off.sum().clamp_min(1.0)
