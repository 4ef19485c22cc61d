"""Native TensorRT 10 backend: engines built from the ONNX stages, cached on disk.

* **Build.** ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only mode in
  TensorRT 10) -> ``trt.OnnxParser.parse_from_file`` -> builder config with a workspace pool
  limit, optional ``BuilderFlag.FP16``, and one optimisation profile in which every dynamic dim
  (the active-expert count ``k`` of the expert stage) spans ``1..E`` -> the serialised engine
  from ``build_serialized_network``.
* **Cache.** Engines are stored under ``cache_dir`` (default ``engines/`` in
  :func:`~moe_policy_ros.core.backends.base.default_cache_dir`) with a name keyed by the
  ONNX file's SHA-256, the TensorRT version, the GPU name, the FP16 flag and the
  profile's max k, so that any of them changing builds a new engine. A cached engine that
  fails to deserialise is rebuilt.
* **Run.** Name-based I/O (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
  ``set_input_shape``, ``set_tensor_address``) and ``execute_async_v3`` on a dedicated CUDA
  stream. Device and pinned host buffers are torch tensors (torch is how this package talks to
  CUDA), one set per input-shape signature (one per ``k`` for the expert stage).
* **CUDA graphs.** Shapes are static per signature, so after one ordinary run (TensorRT does
  its shape-dependent setup there) the enqueue is captured into a CUDA graph and later runs
  replay it; input copies happen before and output copies after the replay on the same stream.

TensorRT cannot be installed on the CPU-only development machine; the tests of this module
skip with that reason and run on a GPU host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moe_policy_ros.core.backends.base import (
    BackendUnavailable,
    default_cache_dir,
    parse_device,
)
from moe_policy_ros.core.backends.onnx_io import graph_io, shape_profile
from moe_policy_ros.core.io import sha256_file

if TYPE_CHECKING:
    from moe_policy_ros.core.bundle import LoadedBundle

__all__ = ["TensorRTBackend", "TensorRTStage", "engine_cache_key"]


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable(
            f"tensorrt backend: the 'tensorrt' Python package is not installed ({err}); "
            "install TensorRT 10 (pip install tensorrt) on a host with an NVIDIA GPU"
        ) from None
    return trt


def _import_torch_cuda(what: str) -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(
            f"{what}: needs torch with CUDA for device buffers, streams and CUDA graphs; "
            "torch is not installed"
        ) from None
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"{what}: no CUDA GPU is visible (torch {torch.__version__}: "
            f"torch.cuda.is_available() is False, CUDA build {torch.version.cuda})"
        )
    return torch


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, fp16: bool,
                     max_k: int) -> str:
    ident = json.dumps(
        {"onnx": onnx_sha256, "trt": trt_version, "gpu": gpu_name, "fp16": fp16, "max_k": max_k},
        sort_keys=True,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


class _Slot:
    """Buffers (and optionally a CUDA graph) for one input-shape signature."""

    def __init__(self) -> None:
        self.dev: dict[str, Any] = {}
        self.host: dict[str, Any] = {}
        self.graph: Any = None
        self.runs = 0


class TensorRTStage:
    def __init__(self, trt: Any, torch: Any, engine: Any, device_index: int,
                 cuda_graphs: bool) -> None:
        self._trt = trt
        self._torch = torch
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("tensorrt: could not create an execution context")
        self._device = torch.device("cuda", device_index)
        self._stream = torch.cuda.Stream(device=self._device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inp = trt.TensorIOMode.INPUT
        self.input_names: list[str] = [n for n in names if engine.get_tensor_mode(n) == inp]
        self.output_names: list[str] = [n for n in names if engine.get_tensor_mode(n) != inp]
        self._np_dtype = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._cuda_graphs = cuda_graphs
        self._slots: dict[tuple[tuple[int, ...], ...], _Slot] = {}
        self._bound: tuple[tuple[int, ...], ...] | None = None

    def _torch_dtype(self, name: str) -> Any:
        return self._torch.from_numpy(np.empty(0, self._np_dtype[name])).dtype

    def _slot(self, key: tuple[tuple[int, ...], ...]) -> _Slot:
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        torch = self._torch
        slot = _Slot()
        for n, shape in zip(self.input_names, key, strict=True):
            if not self.context.set_input_shape(n, shape):
                raise ValueError(f"tensorrt: input {n!r} shape {shape} is outside the engine's "
                                 "optimisation profile")
            dt = self._torch_dtype(n)
            slot.dev[n] = torch.empty(shape, dtype=dt, device=self._device)
            slot.host[n] = torch.empty(shape, dtype=dt, pin_memory=True)
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            dt = self._torch_dtype(n)
            slot.dev[n] = torch.empty(shape, dtype=dt, device=self._device)
            slot.host[n] = torch.empty(shape, dtype=dt, pin_memory=True)
        self._slots[key] = slot
        self._bound = None
        return slot

    def _bind(self, key: tuple[tuple[int, ...], ...], slot: _Slot) -> None:
        if self._bound == key:
            return
        for n, shape in zip(self.input_names, key, strict=True):
            self.context.set_input_shape(n, shape)
        for n, t in slot.dev.items():
            self.context.set_tensor_address(n, t.data_ptr())
        self._bound = key

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"stage inputs missing: {missing} (expected {self.input_names})")
        key = tuple(tuple(int(d) for d in np.shape(feeds[n])) for n in self.input_names)
        slot = self._slot(key)
        stream = self._stream
        for n in self.input_names:
            slot.host[n].numpy()[...] = feeds[n]
        with torch.cuda.stream(stream):
            for n in self.input_names:
                slot.dev[n].copy_(slot.host[n], non_blocking=True)
            if slot.graph is not None:
                slot.graph.replay()
            else:
                self._bind(key, slot)
                if self._cuda_graphs and slot.runs >= 1:
                    # Shape setup happened on the first run; capture the enqueue now.
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=stream):
                        self.context.execute_async_v3(stream.cuda_stream)
                    slot.graph = graph
                    graph.replay()
                elif not self.context.execute_async_v3(stream.cuda_stream):
                    raise RuntimeError("tensorrt: execute_async_v3 failed")
            for n in self.output_names:
                slot.host[n].copy_(slot.dev[n], non_blocking=True)
        stream.synchronize()
        slot.runs += 1
        return {n: slot.host[n].numpy().copy() for n in self.output_names}


class TensorRTBackend:
    """Native TensorRT engines (``tensorrt`` kind)."""

    def __init__(
        self,
        device: str = "cuda",
        *,
        fp16: bool = False,
        cache_dir: str | Path | None = None,
        cuda_graphs: bool = True,
        max_k: int | None = None,
        workspace_bytes: int = 1 << 30,
    ) -> None:
        self._trt = _import_trt()
        self._torch = _import_torch_cuda("tensorrt backend")
        kind, index = parse_device(device)
        if kind != "cuda":
            raise BackendUnavailable(
                f"tensorrt backend runs on a CUDA GPU; device {device!r} is not one "
                "(use device: cuda or cuda:N)"
            )
        if index >= self._torch.cuda.device_count():
            raise BackendUnavailable(
                f"tensorrt backend: device cuda:{index} requested but only "
                f"{self._torch.cuda.device_count()} CUDA device(s) are visible"
            )
        self.name = "tensorrt"
        self.device_index = index
        self.fp16 = fp16
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "engines"
        self.cuda_graphs = cuda_graphs
        self.max_k = max_k
        self.workspace_bytes = workspace_bytes
        self.gpu_name = str(self._torch.cuda.get_device_name(index))
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime = self._trt.Runtime(self._logger)
        self.built: list[Path] = []  # engines built (not loaded from cache) by this backend

    def describe(self) -> str:
        return (
            f"tensorrt (TensorRT {self._trt.__version__}, GPU {self.gpu_name!r} cuda:"
            f"{self.device_index}, {'fp16' if self.fp16 else 'fp32'}, CUDA graphs "
            f"{'on' if self.cuda_graphs else 'off'}, engine cache {self.cache_dir})"
        )

    def engine_path(self, onnx_path: Path, max_k: int) -> Path:
        sha = sha256_file(onnx_path)
        key = engine_cache_key(sha, self._trt.__version__, self.gpu_name, self.fp16, max_k)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(onnx_path).stem)
        return self.cache_dir / f"{stem}-{key}.engine"

    def _build(self, onnx_path: Path, max_k: int) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{onnx_path}: TensorRT could not parse the graph: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        _, _, dims = graph_io(onnx_path)
        if any(not isinstance(d, int) for ds in dims.values() for d in ds):
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shape_profile(dims, max_k).items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
        return bytes(serialized)

    def _engine(self, onnx_path: Path, max_k: int) -> Any:
        path = self.engine_path(onnx_path, max_k)
        if path.is_file():
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                return engine
        data = self._build(onnx_path, max_k)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.built.append(path)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError(f"{onnx_path}: TensorRT could not deserialise the engine it built")
        return engine

    def load_stage(self, bundle: LoadedBundle, stage: str) -> TensorRTStage:
        max_k = self.max_k or bundle.num_experts or 1
        with self._torch.cuda.device(self.device_index):
            engine = self._engine(bundle.stage_path(stage), max_k)
            return TensorRTStage(self._trt, self._torch, engine, self.device_index,
                                 self.cuda_graphs)
