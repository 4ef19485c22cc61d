"""Routing strategies: hand-computed decisions for dense, top-k, mass and sticky."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_policy_ros.core.config import RoutingConfig
from moe_policy_ros.core.routing import (
    DenseRouting,
    MassRouting,
    RoutingStrategy,
    StickyRouting,
    TopKRouting,
    entropy_nats,
    make_strategy,
    softmax,
)
from moe_policy_ros.core.types import RouterOutputs, RoutingDecision


def out_for(gates: list[float], **extra: np.ndarray | None) -> RouterOutputs:
    """Router outputs whose softmax is ``gates`` (logits = log gates)."""
    return RouterOutputs(gate_logits=np.log(np.asarray(gates, dtype=np.float64)), **extra)


def active(decision: RoutingDecision) -> list[int]:
    return [int(i) for i in decision.active]


def check_contract(d: RoutingDecision, num_experts: int) -> None:
    assert d.active.dtype == np.int64
    assert d.weights.dtype == np.float32
    assert d.active.shape == d.weights.shape
    assert d.k >= 1
    assert np.all(np.diff(d.active) > 0), "active must be sorted ascending and unique"
    assert d.state.gates.shape == (num_experts,)
    assert d.state.gates.dtype == np.float32
    assert math.isclose(float(np.sum(d.state.gates)), 1.0, rel_tol=1e-6)


# --------------------------------------------------------------------------- numerics


def test_softmax_is_stable_for_huge_logits() -> None:
    g = softmax(np.array([1e300, 1e300 - 1e290, -1e300]))
    assert np.all(np.isfinite(g))
    assert g[0] == pytest.approx(1.0)
    g2 = softmax(np.array([1000.0, 1000.0]))
    np.testing.assert_allclose(g2, [0.5, 0.5])


def test_softmax_hand_computed() -> None:
    g = softmax(np.array([0.0, math.log(3.0)]))
    np.testing.assert_allclose(g, [0.25, 0.75], rtol=1e-12)


@pytest.mark.parametrize("e", [1, 2, 5, 16])
def test_entropy_of_uniform_is_ln_e(e: int) -> None:
    d = DenseRouting(e).select(RouterOutputs(gate_logits=np.zeros(e, dtype=np.float32)))
    assert d.state.entropy == pytest.approx(math.log(e), abs=1e-12)
    assert entropy_nats(np.full(e, 7.0)) == pytest.approx(math.log(e), abs=1e-12)


def test_entropy_hand_computed_and_one_hot_is_zero() -> None:
    h = entropy_nats(np.log(np.array([0.5, 0.25, 0.25])))
    assert h == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert entropy_nats(np.array([0.0, -1e6, -1e6])) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- dense


def test_dense_activates_all_with_gate_weights() -> None:
    s = DenseRouting(3)
    d = s.select(out_for([0.2, 0.5, 0.3]))
    check_contract(d, 3)
    assert active(d) == [0, 1, 2]
    np.testing.assert_allclose(d.weights, [0.2, 0.5, 0.3], rtol=1e-6)
    assert d.dominant == 1
    assert d.state.switched is False
    assert s.select(out_for([0.9, 0.05, 0.05])).state.switched is False


# --------------------------------------------------------------------------- top-k


def test_topk_hand_computed_renormalised_weights() -> None:
    d = TopKRouting(4, 2).select(out_for([0.1, 0.4, 0.2, 0.3]))
    check_contract(d, 4)
    assert active(d) == [1, 3]
    np.testing.assert_allclose(d.weights, [0.4 / 0.7, 0.3 / 0.7], rtol=1e-6)


def test_topk_k1_and_k_equals_e() -> None:
    gates = [0.1, 0.4, 0.2, 0.3]
    d1 = TopKRouting(4, 1).select(out_for(gates))
    assert active(d1) == [1]
    np.testing.assert_allclose(d1.weights, [1.0])
    d4 = TopKRouting(4, 4).select(out_for(gates))
    assert active(d4) == [0, 1, 2, 3]
    np.testing.assert_allclose(d4.weights, gates, rtol=1e-6)


def test_topk_ties_break_toward_lower_index() -> None:
    # Experts 1 and 3 tie for second place; 1 wins. Logits are exactly equal.
    d = TopKRouting(4, 2).select(RouterOutputs(gate_logits=np.array([0.0, 1.0, 2.0, 1.0])))
    assert active(d) == [1, 2]
    d = TopKRouting(4, 1).select(RouterOutputs(gate_logits=np.array([1.0, 3.0, 3.0, 3.0])))
    assert active(d) == [1]


def test_topk_all_equal_gates_picks_lowest_indices() -> None:
    d = TopKRouting(5, 3).select(RouterOutputs(gate_logits=np.full(5, 0.7)))
    assert active(d) == [0, 1, 2]
    np.testing.assert_allclose(d.weights, [1 / 3] * 3, rtol=1e-6)
    assert d.state.entropy == pytest.approx(math.log(5))


def test_switched_flag_and_reset() -> None:
    s = TopKRouting(3, 1)
    assert s.select(out_for([0.6, 0.3, 0.1])).state.switched is False  # first decision
    assert s.select(out_for([0.7, 0.2, 0.1])).state.switched is False  # same set
    assert s.select(out_for([0.2, 0.7, 0.1])).state.switched is True
    assert s.select(out_for([0.2, 0.7, 0.1])).state.switched is False
    s.reset()
    assert s.select(out_for([0.6, 0.3, 0.1])).state.switched is False


# --------------------------------------------------------------------------- AdaMoE


def test_adamoe_weights_are_adapter_weights_as_given() -> None:
    adapter = np.array([0.9, 2.5, -0.3, 0.7], dtype=np.float32)
    energies = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    latent = np.arange(6, dtype=np.float32)
    o = out_for([0.1, 0.4, 0.2, 0.3], adapter_weights=adapter, energies=energies, latent=latent)
    d = TopKRouting(4, 2).select(o)
    assert active(d) == [1, 3]
    np.testing.assert_array_equal(d.weights, np.array([2.5, 0.7], dtype=np.float32))
    assert d.state.adapter_weights is adapter
    assert d.state.energies is energies
    assert d.state.latent is latent
    # Gates are still the router softmax, not the adapter.
    np.testing.assert_allclose(d.state.gates, [0.1, 0.4, 0.2, 0.3], rtol=1e-6)
    dense = DenseRouting(4).select(o)
    np.testing.assert_array_equal(dense.weights, adapter)


def test_passthrough_none_when_absent() -> None:
    d = DenseRouting(2).select(out_for([0.5, 0.5]))
    assert d.state.adapter_weights is None
    assert d.state.energies is None
    assert d.state.latent is None


# --------------------------------------------------------------------------- mass


@pytest.mark.parametrize(
    ("tau", "expected"),
    [
        (0.3, [0]),
        (0.5, [0]),  # mass exactly at tau: 0.5 reaches 0.5
        (0.5000001, [0, 1]),
        (0.8, [0, 1]),  # 0.5 + 0.3 exactly at tau
        (0.8000001, [0, 1, 2]),
        (1.0, [0, 1, 2]),
    ],
)
def test_mass_linear_hand_computed(tau: float, expected: list[int]) -> None:
    d = MassRouting(3, tau).select(out_for([0.5, 0.3, 0.2]))
    check_contract(d, 3)
    assert active(d) == expected


def test_mass_linear_unsorted_gates_and_weights() -> None:
    d = MassRouting(4, 0.75).select(out_for([0.1, 0.45, 0.15, 0.3]))
    assert active(d) == [1, 3]  # 0.45 + 0.30 = 0.75 reaches tau
    np.testing.assert_allclose(d.weights, [0.45 / 0.75, 0.3 / 0.75], rtol=1e-6)


def test_mass_quadratic_hand_computed() -> None:
    # gates 0.5, 0.3, 0.2 -> squares 0.25, 0.09, 0.04 (sum 0.38) -> shares
    # 0.65789, 0.23684, 0.10526; cumulative 0.65789, 0.89474, 1.0.
    gates = [0.5, 0.3, 0.2]
    q = lambda tau: active(MassRouting(3, tau, mass="quadratic").select(out_for(gates)))  # noqa: E731
    assert q(0.65) == [0]
    assert q(0.66) == [0, 1]
    assert q(0.89) == [0, 1]
    assert q(0.90) == [0, 1, 2]
    # Quadratic share exactly at tau: gates 0.6, 0.2, 0.2 -> 0.36 / 0.44 = 9/11.
    d = MassRouting(3, 9 / 11, mass="quadratic").select(out_for([0.6, 0.2, 0.2]))
    assert active(d) == [0]


@pytest.mark.parametrize(("tau", "linear", "quadratic"), [(0.6, 2, 1), (0.85, 3, 2)])
def test_mass_quadratic_differs_from_linear(tau: float, linear: int, quadratic: int) -> None:
    o = out_for([0.5, 0.3, 0.2])
    assert MassRouting(3, tau, mass="linear").select(o).k == linear
    assert MassRouting(3, tau, mass="quadratic").select(o).k == quadratic


def test_mass_clamps_to_k_min_and_k_max() -> None:
    o = out_for([0.7, 0.1, 0.1, 0.1])
    assert active(MassRouting(4, 0.5).select(o)) == [0]
    # k_min raises the count; the tie among 0.1s breaks toward the lower index.
    assert active(MassRouting(4, 0.5, k_min=2).select(o)) == [0, 1]
    assert active(MassRouting(4, 0.5, k_min=3).select(o)) == [0, 1, 2]
    # tau=1 wants all four, k_max caps it; k_max=0 means all experts.
    assert active(MassRouting(4, 1.0, k_max=2).select(o)) == [0, 1]
    assert active(MassRouting(4, 1.0, k_max=0).select(o)) == [0, 1, 2, 3]
    assert MassRouting(4, 1.0, k_max=0).k_max == 4


def test_mass_all_equal_gates() -> None:
    o = RouterOutputs(gate_logits=np.zeros(4))
    assert active(MassRouting(4, 0.5).select(o)) == [0, 1]  # 2 * 0.25 reaches 0.5
    assert active(MassRouting(4, 0.51).select(o)) == [0, 1, 2]
    assert active(MassRouting(4, 0.5, mass="quadratic").select(o)) == [0, 1]


# --------------------------------------------------------------------------- sticky


def sticky_topk1(margin: float = 0.1, dwell: int = 0, e: int = 4) -> StickyRouting:
    return StickyRouting(e, TopKRouting(e, 1), margin=margin, min_dwell_chunks=dwell)


def test_sticky_margin_just_below_does_not_switch_just_above_does() -> None:
    s = sticky_topk1(margin=0.1)
    d0 = s.select(out_for([0.5, 0.3, 0.1, 0.1]))
    assert active(d0) == [0]
    assert d0.state.switched is False
    # Challenger 1 leads by 0.09 < margin: keep the incumbent although 1 is top now.
    d1 = s.select(out_for([0.40, 0.49, 0.06, 0.05]))
    assert active(d1) == [0]
    assert d1.state.switched is False
    np.testing.assert_allclose(d1.weights, [1.0])
    assert d1.dominant == 1  # operators still see who leads
    # Leads by 0.11 > margin: switch to the base's choice.
    d2 = s.select(out_for([0.40, 0.51, 0.05, 0.04]))
    assert active(d2) == [1]
    assert d2.state.switched is True
    d3 = s.select(out_for([0.40, 0.51, 0.05, 0.04]))
    assert d3.state.switched is False


def test_sticky_margin_zero_needs_a_strict_win() -> None:
    s = sticky_topk1(margin=0.0)
    assert active(s.select(out_for([0.4, 0.3, 0.2, 0.1]))) == [0]
    # Exact tie with the incumbent (equal logits): no switch.
    tie = RouterOutputs(gate_logits=np.array([1.0, 1.0, 0.0, 0.0]))
    assert active(s.select(tie)) == [0]
    assert active(s.select(out_for([0.3, 0.4, 0.2, 0.1]))) == [1]


def test_sticky_dwell_blocks_early_switches() -> None:
    s = sticky_topk1(margin=0.1, dwell=3)
    strong1 = out_for([0.1, 0.8, 0.05, 0.05])
    strong2 = out_for([0.1, 0.05, 0.8, 0.05])
    assert active(s.select(out_for([0.8, 0.1, 0.05, 0.05]))) == [0]  # adopted: decision 0
    assert active(s.select(strong1)) == [0]  # 1 decision since adoption
    assert active(s.select(strong1)) == [0]  # 2
    d = s.select(strong1)  # 3 >= min_dwell_chunks: allowed
    assert active(d) == [1]
    assert d.state.switched is True
    # The dwell restarts at the switch.
    assert active(s.select(strong2)) == [1]
    assert active(s.select(strong2)) == [1]
    d = s.select(strong2)
    assert active(d) == [2]
    assert d.state.switched is True


def test_sticky_dwell_one_equals_dwell_zero() -> None:
    for dwell in (0, 1):
        s = sticky_topk1(dwell=dwell)
        s.select(out_for([0.8, 0.1, 0.05, 0.05]))
        assert active(s.select(out_for([0.1, 0.8, 0.05, 0.05]))) == [1]


def test_sticky_weakest_incumbent_is_the_reference() -> None:
    s = StickyRouting(4, TopKRouting(4, 2), margin=0.1, min_dwell_chunks=0)
    assert active(s.select(out_for([0.4, 0.3, 0.2, 0.1]))) == [0, 1]
    # Weakest incumbent 1 has 0.20; challenger 2 has 0.29: 0.09 < margin, keep.
    d = s.select(out_for([0.45, 0.20, 0.29, 0.06]))
    assert active(d) == [0, 1]
    np.testing.assert_allclose(d.weights, [0.45 / 0.65, 0.20 / 0.65], rtol=1e-6)
    # Challenger 2 at 0.31 beats 0.20 by 0.11: switch to top-2 = {0, 2}.
    d = s.select(out_for([0.45, 0.20, 0.31, 0.04]))
    assert active(d) == [0, 2]
    assert d.state.switched is True


def test_sticky_with_mass_base_and_reset() -> None:
    base = MassRouting(4, 0.7, k_min=1, k_max=3)
    s = StickyRouting(4, base, margin=0.05, min_dwell_chunks=0)
    assert active(s.select(out_for([0.75, 0.1, 0.1, 0.05]))) == [0]
    # Mass of the incumbent drops below tau but no challenger beats 0.45 by 0.05: stick.
    assert active(s.select(out_for([0.45, 0.35, 0.15, 0.05]))) == [0]
    # Challenger 1 at 0.55 vs 0.40: switch to the mass choice {1, 0} (0.55 + 0.40 >= 0.7).
    d = s.select(out_for([0.40, 0.55, 0.03, 0.02]))
    assert active(d) == [0, 1]
    assert d.state.switched is True
    s.reset()
    assert s.incumbent is None
    d = s.select(out_for([0.05, 0.1, 0.8, 0.05]))
    assert active(d) == [2]
    assert d.state.switched is False


def test_sticky_all_experts_active_never_switches() -> None:
    s = StickyRouting(3, TopKRouting(3, 3), margin=0.0, min_dwell_chunks=0)
    assert active(s.select(out_for([0.6, 0.3, 0.1]))) == [0, 1, 2]
    d = s.select(out_for([0.1, 0.1, 0.8]))
    assert active(d) == [0, 1, 2]
    assert d.state.switched is False


def test_sticky_adamoe_weights_follow_incumbent() -> None:
    s = sticky_topk1(margin=0.5)
    adapter = np.array([1.5, 0.5, 0.25, 0.125], dtype=np.float32)
    s.select(out_for([0.7, 0.1, 0.1, 0.1], adapter_weights=adapter))
    d = s.select(out_for([0.3, 0.5, 0.1, 0.1], adapter_weights=adapter))
    assert active(d) == [0]
    np.testing.assert_array_equal(d.weights, np.array([1.5], dtype=np.float32))


def test_sticky_weights_finite_when_incumbent_gates_underflow() -> None:
    s = sticky_topk1(margin=2.0)  # margin above 1: never switches
    s.select(RouterOutputs(gate_logits=np.array([0.0, -1.0, -1.0, -1.0])))
    d = s.select(RouterOutputs(gate_logits=np.array([-2000.0, 0.0, 0.0, 0.0])))
    assert active(d) == [0]
    np.testing.assert_array_equal(d.weights, np.array([1.0], dtype=np.float32))
    assert float(d.state.gates[0]) == 0.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_are_rejected(bad: float) -> None:
    logits = np.array([0.0, 1.0, bad, 0.5])
    with pytest.raises(ValueError, match=r"gate_logits\[2\] is (nan|inf|-inf)"):
        TopKRouting(4, 2).select(RouterOutputs(gate_logits=logits))


def test_wrong_length_and_shape_are_rejected() -> None:
    s = DenseRouting(4)
    with pytest.raises(ValueError, match=r"4 values .* got shape \(3,\)"):
        s.select(RouterOutputs(gate_logits=np.zeros(3)))
    with pytest.raises(ValueError, match=r"got shape \(1, 4\)"):
        s.select(RouterOutputs(gate_logits=np.zeros((1, 4))))
    with pytest.raises(ValueError, match=r"adapter_weights must be .* got shape \(2,\)"):
        s.select(RouterOutputs(gate_logits=np.zeros(4), adapter_weights=np.ones(2)))
    with pytest.raises(ValueError, match=r"adapter_weights\[1\] is nan"):
        s.select(
            RouterOutputs(gate_logits=np.zeros(4), adapter_weights=np.array([1, np.nan, 1, 1]))
        )
    with pytest.raises(ValueError, match=r"energies must be .* got shape \(5,\)"):
        s.select(RouterOutputs(gate_logits=np.zeros(4), energies=np.ones(5)))


def test_invalid_state_is_not_committed_by_a_rejected_input() -> None:
    s = TopKRouting(3, 1)
    s.select(out_for([0.6, 0.3, 0.1]))
    with pytest.raises(ValueError):
        s.select(RouterOutputs(gate_logits=np.array([np.nan, 0.0, 0.0])))
    assert s.select(out_for([0.6, 0.3, 0.1])).state.switched is False


# --------------------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("cfg", "cls"),
    [
        (RoutingConfig(strategy="dense"), DenseRouting),
        (RoutingConfig(strategy="topk", k=2), TopKRouting),
        (RoutingConfig(strategy="mass", tau=0.8, mass="quadratic"), MassRouting),
        (RoutingConfig(strategy="sticky"), StickyRouting),
    ],
)
def test_make_strategy_builds_each(cfg: RoutingConfig, cls: type) -> None:
    s = make_strategy(cfg, 4)
    assert isinstance(s, cls)
    assert isinstance(s, RoutingStrategy)
    assert s.name == cfg.strategy
    check_contract(s.select(out_for([0.1, 0.4, 0.2, 0.3])), 4)


def test_make_strategy_passes_parameters() -> None:
    s = make_strategy(
        RoutingConfig(
            strategy="sticky",
            sticky_base="mass",
            tau=0.6,
            k_min=2,
            k_max=3,
            margin=0.2,
            min_dwell_chunks=5,
        ),
        6,
    )
    assert isinstance(s, StickyRouting)
    assert isinstance(s.base, MassRouting)
    assert (s.base.tau, s.base.k_min, s.base.k_max) == (0.6, 2, 3)
    assert (s.margin, s.min_dwell_chunks) == (0.2, 5)
    m = make_strategy(RoutingConfig(strategy="mass", k_max=0), 6)
    assert isinstance(m, MassRouting)
    assert m.k_max == 6


def test_make_strategy_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"routing.k 5 exceeds the number of experts \(4\)"):
        make_strategy(RoutingConfig(strategy="topk", k=5), 4)
    with pytest.raises(ValueError, match=r"routing.k 5 exceeds"):
        make_strategy(RoutingConfig(strategy="sticky", k=5), 4)
    with pytest.raises(ValueError, match=r"k_min must be in 1..4, got 5"):
        make_strategy(RoutingConfig(strategy="mass", k_min=5), 4)
    with pytest.raises(ValueError, match=r"k_max must be in 0..4, got 6"):
        make_strategy(RoutingConfig(strategy="mass", k_max=6), 4)
    with pytest.raises(ValueError, match=r"num_experts must be >= 1, got 0"):
        make_strategy(RoutingConfig(strategy="dense"), 0)
    with pytest.raises(ValueError, match=r"bundle's default"):
        make_strategy(RoutingConfig(), 4)
    # k is irrelevant to dense: a one-expert bundle with the default k=2 is fine.
    assert make_strategy(RoutingConfig(strategy="dense"), 1).select(out_for([1.0])).k == 1


def test_constructor_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"k must be in 1..3, got 0"):
        TopKRouting(3, 0)
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\], got 1.5"):
        MassRouting(3, 1.5)
    with pytest.raises(ValueError, match=r"k_max 2 must be >= k_min 3"):
        MassRouting(4, 0.5, k_min=3, k_max=2)
    with pytest.raises(ValueError, match=r"mass must be 'linear' or 'quadratic', got 'cubic'"):
        MassRouting(3, 0.5, mass="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"margin must be .* got -0.1"):
        StickyRouting(3, TopKRouting(3, 1), margin=-0.1)
    with pytest.raises(ValueError, match=r"sticky base has 4 experts, expected 3"):
        StickyRouting(3, TopKRouting(4, 1))


def test_combination_weights_per_manifest_combination() -> None:
    """Each ``combination`` weights the same active set as its family trains it."""
    adapter = np.array([0.5, -0.2, 0.3, 0.9])
    o = out_for([0.1, 0.4, 0.2, 0.3], adapter_weights=adapter)
    cfg = RoutingConfig(strategy="topk", k=2)
    want = {
        "gates": [0.4 / 0.7, 0.3 / 0.7],
        "adapter": [-0.2, 0.9],
        "router_plus_adapter": [0.4 - 0.2, 0.3 + 0.9],
        "unit": [1.0, 1.0],
        None: [-0.2, 0.9],  # before the field: adapter weights when present
    }
    for combination, w in want.items():
        d = make_strategy(cfg, 4, combination).select(o)  # type: ignore[arg-type]
        assert active(d) == [1, 3]
        np.testing.assert_allclose(d.weights, w, rtol=1e-6)
    sticky = make_strategy(RoutingConfig(strategy="sticky", k=2), 4, "unit")
    assert sticky.select(o).weights.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="'router_plus_adapter' needs adapter_weights"):
        make_strategy(cfg, 4, "router_plus_adapter").select(out_for([0.1, 0.4, 0.2, 0.3]))
    with pytest.raises(ValueError, match="combination must be one of"):
        make_strategy(cfg, 4, "sum")  # type: ignore[arg-type]
