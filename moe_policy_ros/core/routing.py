"""Routing strategies applied to router outputs at inference (pure numpy).

A strategy turns one :class:`~moe_policy_ros.core.types.RouterOutputs` (one per action chunk)
into a :class:`~moe_policy_ros.core.types.RoutingDecision`: which experts run (``active``),
how their outputs are combined (``weights``) and the router state operators see.

Design notes
------------
* **Gates.** ``gates = softmax(gate_logits)``, computed in float64 with the max subtracted, so
  any finite logits (even +-1e300 apart) give finite gates. Entropy is computed from the
  log-softmax (never ``log(0)``), in nats; uniform gates over E experts give ``ln(E)``.
* **Ranking and ties.** Experts are ranked by gate, largest first, with a *stable* sort, so
  equal gates break toward the lower expert index. Every strategy picks a prefix of that
  ranking (sticky keeps an older prefix), which makes decisions deterministic and
  reproducible across runs and machines.
* **Weights.** ``combination`` (the bundle manifest's; the models train with the same) says
  how the active experts are weighted. ``gates``: the gates renormalised over the active set,
  computed as a softmax over the active experts' logits because that cannot divide by zero
  even when every active gate underflows (sticky can keep an incumbent whose gates
  collapsed). AdaMoE decouples selection from weighting: ``router_plus_adapter`` (the
  released code) gives an active expert its gate (softmax over *all* experts, not
  renormalised) plus its scale-adapter output; ``adapter`` (our earlier variant) its adapter
  weight as given. ``unit`` (SMP) gives every active skill weight 1: the chunk is the
  projection of the skills' coefficients onto the active skills' orthonormal span, so it
  keeps its length whatever the size of the active set. ``combination=None`` keeps the
  behaviour from before the field existed: adapter weights when the router outputs carry
  them, else renormalised gates.
* **Mass threshold.** The smallest prefix whose mass reaches ``tau`` is chosen. The mass is
  compared with an absolute tolerance of :data:`MASS_TOLERANCE` so that a mass that equals
  ``tau`` in exact arithmetic (gates 0.5 + 0.3 with ``tau=0.8``) is not pushed over by float
  rounding; consequently ``tau=1`` ignores experts whose share is below the tolerance. The
  quadratic mass (squared gates over the sum of squared gates) concentrates the mass on the
  leaders, so it activates no more experts than the linear mass for the same ``tau``.
* **Sticky.** Switching experts mid-task costs smoothness (each expert produces its own
  chunk), so the sticky strategy keeps the incumbent set until a clear, lasting winner
  appears: a challenger (an expert outside the incumbent set) must beat the weakest
  incumbent's gate by more than ``margin`` (strictly, in gate units), and no switch happens
  before ``min_dwell_chunks`` decisions since the set was adopted. On a switch the new set is
  the base strategy's (top-k or mass) choice for the current gates. The incumbent is kept
  even when its mass falls below ``tau``: stability over coverage is the point of sticking.
* **State.** Strategies remember the previous active set (for ``switched``) and, for sticky,
  the incumbent and the dwell counter. One strategy instance serves one inference stream; it
  is not thread-safe. ``reset()`` forgets everything (call it at episode start); the first
  decision after a reset reports ``switched=False``.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

from .config import RoutingConfig
from .types import RouterOutputs, RouterState, RoutingDecision

#: Absolute tolerance when comparing a cumulative gate mass with ``tau``.
MASS_TOLERANCE = 1e-9

Combination = Literal["gates", "adapter", "router_plus_adapter", "unit"]
COMBINATIONS: tuple[str, ...] = get_args(Combination)

__all__ = [
    "COMBINATIONS",
    "MASS_TOLERANCE",
    "DenseRouting",
    "MassRouting",
    "RoutingStrategy",
    "StickyRouting",
    "TopKRouting",
    "entropy_nats",
    "make_strategy",
    "softmax",
]


@runtime_checkable
class RoutingStrategy(Protocol):
    """Turns router outputs into a routing decision; may keep state between chunks."""

    name: str

    def select(self, outputs: RouterOutputs) -> RoutingDecision: ...

    def reset(self) -> None: ...


# --------------------------------------------------------------------------- numerics


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits)
    return shifted - math.log(float(np.sum(np.exp(shifted))))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array, float64."""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(_log_softmax(x))


def entropy_nats(logits: np.ndarray) -> float:
    """Entropy (nats) of ``softmax(logits)``, from the log-softmax so ``0 log 0`` is 0."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64))
    return float(max(0.0, -np.sum(np.exp(logp) * logp)))


def _ranking(gates: np.ndarray) -> np.ndarray:
    """Expert indices by gate, largest first; equal gates keep the lower index first."""
    return np.argsort(-gates, kind="stable")


def _mass_count(
    gates: np.ndarray, tau: float, mass: Literal["linear", "quadratic"], k_min: int, k_max: int
) -> int:
    """Size of the smallest gate-ranked prefix whose mass reaches ``tau``, clamped."""
    ordered = np.sort(gates)[::-1]
    if mass == "quadratic":
        sq = ordered * ordered
        total = float(np.sum(sq))
        # total >= 1/E^2 > 0 because the largest gate is at least 1/E.
        shares = sq / total
    else:
        shares = ordered / float(np.sum(ordered))
    cum = np.cumsum(shares)
    reached = np.nonzero(cum >= tau - MASS_TOLERANCE)[0]
    count = int(reached[0]) + 1 if reached.size else int(gates.shape[0])
    return min(max(count, k_min), k_max)


def _sorted_active(indices: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(indices, dtype=np.int64))


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bound}, got {v}")
    return v


def _check_vector(name: str, value: object, num_experts: int, finite: bool) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != num_experts:
        raise ValueError(
            f"{name} must be a 1-D array of {num_experts} values (one per expert), "
            f"got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if finite:
        bad = np.nonzero(~np.isfinite(out))[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{name}[{i}] is {out[i]} (must be finite); {bad.size} non-finite value(s) "
                f"at {bad.tolist()}"
            )
    return out


# --------------------------------------------------------------------------- strategies


class _Strategy:
    """Shared validation, gates, weights and the ``switched`` bookkeeping."""

    name: str = ""

    def __init__(self, num_experts: int, combination: Combination | None = None) -> None:
        self.num_experts = _check_int("num_experts", num_experts, 1)
        if combination is not None and combination not in COMBINATIONS:
            raise ValueError(
                f"combination must be one of {list(COMBINATIONS)} or None, got {combination!r}"
            )
        self.combination = combination
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None
        self._reset_state()

    def _reset_state(self) -> None:
        """Strategy-specific state; nothing by default."""

    def _choose(self, gates: np.ndarray) -> np.ndarray:
        """Active expert indices (any order, unique) for float64 ``gates``."""
        raise NotImplementedError

    def select(self, outputs: RouterOutputs) -> RoutingDecision:
        e = self.num_experts
        logits = _check_vector("gate_logits", outputs.gate_logits, e, finite=True)
        adapter = None
        if outputs.adapter_weights is not None:
            adapter = _check_vector("adapter_weights", outputs.adapter_weights, e, finite=True)
        if outputs.energies is not None:
            _check_vector("energies", outputs.energies, e, finite=False)

        logp = _log_softmax(logits)
        gates = np.exp(logp)
        entropy = float(max(0.0, -np.sum(gates * logp)))
        active = _sorted_active(self._choose(gates))

        weights = self._weights(logits, gates, adapter, active)

        switched = self._previous is not None and not np.array_equal(self._previous, active)
        self._previous = active.copy()
        state = RouterState(
            gates=gates.astype(np.float32),
            entropy=entropy,
            switched=bool(switched),
            adapter_weights=outputs.adapter_weights,
            energies=outputs.energies,
            latent=outputs.latent,
        )
        return RoutingDecision(active=active, weights=weights, state=state)

    def _weights(
        self, logits: np.ndarray, gates: np.ndarray, adapter: np.ndarray | None,
        active: np.ndarray,
    ) -> np.ndarray:
        kind = self.combination
        if kind is None:
            kind = "adapter" if adapter is not None else "gates"
        if kind == "unit":
            return np.ones(active.shape[0], dtype=np.float32)
        if kind == "gates":
            return softmax(logits[active]).astype(np.float32)
        if adapter is None:
            raise ValueError(
                f"combination {kind!r} needs adapter_weights in the router outputs (none given)"
            )
        if kind == "adapter":
            return adapter[active].astype(np.float32)
        return (gates[active] + adapter[active]).astype(np.float32)


class DenseRouting(_Strategy):
    """Every expert is active; weights are the gates (renormalised over all = the gates)."""

    name = "dense"

    def _choose(self, gates: np.ndarray) -> np.ndarray:
        return np.arange(self.num_experts, dtype=np.int64)


class TopKRouting(_Strategy):
    """The ``k`` experts with the largest gates (ties toward the lower index)."""

    name = "topk"

    def __init__(
        self, num_experts: int, k: int, combination: Combination | None = None
    ) -> None:
        super().__init__(num_experts, combination)
        self.k = _check_int("k", k, 1, self.num_experts)

    def _choose(self, gates: np.ndarray) -> np.ndarray:
        return _ranking(gates)[: self.k]


class MassRouting(_Strategy):
    """The smallest gate-ranked set whose mass reaches ``tau``, clamped to ``k_min..k_max``.

    ``mass="linear"``: the sum of the gates; ``mass="quadratic"``: the sum of squared gates
    over the sum of all squared gates. ``k_max=0`` means all experts.
    """

    name = "mass"

    def __init__(
        self,
        num_experts: int,
        tau: float,
        k_min: int = 1,
        k_max: int = 0,
        mass: Literal["linear", "quadratic"] = "linear",
        combination: Combination | None = None,
    ) -> None:
        super().__init__(num_experts, combination)
        e = self.num_experts
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and 0.0 < tau <= 1.0):
            raise ValueError(f"tau must be in (0, 1], got {tau!r}")
        if mass not in ("linear", "quadratic"):
            raise ValueError(f"mass must be 'linear' or 'quadratic', got {mass!r}")
        self.tau = float(tau)
        self.mass: Literal["linear", "quadratic"] = mass
        self.k_min = _check_int("k_min", k_min, 1, e)
        k_max = _check_int("k_max", k_max, 0, e)
        self.k_max = e if k_max == 0 else k_max
        if self.k_max < self.k_min:
            raise ValueError(f"k_max {self.k_max} must be >= k_min {self.k_min}")

    def _choose(self, gates: np.ndarray) -> np.ndarray:
        count = _mass_count(gates, self.tau, self.mass, self.k_min, self.k_max)
        return _ranking(gates)[:count]


class StickyRouting(_Strategy):
    """Keep the incumbent set until a challenger beats it by ``margin`` after a dwell.

    ``base`` (a :class:`TopKRouting` or :class:`MassRouting` over the same experts) proposes
    the set on the first decision after a reset and whenever a switch happens. A switch needs
    both: at least ``min_dwell_chunks`` decisions since the incumbent was adopted (the first
    adoption included), and some expert outside the incumbent set whose gate exceeds the
    weakest incumbent's gate by more than ``margin``. ``min_dwell_chunks`` 0 and 1 behave the
    same (a set always serves at least the chunk it was chosen for).
    """

    name = "sticky"

    def __init__(
        self,
        num_experts: int,
        base: TopKRouting | MassRouting,
        margin: float = 0.1,
        min_dwell_chunks: int = 3,
        combination: Combination | None = None,
    ) -> None:
        super().__init__(num_experts, combination)
        if not isinstance(base, (TopKRouting, MassRouting)):
            raise ValueError(f"sticky base must be a topk or mass strategy, got {base!r}")
        if base.num_experts != self.num_experts:
            raise ValueError(
                f"sticky base has {base.num_experts} experts, expected {self.num_experts}"
            )
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        self.base = base
        self.margin = float(margin)
        self.min_dwell_chunks = _check_int("min_dwell_chunks", min_dwell_chunks, 0)
        self._incumbent: np.ndarray | None = None
        self._since_switch = 0

    def _reset_state(self) -> None:
        self._incumbent = None
        self._since_switch = 0

    @property
    def incumbent(self) -> np.ndarray | None:
        """The current active set (sorted), or None before the first decision."""
        return None if self._incumbent is None else self._incumbent.copy()

    def _choose(self, gates: np.ndarray) -> np.ndarray:
        if self._incumbent is None:
            self._incumbent = _sorted_active(self.base._choose(gates))
            self._since_switch = 0
            return self._incumbent
        self._since_switch += 1
        if self._since_switch < self.min_dwell_chunks:
            return self._incumbent
        outside = np.ones(self.num_experts, dtype=bool)
        outside[self._incumbent] = False
        if not outside.any():
            return self._incumbent
        weakest = float(np.min(gates[self._incumbent]))
        challenger = float(np.max(gates[outside]))
        if challenger > weakest + self.margin:
            proposal = _sorted_active(self.base._choose(gates))
            if not np.array_equal(proposal, self._incumbent):
                self._incumbent = proposal
                self._since_switch = 0
        return self._incumbent


# --------------------------------------------------------------------------- factory


def make_strategy(
    cfg: RoutingConfig, num_experts: int, combination: Combination | None = None
) -> RoutingStrategy:
    """Build the strategy named by ``cfg.strategy`` for a bundle with ``num_experts`` experts.

    ``cfg.strategy == ""`` means "the bundle's default"; resolve it first (for example
    ``cfg.model_copy(update={"strategy": manifest_default})``). Only the fields the chosen
    strategy uses are checked against ``num_experts``; errors name the field and value.
    ``combination``: how the active experts are weighted (the manifest's
    ``combination_weights``; None = adapter weights if present, else renormalised gates).
    """
    e = _check_int("num_experts", num_experts, 1)
    kind = cfg.strategy
    if kind == "dense":
        return DenseRouting(e, combination)
    if kind == "topk":
        return TopKRouting(e, _check_k(cfg.k, e), combination)
    if kind == "mass":
        return MassRouting(e, cfg.tau, cfg.k_min, cfg.k_max, cfg.mass, combination)
    if kind == "sticky":
        base: TopKRouting | MassRouting
        if cfg.sticky_base == "topk":
            base = TopKRouting(e, _check_k(cfg.k, e))
        else:
            base = MassRouting(e, cfg.tau, cfg.k_min, cfg.k_max, cfg.mass)
        return StickyRouting(e, base, cfg.margin, cfg.min_dwell_chunks, combination)
    if kind == "":
        raise ValueError(
            "routing strategy '' means the bundle's default; resolve it to one of "
            "'dense', 'topk', 'mass', 'sticky' before calling make_strategy"
        )
    raise ValueError(f"unknown routing strategy {kind!r}; expected dense, topk, mass or sticky")


def _check_k(k: int, num_experts: int) -> int:
    if k > num_experts:
        raise ValueError(f"routing.k {k} exceeds the number of experts ({num_experts})")
    return k
