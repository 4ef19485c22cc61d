"""Per-chunk hoisting of the flow expert stage (core/backends/ort_hoist.py) on real ONNX
Runtime: same velocities as the plain graph for every k, the gather runs once per chunk,
and the policy's chunks do not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from moe_policy_ros.core.backends import make_backend
from moe_policy_ros.core.backends.ort_hoist import HoistedStage, split_invariant
from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.rtc import RtcGuidance
from moe_policy_ros.core.runtime import MoEPolicy, synthetic_observation

EXPERTS = Path(__file__).resolve().parents[2] / "models" / "demo_smp" / "experts.onnx"


def _opts() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return so


def test_split_moves_every_gather_to_prepare() -> None:
    prepare, step, boundary = split_invariant(onnx.load(str(EXPERTS)), {"context", "expert_idx"})
    gathers_on_weights = [
        n for n in step.graph.node if n.op_type == "Gather" and n.input[1] == "expert_idx"
    ]
    assert not gathers_on_weights
    assert "expert_idx" not in [i.name for i in step.graph.input]
    assert {"x_t", "t"} <= {i.name for i in step.graph.input}
    assert sum(n.op_type == "Gather" for n in prepare.graph.node) == 6
    # the context block of the first layer is folded in prepare: its weights leave the step
    step_inits = {t.name for t in step.graph.initializer}
    assert not any("denoiser" in n for n in step_inits), step_inits
    assert boundary
    with pytest.raises(ValueError, match="not graph inputs"):
        split_invariant(onnx.load(str(EXPERTS)), {"ctx"})


def test_hoisted_stage_matches_the_plain_graph_and_prepares_once_per_chunk() -> None:
    plain = ort.InferenceSession(str(EXPERTS), _opts(), providers=["CPUExecutionProvider"])
    hoisted = HoistedStage(EXPERTS, _opts(), {"context", "expert_idx"})
    rng = np.random.default_rng(0)
    chunks = 0
    for k in range(1, 9):
        idx = np.sort(rng.choice(8, k, replace=False)).astype(np.int64)
        ctx = rng.standard_normal((1, 128)).astype(np.float32)
        chunks += 1
        for step in range(4):
            feeds: dict[str, np.ndarray] = {"context": ctx, "expert_idx": idx,
                     "x_t": rng.standard_normal((1, k, 4)).astype(np.float32),
                     "t": np.array([step / 4], np.float32)}  # fmt: skip
            want = plain.run(None, feeds)[0]
            got = hoisted.run(feeds)["velocity"]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert hoisted.prepare_runs == chunks and hoisted.step_runs == 4 * chunks
    with pytest.raises(ValueError, match="missing"):
        hoisted.run({"context": ctx})
    with pytest.raises(ValueError, match="differs from the manifest"):
        HoistedStage(EXPERTS, _opts(), {"context", "expert_idx"}, expected_sha256="0" * 64)


def test_policy_chunks_are_unchanged_by_hoisting() -> None:
    bundle = load_bundle(EXPERTS.parent)
    backend = make_backend("onnxruntime", intra_op_threads=1)
    fast = MoEPolicy(bundle, backend)
    slow = MoEPolicy(bundle, backend, gather_once=False)
    assert fast.gather_once and not slow.gather_once
    assert isinstance(fast.stages["experts"], HoistedStage)
    for seed in range(3):
        obs = synthetic_observation(bundle.manifest, seed=seed)
        np.testing.assert_allclose(fast.infer(obs).actions, slow.infer(obs).actions,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    first = slow.infer(obs).actions
    np.testing.assert_allclose(fast.infer(obs).actions, first, rtol=1e-5, atol=1e-6)
    g = RtcGuidance(first[5:], 3, 5)
    guided = fast.infer(obs, guidance=g)
    np.testing.assert_allclose(guided.actions, slow.infer(obs, guidance=g).actions,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    stage = fast.stages["experts"]
    assert isinstance(stage, HoistedStage)
    # one prepare per chunk at most (4 plain + 1 rtc chunks; the same observation and active
    # set twice in a row reuse it); 10 Euler steps each, the rtc FD rows ride in the same call;
    # the first guided chunk checks the experts' independence (2 calls when k > 1)
    assert 1 <= stage.prepare_runs <= 5
    assert stage.step_runs == 5 * 10 + (2 if guided.decision.k > 1 else 0)
