"""Backend and Stage protocols, device parsing and the ``BackendUnavailable`` error.

A backend turns one stage of a verified bundle (the
:class:`~moe_policy_ros.core.bundle.LoadedBundle` and the stage name; a backend never looks
for the bundle on disk again) into a :class:`Stage`, a callable from named numpy arrays to
named numpy arrays. Stages are not thread-safe: one policy (one inference thread) owns its
stages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from moe_policy_ros.core.bundle import LoadedBundle

__all__ = ["Backend", "BackendUnavailable", "Stage", "default_cache_dir", "parse_device"]


class BackendUnavailable(RuntimeError):
    """The requested backend (or something it needs: a package, a provider, a GPU) is missing.

    The message names what is missing; no backend ever falls back silently.
    """


@runtime_checkable
class Stage(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class Backend(Protocol):
    name: str

    def load_stage(self, bundle: LoadedBundle, stage: str) -> Stage: ...

    def describe(self) -> str: ...


def default_cache_dir() -> Path:
    """Where backends cache built engines: ``$MOE_POLICY_ROS_ENGINE_CACHE``, else
    ``$XDG_CACHE_HOME/moe_policy_ros`` (``~/.cache/moe_policy_ros``). Native TensorRT engines
    go to its ``engines/``, ONNX Runtime's TensorRT provider caches to its ``ort-trt/``."""
    env = os.environ.get("MOE_POLICY_ROS_ENGINE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moe_policy_ros"


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda", "gpu" -> ("cuda", 0); "cuda:1" -> ("cuda", 1)."""
    d = device.strip().lower()
    if d == "cpu":
        return "cpu", 0
    if d in ("cuda", "gpu", "auto"):
        return "cuda", 0
    for prefix in ("cuda:", "gpu:"):
        if d.startswith(prefix) and d[len(prefix):].isdigit():
            return "cuda", int(d[len(prefix):])
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (got {device!r})")
