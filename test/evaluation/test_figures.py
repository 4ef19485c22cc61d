"""evaluation.figures.routing_label: the routing a results row names."""

from __future__ import annotations

from moe_policy_ros.evaluation.figures import routing_label


def test_bundle_default_row_names_the_effective_k() -> None:
    doc = {"routing": {"strategy": None, "k": None, "tau": None}, "strategy": "topk",
           "strategy_k": 2}
    assert routing_label(doc) == "top-2 (bundle default)"


def test_override_names_its_own_parameters() -> None:
    doc = {"routing": {"strategy": "mass", "k": None, "tau": 0.7}, "strategy": "mass",
           "strategy_tau": 0.7}
    assert routing_label(doc) == "mass tau=0.7"
    assert routing_label({"routing": {"strategy": "topk", "k": 1}, "strategy": "topk",
                          "strategy_k": 1}) == "top-1"


def test_an_older_output_without_the_effective_k_says_so_plainly() -> None:
    assert routing_label({"routing": {}, "strategy": "topk"}) == "top-k (bundle default)"
