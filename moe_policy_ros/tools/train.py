"""`moe-policy-ros train`: train an MoE policy family on recorded episodes
(implementation: :mod:`moe_policy_ros.train.cli`; needs torch)."""

from __future__ import annotations

from moe_policy_ros.train.cli import add_arguments, run

__all__ = ["add_arguments", "run"]
