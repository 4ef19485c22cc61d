"""Torch backend: runs the reference model rebuilt from a weights-only checkpoint.

Bundles ship ONNX + manifest only; the checkpoint the stages were exported from is given
separately (``make_backend("torch", checkpoint=...)``, ``policy.checkpoint``) and must hash to
the bundle's ``provenance.checkpoint_sha256``. The stage graphs are not executed; instead
``load_stage`` (given the verified bundle) rebuilds the reference model with the injected
``model_loader`` (the core does not import ``models/``; callers pass
``moe_policy_ros.models.export.load_checkpoint``, ``torch.load(weights_only=True)``: no
arbitrary unpickling, through :func:`moe_policy_ros.backend_factory.build_backend`) and runs
``encoder_module`` or
``expert_module``, whose positional inputs and outputs match the ONNX graph's, under
``torch.inference_mode``. On a GPU the encoder stage (static shapes) is captured into a CUDA
graph after a warm-up and replayed.

Useful as the parity reference and for debugging; production runs ONNX Runtime or TensorRT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moe_policy_ros.core.backends.base import BackendUnavailable, parse_device
from moe_policy_ros.core.backends.onnx_io import graph_io
from moe_policy_ros.core.io import sha256_file

if TYPE_CHECKING:
    from moe_policy_ros.core.bundle import LoadedBundle

ModelLoader = Callable[[Path], Any]  # checkpoint path -> torch model

__all__ = ["TorchBackend", "TorchStage", "reference_model"]


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(
            "torch backend: torch is not installed (pip install -r requirements/torch.txt); "
            "use backend onnxruntime or tensorrt instead"
        ) from None
    return torch


def reference_model(
    bundle: LoadedBundle, checkpoint: str | Path | None, loader: ModelLoader | None
) -> Any:
    """The torch reference model of a verified bundle (eval mode, on the CPU), rebuilt by
    ``loader`` from the checkpoint it was exported from (checked against
    ``provenance.checkpoint_sha256``)."""
    _import_torch()
    want = bundle.manifest.provenance.checkpoint_sha256
    if checkpoint is None:
        raise BackendUnavailable(
            f"torch backend: no checkpoint given for bundle {bundle.path}; bundles ship ONNX "
            "only, so pass the weights-only checkpoint it was exported from "
            "(policy.checkpoint, or export with --save-checkpoint)"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise BackendUnavailable(f"torch backend: checkpoint {path} not found")
    if not want:
        raise BackendUnavailable(
            f"torch backend: bundle {bundle.path} records no provenance.checkpoint_sha256, so "
            f"{path} cannot be verified as its weights"
        )
    got = sha256_file(path)
    if got != want:
        raise BackendUnavailable(
            f"torch backend: {path} is not the checkpoint bundle {bundle.path} was exported "
            f"from: SHA-256 expected {want}, got {got}"
        )
    if loader is None:
        raise BackendUnavailable(
            "torch backend: no model loader given (make_backend(..., model_loader=...); "
            "moe_policy_ros.backend_factory.build_backend injects the models/ one)"
        )
    model = loader(path)
    model.eval()
    return model


class TorchStage:
    def __init__(self, torch: Any, module: Any, input_names: list[str], output_names: list[str],
                 device: Any, cuda_graph: bool) -> None:
        self._torch = torch
        self.module = module
        self.input_names = input_names
        self.output_names = output_names
        self._device = device
        self._use_graph = cuda_graph
        self._graph: Any = None
        self._static_in: list[Any] = []
        self._static_out: list[Any] = []
        self._graph_key: tuple[tuple[int, ...], ...] | None = None

    def _call(self, args: list[Any]) -> list[Any]:
        out = self.module(*args)
        if isinstance(out, dict):
            return [out[n] for n in self.output_names]
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(outs) != len(self.output_names):
            raise RuntimeError(
                f"torch stage returned {len(outs)} outputs, the graph has "
                f"{len(self.output_names)} ({self.output_names})"
            )
        return outs

    def _capture(self, args: list[Any]) -> None:
        torch = self._torch
        self._static_in = [a.clone() for a in args]
        side = torch.cuda.Stream(device=self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._call(self._static_in)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._call(self._static_in)
        self._graph = graph
        self._graph_key = tuple(tuple(a.shape) for a in args)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"stage inputs missing: {missing} (expected {self.input_names})")
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self._device)
                    for n in self.input_names]
            if self._use_graph:
                key = tuple(tuple(a.shape) for a in args)
                if self._graph is None or key != self._graph_key:
                    self._capture(args)
                for s, a in zip(self._static_in, args, strict=True):
                    s.copy_(a)
                self._graph.replay()
                outs = self._static_out
            else:
                outs = self._call(args)
            return {n: o.detach().cpu().numpy().copy()
                    for n, o in zip(self.output_names, outs, strict=True)}


class TorchBackend:
    """``torch`` kind: the reference model, on the CPU or a CUDA GPU."""

    def __init__(
        self,
        device: str = "cpu",
        *,
        cuda_graphs: bool = True,
        checkpoint: str | Path | None = None,
        model_loader: ModelLoader | None = None,
    ) -> None:
        torch = _import_torch()
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.model_loader = model_loader
        self._torch = torch
        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"torch backend: device {device!r} requested but torch {torch.__version__} "
                f"sees no CUDA GPU (CUDA build: {torch.version.cuda})"
            )
        self.device = torch.device("cuda", index) if kind == "cuda" else torch.device("cpu")
        self.cuda_graphs = cuda_graphs and kind == "cuda"
        self.name = "torch-cuda" if kind == "cuda" else "torch-cpu"
        self._models: dict[Path, Any] = {}

    def describe(self) -> str:
        dev = str(self.device)
        if self.device.type == "cuda":
            dev += f" ({self._torch.cuda.get_device_name(self.device)})"
        graphs = ", CUDA graph for the encoder" if self.cuda_graphs else ""
        return f"{self.name} (torch {self._torch.__version__}, {dev}, inference_mode{graphs})"

    def _model(self, bundle: LoadedBundle) -> Any:
        if bundle.path not in self._models:
            model = reference_model(bundle, self.checkpoint, self.model_loader)
            self._models[bundle.path] = model.to(self.device)
        return self._models[bundle.path]

    def load_stage(self, bundle: LoadedBundle, stage: str) -> TorchStage:
        name = stage
        attr = {"encoder": "encoder_module", "experts": "expert_module"}.get(name)
        if attr is None:
            raise ValueError(f"torch backend: unknown stage {name!r} (encoder or experts)")
        module = getattr(self._model(bundle), attr)
        ins, outs, _ = graph_io(bundle.stage_path(name))
        return TorchStage(self._torch, module, ins, outs, self.device,
                          cuda_graph=self.cuda_graphs and name == "encoder")
