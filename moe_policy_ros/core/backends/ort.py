"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

Session options: graph optimisation level "all", sequential execution, configurable intra-op
threads (0 = ONNX Runtime's default, one per physical core). On a GPU provider the stage uses
IO binding: inputs are copied into device ``OrtValue`` buffers that are reused while their
shape is unchanged, outputs stay on the device until one copy back per run.

ONNX Runtime silently falls back to the CPU provider when a GPU provider fails to initialise
(missing CUDA/cuDNN libraries, no driver). This backend checks the providers each session
actually got and raises :class:`BackendUnavailable` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from moe_policy_ros.core.backends.base import BackendUnavailable, default_cache_dir
from moe_policy_ros.core.backends.onnx_io import graph_io, shape_profile

if TYPE_CHECKING:
    from moe_policy_ros.core.bundle import LoadedBundle

__all__ = ["OrtBackend", "OrtStage", "ort_providers"]

Provider = Literal["cpu", "cuda", "tensorrt"]
_EP = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BackendUnavailable(
            f"onnxruntime is not installed ({err}); pip install onnxruntime "
            "(or onnxruntime-gpu for the CUDA/TensorRT providers)"
        ) from None
    return ort


def ort_providers() -> list[str]:
    """Execution providers this onnxruntime build offers ([] if onnxruntime is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OrtStage:
    """One ONNX Runtime session."""

    def __init__(self, session: Any, device_id: int, on_gpu: bool) -> None:
        self.session = session
        self.input_names: list[str] = [i.name for i in session.get_inputs()]
        self.output_names: list[str] = [o.name for o in session.get_outputs()]
        self._on_gpu = on_gpu
        self._device_id = device_id
        self._binding: Any = None
        self._dev_inputs: dict[str, tuple[tuple[Any, str], Any]] = {}

    def _check(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"stage inputs missing: {missing} (expected {self.input_names})")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check(feeds)
        if not self._on_gpu:
            outs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
            return dict(zip(self.output_names, outs, strict=True))
        return self._run_bound(feeds)

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        if self._binding is None:
            self._binding = self.session.io_binding()
            for n in self.output_names:
                self._binding.bind_output(n, "cuda", self._device_id)
        b = self._binding
        for n in self.input_names:
            arr = np.ascontiguousarray(feeds[n])
            key = (arr.shape, arr.dtype.str)
            held = self._dev_inputs.get(n)
            if held is not None and held[0] == key:
                ov = held[1]
                ov.update_inplace(arr)  # reuse the device buffer (static shapes)
            else:
                ov = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self._device_id)
                self._dev_inputs[n] = (key, ov)
            b.bind_ortvalue_input(n, ov)
        self.session.run_with_iobinding(b)
        outs = b.copy_outputs_to_cpu()
        return dict(zip(self.output_names, outs, strict=True))


class OrtBackend:
    """``onnxruntime-cpu``, ``onnxruntime-cuda`` or ``onnxruntime-tensorrt``."""

    def __init__(
        self,
        provider: Provider = "cpu",
        device_id: int = 0,
        *,
        intra_op_threads: int = 0,
        trt_fp16: bool = False,
        trt_cache_dir: str | Path | None = None,
    ) -> None:
        ort = _import_ort()
        self._ort = ort
        self.provider = provider
        self.device_id = device_id
        self.intra_op_threads = int(intra_op_threads)
        self.trt_fp16 = trt_fp16
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else None
        self.name = f"onnxruntime-{provider}"
        avail = list(ort.get_available_providers())
        need = [_EP[provider]] + (["CUDAExecutionProvider"] if provider == "tensorrt" else [])
        missing = [p for p in need if p not in avail]
        if missing:
            raise BackendUnavailable(
                f"{self.name}: onnxruntime {ort.__version__} lacks {', '.join(missing)} "
                f"(available providers: {avail}); install onnxruntime-gpu with a matching "
                "CUDA" + (" and TensorRT" if provider == "tensorrt" else "") + " runtime"
            )

    def describe(self) -> str:
        threads = self.intra_op_threads or "default"
        dev = "" if self.provider == "cpu" else f", device cuda:{self.device_id}, IO binding"
        fp16 = ", fp16" if self.provider == "tensorrt" and self.trt_fp16 else ""
        return (
            f"{self.name} (onnxruntime {self._ort.__version__}, {_EP[self.provider]}{dev}{fp16}, "
            f"intra-op threads {threads}, graph optimisation all)"
        )

    def _providers(self, onnx_path: Path, num_experts: int) -> list[Any]:
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id})
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        cache = self.trt_cache_dir or default_cache_dir() / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        opts: dict[str, Any] = {
            "device_id": self.device_id,
            "trt_fp16_enable": self.trt_fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
        _, _, dims = graph_io(onnx_path)
        if any(not isinstance(d, int) for ds in dims.values() for d in ds):
            max_k = num_experts or 1
            prof = shape_profile(dims, max_k)

            def fmt(i: int) -> str:
                return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in prof.items())

            opts["trt_profile_min_shapes"] = fmt(0)
            opts["trt_profile_opt_shapes"] = fmt(1)
            opts["trt_profile_max_shapes"] = fmt(2)
        return [("TensorrtExecutionProvider", opts), cuda, "CPUExecutionProvider"]

    def load_stage(self, bundle: LoadedBundle, stage: str) -> OrtStage:
        ort = self._ort
        name, onnx_path = stage, bundle.stage_path(stage)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = 1
        # No busy-waiting worker threads: on a robot computer the control loop and the
        # drivers need the cores more than ONNX Runtime needs microseconds of wake-up.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(
                str(onnx_path), sess_options=so,
                providers=self._providers(onnx_path, bundle.num_experts),
            )
        except Exception as err:  # onnxruntime raises its own exception types
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"{onnx_path}: {self.name} could not load stage {name!r}: {msg}"
                               ) from None
        got = sess.get_providers()
        if got[0] != _EP[self.provider]:
            raise BackendUnavailable(
                f"{self.name}: session for {onnx_path.name} got providers {got}, not "
                f"{_EP[self.provider]} (ONNX Runtime could not initialise it: check the CUDA/"
                "cuDNN/TensorRT libraries and the driver)"
            )
        return OrtStage(sess, self.device_id, on_gpu=self.provider != "cpu")

