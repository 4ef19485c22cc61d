"""Inference backends: ONNX Runtime (CPU/CUDA/TensorRT EP), native TensorRT, torch.

``make_backend(kind, device)`` builds one. A named kind that cannot run here raises
:class:`BackendUnavailable` naming what is missing; it never falls back. ``auto`` picks, for a
GPU device, TensorRT (``tensorrt`` importable and a GPU visible) else ONNX Runtime CUDA (its
provider available) else ONNX Runtime CPU, and for ``device="cpu"`` ONNX Runtime CPU; the
choice and the reasons for skipping the better options are in ``describe()`` and the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe_policy_ros.core.backends.base import Backend, BackendUnavailable, Stage, parse_device

if TYPE_CHECKING:
    from moe_policy_ros.core.bundle import LoadedBundle

__all__ = [
    "KINDS",
    "AutoBackend",
    "Backend",
    "BackendUnavailable",
    "Stage",
    "make_backend",
    "parse_device",
]

KINDS: tuple[str, ...] = (
    "auto",
    "onnxruntime",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "tensorrt",
    "torch",
)

_log = logging.getLogger(__name__)


class AutoBackend:
    """The backend ``auto`` chose, with the reasons (delegates everything to it)."""

    def __init__(self, inner: Backend, reasons: list[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.reasons = reasons

    def load_stage(self, bundle: LoadedBundle, stage: str) -> Stage:
        return self.inner.load_stage(bundle, stage)

    def describe(self) -> str:
        why = "; ".join(self.reasons)
        return f"auto -> {self.inner.describe()} [{why}]"


def make_backend(
    kind: str,
    device: str = "cpu",
    *,
    intra_op_threads: int = 0,
    fp16: bool = False,
    cache_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    model_loader: Callable[[Path], Any] | None = None,
) -> Backend:
    """Build a backend by kind (see :data:`KINDS`) for ``device`` ("cpu", "cuda", "cuda:N").

    ``intra_op_threads`` applies to ONNX Runtime (0 = its default); ``fp16`` and ``cache_dir``
    to the TensorRT engines (native and the ONNX Runtime TensorRT provider); ``checkpoint``
    (the weights-only checkpoint a bundle was exported from) and ``model_loader`` (checkpoint
    path -> torch model; the core does not import ``models/``, so the caller injects it, see
    :func:`moe_policy_ros.backend_factory.build_backend`) to the torch backend.
    """
    from moe_policy_ros.core.backends.ort import OrtBackend

    k = kind.strip().lower()
    dev, index = parse_device(device)
    if k == "auto":
        return _auto(dev, index, intra_op_threads, fp16, cache_dir)
    if k == "onnxruntime":
        return OrtBackend("cpu" if dev == "cpu" else "cuda", index,
                          intra_op_threads=intra_op_threads)
    if k == "onnxruntime-cuda":
        return OrtBackend("cuda", index, intra_op_threads=intra_op_threads)
    if k == "onnxruntime-tensorrt":
        return OrtBackend("tensorrt", index, intra_op_threads=intra_op_threads, trt_fp16=fp16,
                          trt_cache_dir=cache_dir)
    if k == "tensorrt":
        from moe_policy_ros.core.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(f"cuda:{index}" if dev == "cuda" else device, fp16=fp16,
                               cache_dir=cache_dir)
    if k == "torch":
        from moe_policy_ros.core.backends.torch_backend import TorchBackend

        return TorchBackend(device, checkpoint=checkpoint, model_loader=model_loader)
    raise ValueError(f"unknown backend kind {kind!r}; expected one of {list(KINDS)}")


def _auto(dev: str, index: int, threads: int, fp16: bool, cache_dir: str | Path | None,
          ) -> AutoBackend:
    from moe_policy_ros.core.backends.ort import OrtBackend

    reasons: list[str] = []
    if dev == "cpu":
        reasons.append("device 'cpu' requested: GPU backends not considered")
    else:
        try:
            from moe_policy_ros.core.backends.tensorrt import TensorRTBackend

            chosen: Backend = TensorRTBackend(f"cuda:{index}", fp16=fp16, cache_dir=cache_dir)
            reasons.append("tensorrt importable and a CUDA GPU visible")
            return _report(chosen, reasons)
        except BackendUnavailable as err:
            reasons.append(f"tensorrt skipped: {err}")
        try:
            chosen = OrtBackend("cuda", index, intra_op_threads=threads)
            reasons.append("CUDAExecutionProvider available")
            return _report(chosen, reasons)
        except BackendUnavailable as err:
            reasons.append(f"onnxruntime-cuda skipped: {err}")
    return _report(OrtBackend("cpu", intra_op_threads=threads), reasons)


def _report(chosen: Backend, reasons: list[str]) -> AutoBackend:
    auto = AutoBackend(chosen, reasons)
    _log.info("backend auto: %s", auto.describe())
    return auto
