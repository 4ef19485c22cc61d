"""Exporter: all five families at tiny size -> bundle, parity, contract, hashes, checkpoint."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.models import (
    ExportError,
    MoEModel,
    export_bundle,
    load_checkpoint,
)
from moe_policy_ros.models.config import FAMILIES
from moe_policy_ros.models.export import ALOHA_JOINTS, default_routing
from moe_policy_ros.models.families import DirectMoEModel, SMPModel

EXTRA_OUT = {"adamoe": "adapter_weights", "dibm": "energies", "lar": "latent", "smp": "basis"}


def _shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in vi.type.tensor_type.shape.dim
    ]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[..., MoEModel]
) -> dict[str, tuple[MoEModel, Path]]:
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for fam in FAMILIES:
        model = tiny_model(fam).eval()
        # the checkpoint goes beside the bundle, never into it
        export_bundle(model, root / fam, name=f"tiny_{fam}", checkpoint_out=root / f"{fam}.pt")
        out[fam] = (model, root / fam)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_hashes_and_parity(
    bundles: dict[str, tuple[MoEModel, Path]], family: str, tiny_config: dict[str, Any]
) -> None:
    _, d = bundles[family]
    m = read_manifest(d)
    assert m.family == family and m.name == f"tiny_{family}"
    assert set(m.stages) == {"encoder", "experts"}
    for entry in m.stages.values():
        assert _sha(d / entry.file) == entry.sha256
    assert sorted(p.name for p in d.iterdir()) == ["encoder.onnx", "experts.onnx", "policy.yaml"]
    assert m.provenance.checkpoint_sha256 == _sha(d.parent / f"{family}.pt")
    p = m.provenance
    assert p.parity_max_abs_err is not None and p.parity_max_abs_err <= 1e-4
    assert p.onnx_opset == 17 and p.torch_version == torch.__version__
    assert p.exporter and p.created.endswith("Z")
    e = 1 if family == "dense" else tiny_config["num_experts"]
    assert m.experts.count == e and len(m.experts.labels) == e
    assert m.action.joints == ALOHA_JOINTS and m.observation.proprio.joints == ALOHA_JOINTS
    assert m.action.chunk_length == tiny_config["chunk_length"]
    assert m.context_dim == tiny_config["context_dim"]
    assert m.routing == default_routing(family, tiny_config["top_k"])
    model, _ = bundles[family]
    assert m.combination == model.combination and m.combination_weights == model.combination
    assert m.novelty is None  # untrained, uncalibrated
    assert (m.sampler is not None) == (family == "smp")
    if family == "smp":
        assert m.sampler is not None
        assert m.sampler.rank == tiny_config["rank"]
        assert m.sampler.steps == tiny_config["sampler_steps"]
    assert m.latent_dim == (tiny_config["latent_dim"] if family == "lar" else 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_contract(
    bundles: dict[str, tuple[MoEModel, Path]], family: str, tiny_config: dict[str, Any]
) -> None:
    _, d = bundles[family]
    e = 1 if family == "dense" else tiny_config["num_experts"]
    dd, h, a, r = tiny_config["context_dim"], tiny_config["chunk_length"], 14, tiny_config["rank"]
    enc = onnx.load(str(d / "encoder.onnx"))
    exp = onnx.load(str(d / "experts.onnx"))
    for proto in (enc, exp):
        assert proto.ir_version <= 10
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    ins = {i.name: _shape(i) for i in enc.graph.input}
    outs = {o.name: _shape(o) for o in enc.graph.output}
    assert list(ins) == ["image_top", "proprio"]
    assert ins == {"image_top": [1, 3, 24, 32], "proprio": [1, 14]}
    want = {"context": [1, dd], "gate_logits": [1, e]}
    if family in EXTRA_OUT:
        want[EXTRA_OUT[family]] = {
            "adapter_weights": [1, e],
            "energies": [1, e],
            "latent": [1, tiny_config["latent_dim"]],
            "basis": [1, e, h * a, r],
        }[EXTRA_OUT[family]]
    assert outs == want and list(outs) == list(want)
    ins = {i.name: _shape(i) for i in exp.graph.input}
    outs = {o.name: _shape(o) for o in exp.graph.output}
    if family == "smp":
        assert ins == {"context": [1, dd], "expert_idx": ["k"], "x_t": [1, "k", r], "t": [1]}
        assert outs == {"velocity": [1, "k", r]}
    else:
        assert ins == {"context": [1, dd], "expert_idx": ["k"], "expert_weights": ["k"]}
        assert outs == {"actions": [1, h, a]}
    assert [i.type.tensor_type.elem_type for i in exp.graph.input][1] == onnx.TensorProto.INT64
    # the expert weights are gathered by index, so cost follows k
    assert any(n.op_type == "Gather" for n in exp.graph.node)


@pytest.mark.parametrize("family", ["adamoe", "dibm", "lar", "dense"])
def test_direct_expert_stage_semantics(
    bundles: dict[str, tuple[MoEModel, Path]], family: str, tiny_config: dict[str, Any]
) -> None:
    """actions = sum_j w_j expert_{idx_j}(context), in ORT, against all-experts torch."""
    model, d = bundles[family]
    sess = ort.InferenceSession(str(d / "experts.onnx"), providers=["CPUExecutionProvider"])
    e = model.cfg.num_experts
    rng = np.random.default_rng(0)
    ctx = rng.standard_normal((1, tiny_config["context_dim"])).astype(np.float32)
    assert isinstance(model, DirectMoEModel)
    with torch.no_grad():
        all_out = model.experts.forward_all([torch.from_numpy(ctx)])[0].numpy()
    for k in range(1, e + 1):
        idx = np.sort(rng.permutation(e)[:k]).astype(np.int64)
        w = rng.random(k).astype(np.float32)
        (got,) = sess.run(None, {"context": ctx, "expert_idx": idx, "expert_weights": w})
        want = (w[:, None] * all_out[idx]).sum(0).reshape(1, tiny_config["chunk_length"], 14)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_smp_stages(bundles: dict[str, tuple[MoEModel, Path]]) -> None:
    model, d = bundles["smp"]
    assert isinstance(model, SMPModel)
    enc = ort.InferenceSession(str(d / "encoder.onnx"), providers=["CPUExecutionProvider"])
    exp = ort.InferenceSession(str(d / "experts.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {
        "image_top": rng.standard_normal((1, 3, 24, 32)).astype(np.float32),
        "proprio": rng.standard_normal((1, 14)).astype(np.float32),
    }
    ctx, _, basis = enc.run(None, feeds)
    e, n, r = basis.shape[1], basis.shape[2], basis.shape[3]
    q = basis[0].transpose(1, 0, 2).reshape(n, e * r) / model.cfg.skill_scale
    np.testing.assert_allclose(q.T @ q, np.eye(e * r), atol=1e-5)  # orthogonal across experts
    idx = np.array([1, 3], dtype=np.int64)
    x_t = rng.standard_normal((1, 2, r)).astype(np.float32)
    t = np.array([0.3], dtype=np.float32)
    (v,) = exp.run(None, {"context": ctx, "expert_idx": idx, "x_t": x_t, "t": t})
    full_x = torch.zeros(1, e, r)
    full_x[0, idx] = torch.from_numpy(x_t[0])
    with torch.no_grad():
        v_all = model.velocity_all(torch.from_numpy(ctx), full_x, torch.from_numpy(t))
    np.testing.assert_allclose(v, v_all[:, idx].numpy(), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip(bundles: dict[str, tuple[MoEModel, Path]], family: str) -> None:
    model, d = bundles[family]
    raw = torch.load(d.parent / f"{family}.pt", weights_only=True)
    assert raw["family"] == family and raw["config"]["family"] == family
    loaded = load_checkpoint(d.parent / f"{family}.pt")
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    img, prop = torch.randn(1, 3, 24, 32), torch.randn(1, 14)
    with torch.no_grad():
        for a, b in zip(
            model.encoder_module(img, prop), loaded.encoder_module(img, prop), strict=True
        ):
            torch.testing.assert_close(a, b)


def test_parity_failure_fails_export(tmp_path: Path, tiny_model: Callable[..., MoEModel]) -> None:
    export_bundle(tiny_model("adamoe").eval(), tmp_path, name="x")
    assert (tmp_path / "policy.yaml").exists()
    with pytest.raises(ExportError, match="parity"):
        export_bundle(tiny_model("adamoe").eval(), tmp_path, name="x", tolerance=-1.0)
    assert not (tmp_path / "policy.yaml").exists()


def test_checkpoint_is_never_written_into_the_bundle(
    tmp_path: Path, tiny_model: Callable[..., MoEModel]
) -> None:
    with pytest.raises(ExportError, match="outside the bundle"):
        export_bundle(tiny_model("dense").eval(), tmp_path / "b", name="b",
                      checkpoint_out=tmp_path / "b" / "checkpoint.pt")
    assert not (tmp_path / "b" / "checkpoint.pt").exists()


def test_demo_bundles_present() -> None:
    root = Path(__file__).resolve().parents[2] / "models"
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    # the package installs models/ into its share: the demo bundles plus the trained ones
    # (3-11 MB each: one per family that does a task, the dense baselines, the SMP flow
    # bundles), never datasets or checkpoints
    assert total < 56 * 1024 * 1024, f"models/ holds {total / 2**20:.1f} MiB"
    ada, smp = read_manifest(root / "demo_adamoe"), read_manifest(root / "demo_smp")
    assert ada.family == "adamoe" and ada.experts.count == 8
    assert (ada.routing.strategy, ada.routing.k) == ("topk", 2)
    assert smp.family == "smp" and smp.experts.count == 8
    assert (smp.routing.strategy, smp.routing.sticky_base, smp.routing.tau) == (
        "sticky",
        "mass",
        0.8,
    )
    for m, name in ((ada, "demo_adamoe"), (smp, "demo_smp")):
        assert m.action.chunk_length == 20 and m.action.control_period_s == 0.02
        assert m.provenance.parity_max_abs_err is not None
        assert m.provenance.parity_max_abs_err <= 1e-4
        for entry in m.stages.values():
            assert _sha(root / name / entry.file) == entry.sha256
