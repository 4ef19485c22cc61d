"""Backends with the torch model loader injected: the one place that wires ``models/`` in.

The core (:mod:`moe_policy_ros.core.backends`) never imports ``models/`` (a test enforces
it): the torch backend gets the function that rebuilds a model from a checkpoint from its
caller. :func:`build_backend` is :func:`~moe_policy_ros.core.backends.make_backend` with that
function supplied for ``kind="torch"``; any other kind imports no torch. The policy node, the
bench and the doctor build their backends here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_policy_ros.core.backends import Backend, BackendUnavailable, make_backend

__all__ = ["build_backend"]


def build_backend(kind: str, device: str = "cpu", **options: Any) -> Backend:
    """``make_backend(kind, device, **options)``, with ``model_loader`` for ``torch``."""
    if kind.strip().lower() == "torch" and options.get("model_loader") is None:
        options["model_loader"] = _load_checkpoint
    return make_backend(kind, device, **options)


def _load_checkpoint(path: Path) -> Any:
    try:
        from moe_policy_ros.models.export import load_checkpoint
    except ImportError as err:
        raise BackendUnavailable(
            f"torch backend: moe_policy_ros.models.export is unavailable ({err})"
        ) from None
    return load_checkpoint(path)  # torch.load(weights_only=True)
