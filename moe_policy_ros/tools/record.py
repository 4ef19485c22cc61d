"""`moe-policy-ros record`: scripted ALOHA demonstrations to HDF5 episodes
(implementation: :mod:`moe_policy_ros.data.record`)."""

from __future__ import annotations

from moe_policy_ros.data.record import add_arguments, run

__all__ = ["add_arguments", "run"]
