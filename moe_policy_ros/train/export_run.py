"""Export a model under training with its run's joints, statistics and provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_policy_ros.models.export import export_bundle, trained_export_kwargs
from moe_policy_ros.models.families import MoEModel


def export_trained(model: MoEModel, checkpoint: dict[str, Any], out: str | Path,
                   *, name: str) -> Path:
    """Export ``model`` (the checkpoint's policy weights) to the bundle ``out``; returns the
    manifest path. ``checkpoint`` is the dict :meth:`Trainer.checkpoint` builds."""
    return export_bundle(model, out, name=name, **trained_export_kwargs(checkpoint))
