"""Backends: ONNX Runtime CPU on real graphs, auto selection and its report, missing-backend
errors, TensorRT cache keys/profiles; GPU and TensorRT paths run where the hardware is."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_policy_ros.core.backends import (
    KINDS,
    Backend,
    BackendUnavailable,
    Stage,
    make_backend,
    parse_device,
)
from moe_policy_ros.core.backends.onnx_io import graph_io, shape_profile
from moe_policy_ros.core.backends.ort import ort_providers
from moe_policy_ros.core.backends.tensorrt import engine_cache_key
from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.runtime import MoEPolicy, synthetic_observation


def _cuda_reason() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda})"
    return ""


NO_CUDA = _cuda_reason()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_ORT_CUDA = "CUDAExecutionProvider" in ort_providers()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, hand_bundle: Any) -> Path:
    return hand_bundle.write_bundle(tmp_path_factory.mktemp("bk") / "adamoe", "adamoe")


def test_parse_device() -> None:
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("CUDA") == ("cuda", 0)
    assert parse_device("cuda:3") == ("cuda", 3)
    with pytest.raises(ValueError, match="'tpu'"):
        parse_device("tpu")


def test_ort_cpu_stage_runs_real_graph(bundle: Path, hand_bundle: Any) -> None:
    be = make_backend("onnxruntime", intra_op_threads=1)
    assert isinstance(be, Backend)
    assert be.name == "onnxruntime-cpu"
    assert "CPUExecutionProvider" in be.describe() and "intra-op threads 1" in be.describe()
    b = load_bundle(bundle)
    stage = be.load_stage(b, "encoder")
    assert isinstance(stage, Stage)
    assert stage.input_names == ["image_top", "image_wrist", "proprio"]
    assert stage.output_names == ["context", "gate_logits", "adapter_weights"]
    so = stage.session.get_session_options()  # type: ignore[attr-defined]
    assert so.intra_op_num_threads == 1
    obs = synthetic_observation(b.manifest, seed=1)
    pol = MoEPolicy(b, be)
    feeds = pol._preprocess(obs)
    out = stage.run(feeds)
    ref = hand_bundle.reference_encoder(bundle, obs.images, obs.proprio)
    for name in stage.output_names:
        np.testing.assert_allclose(out[name][0], ref[name], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"missing: \['proprio'\]"):
        stage.run({k: v for k, v in feeds.items() if k != "proprio"})


def test_expert_stage_accepts_every_k(bundle: Path) -> None:
    be = make_backend("onnxruntime", intra_op_threads=1)
    stage = be.load_stage(load_bundle(bundle), "experts")
    ctx = np.ones((1, 8), np.float32)
    for k in range(1, 5):
        out = stage.run({"context": ctx, "expert_idx": np.arange(k, dtype=np.int64),
                         "expert_weights": np.full(k, 0.5, np.float32)})
        assert out["actions"].shape == (1, 4, 3)


def test_auto_on_cpu_reports_choice() -> None:
    be = make_backend("auto")
    assert be.name == "onnxruntime-cpu"
    assert "auto -> onnxruntime-cpu" in be.describe() and "device 'cpu'" in be.describe()


@pytest.mark.skipif(HAS_TRT or HAS_ORT_CUDA, reason="a GPU backend is installed here")
def test_auto_for_gpu_device_explains_each_skip() -> None:
    be = make_backend("auto", "cuda")
    d = be.describe()
    assert be.name == "onnxruntime-cpu"
    assert "tensorrt skipped" in d and "'tensorrt' Python package is not installed" in d
    assert "onnxruntime-cuda skipped" in d and "CUDAExecutionProvider" in d


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_tensorrt_raises_naming_it() -> None:
    with pytest.raises(BackendUnavailable, match="'tensorrt' Python package is not installed"):
        make_backend("tensorrt", "cuda")


@pytest.mark.skipif(HAS_ORT_CUDA, reason="onnxruntime-gpu is installed here")
@pytest.mark.parametrize("kind", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_missing_ort_gpu_provider_raises_naming_it(kind: str) -> None:
    with pytest.raises(BackendUnavailable, match=r"lacks .*ExecutionProvider.*onnxruntime-gpu"):
        make_backend(kind, "cuda")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        make_backend("onnxruntime", "cuda")  # a GPU device never silently runs on the CPU


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is visible")
def test_torch_cuda_without_gpu_raises() -> None:
    pytest.importorskip("torch")
    with pytest.raises(BackendUnavailable, match="sees no CUDA GPU"):
        make_backend("torch", "cuda")


def test_torch_backend_needs_checkpoint(bundle: Path) -> None:
    pytest.importorskip("torch")
    be = make_backend("torch")
    with pytest.raises(BackendUnavailable, match="no checkpoint given"):
        be.load_stage(load_bundle(bundle), "encoder")
    # a checkpoint the bundle cannot vouch for (no provenance hash) is refused too
    (bundle.parent / "other.pt").write_bytes(b"weights")
    be = make_backend("torch", checkpoint=bundle.parent / "other.pt")
    with pytest.raises(BackendUnavailable, match="cannot be verified"):
        be.load_stage(load_bundle(bundle), "encoder")


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown backend kind 'onnx'"):
        make_backend("onnx")
    assert "auto" in KINDS and "tensorrt" in KINDS


def test_engine_cache_key_covers_every_input() -> None:
    base = engine_cache_key("a" * 64, "10.3.0", "NVIDIA H100", False, 8)
    assert base == engine_cache_key("a" * 64, "10.3.0", "NVIDIA H100", False, 8)
    others = [
        engine_cache_key("b" * 64, "10.3.0", "NVIDIA H100", False, 8),
        engine_cache_key("a" * 64, "10.4.0", "NVIDIA H100", False, 8),
        engine_cache_key("a" * 64, "10.3.0", "NVIDIA L4", False, 8),
        engine_cache_key("a" * 64, "10.3.0", "NVIDIA H100", True, 8),
        engine_cache_key("a" * 64, "10.3.0", "NVIDIA H100", False, 4),
    ]
    assert len({base, *others}) == 6


def test_shape_profile_spans_k(bundle: Path) -> None:
    ins, outs, dims = graph_io(load_bundle(bundle).stage_paths["experts"])
    assert ins == ["context", "expert_idx", "expert_weights"] and outs == ["actions"]
    prof = shape_profile(dims, max_k=4)
    assert prof["context"] == ((1, 8), (1, 8), (1, 8))
    assert prof["expert_idx"] == ((1,), (2,), (4,))


# --------------------------------------------------------------------------- GPU paths


def _parity(bundle_dir: Path, backend: Any, tol: float = 1e-3) -> None:
    b = load_bundle(bundle_dir)
    cpu = MoEPolicy(b, make_backend("onnxruntime"), seed=0)
    gpu = MoEPolicy(b, backend, seed=0)
    for i in range(3):  # >= 2 runs per shape so CUDA graphs are captured and replayed
        obs = synthetic_observation(b.manifest, seed=i % 2)
        a, g = cpu.infer(obs), gpu.infer(obs)
        np.testing.assert_array_equal(a.decision.active, g.decision.active)
        np.testing.assert_allclose(g.actions, a.actions, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_ORT_CUDA, reason="onnxruntime-gpu (CUDAExecutionProvider) missing")
def test_ort_cuda_io_binding_parity(bundle: Path, tmp_path: Path, hand_bundle: Any) -> None:
    be = make_backend("onnxruntime-cuda", "cuda")
    assert "IO binding" in be.describe()
    _parity(bundle, be)
    _parity(hand_bundle.write_bundle(tmp_path / "smp", "smp"), be)


@pytest.mark.gpu
@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA or "cuda")
def test_torch_cuda_graph_parity(tmp_path: Path) -> None:
    from moe_policy_ros.models.export import export_bundle, load_checkpoint
    from moe_policy_ros.models.families import build_model

    model = build_model({"family": "adamoe", "num_experts": 4, "context_dim": 32,
                         "expert_hidden": 32, "trunk_layers": 1})
    export_bundle(model, tmp_path / "b", name="g", parity_trials=1)
    be = make_backend("torch", "cuda", model_loader=load_checkpoint)
    assert be.name == "torch-cuda" and "CUDA graph" in be.describe()
    _parity(tmp_path / "b", be)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(
    not HAS_TRT or bool(NO_CUDA),
    reason="the tensorrt Python package is not installed" if not HAS_TRT else NO_CUDA,
)
def test_tensorrt_engine_cache_and_parity(bundle: Path, tmp_path: Path) -> None:
    be = make_backend("tensorrt", "cuda", cache_dir=tmp_path / "engines")
    _parity(bundle, be)
    built = list(be.built)  # type: ignore[attr-defined]
    assert len(built) == 2 and all(p.is_file() for p in built)
    be2 = make_backend("tensorrt", "cuda", cache_dir=tmp_path / "engines")
    _parity(bundle, be2)
    assert be2.built == []  # type: ignore[attr-defined]  # loaded from the cache
    fp16 = make_backend("tensorrt", "cuda", cache_dir=tmp_path / "engines", fp16=True)
    _parity(bundle, fp16, tol=5e-2)
    assert len(fp16.built) == 2  # type: ignore[attr-defined]  # fp16 is a different key


def test_one_default_cache_dir_for_every_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moe_policy_ros.core.backends.base import default_cache_dir

    monkeypatch.delenv("MOE_POLICY_ROS_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "moe_policy_ros"
    monkeypatch.setenv("MOE_POLICY_ROS_ENGINE_CACHE", str(tmp_path / "engines"))
    assert default_cache_dir() == tmp_path / "engines"
    text = "".join(
        (Path(__file__).resolve().parents[2] / "moe_policy_ros/core/backends" / f).read_text()
        for f in ("ort.py", "tensorrt.py")
    )
    assert "MOE_POLICY_ROS_ENGINE_CACHE" not in text and "XDG_CACHE_HOME" not in text
