"""`moe-policy-ros export`: a checkpoint (or a fresh reference model) to a parity-checked
bundle. The exporter is torch code and lives in :mod:`moe_policy_ros.models.export`."""

from __future__ import annotations

from moe_policy_ros.models.export import add_export_arguments as add_arguments
from moe_policy_ros.models.export import run_export as run

__all__ = ["add_arguments", "run"]
