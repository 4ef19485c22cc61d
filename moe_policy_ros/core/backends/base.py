"""Backend and Stage protocols, device parsing and the ``BackendUnavailable`` error.

A backend turns one ONNX stage file of a verified bundle into a :class:`Stage`, a callable
from named numpy arrays to named numpy arrays. Stages are not thread-safe: one policy (one
inference thread) owns its stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "BackendUnavailable", "Stage", "parse_device"]


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

    def load_stage(self, name: str, onnx_path: Path) -> Stage: ...

    def describe(self) -> str: ...


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
