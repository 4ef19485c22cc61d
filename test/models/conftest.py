"""The model tests' shared tiny size (test/helpers/tiny_models.py) as fixtures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers.tiny_models import TINY

from moe_policy_ros.models import MoEModel, build_model


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, Any]:
    """The tiny model size every model test builds at (fast on 2 CPU cores)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., MoEModel]:
    """``tiny_model(family, **overrides)``: a freshly seeded (``torch.manual_seed(0)``) model
    of ``family`` at the tiny size, in training mode."""

    def build(family: str, **over: Any) -> MoEModel:
        torch.manual_seed(0)
        return build_model({"family": family, **TINY, **over})

    return build
