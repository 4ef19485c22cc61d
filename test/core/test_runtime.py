"""MoEPolicy end to end on real ONNX Runtime: hand-built bundles against a numpy reference,
exported reference models against their torch forward (all five families), validation errors,
routing overrides, determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import yaml

from moe_policy_ros.core.backends import make_backend
from moe_policy_ros.core.bundle import BundleError, LoadedBundle, load_bundle
from moe_policy_ros.core.config import RoutingConfig
from moe_policy_ros.core.manifest import FAMILIES, FAMILY_COMBINATIONS, SamplerSpec
from moe_policy_ros.core.runtime import (
    MoEPolicy,
    ObservationError,
    merge_routing,
    synthetic_observation,
)
from moe_policy_ros.core.types import Observation


@pytest.fixture(scope="module")
def ort() -> Any:
    return make_backend("onnxruntime", intra_op_threads=1)


@pytest.fixture(scope="module")
def hand_bundles(tmp_path_factory: pytest.TempPathFactory, hand_bundle: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hand")
    return {f: hand_bundle.write_bundle(root / f, f) for f in FAMILIES}


def _noise(seed: int, e: int, r: int, chunk: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    for _ in range(chunk):
        rng.standard_normal((e, r), dtype=np.float32)
    return rng.standard_normal((e, r), dtype=np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_end_to_end_matches_numpy_reference(hand_bundles: dict[str, Path], ort: Any,
                                            family: str, hand_bundle: Any) -> None:
    path = hand_bundles[family]
    b = load_bundle(path)
    pol = MoEPolicy(b, ort, seed=7)
    e = b.manifest.experts.count
    for i in range(3):
        obs = synthetic_observation(b.manifest, seed=i)
        out = pol.infer(obs)
        assert out.actions.shape == (4, 3) and out.actions.dtype == np.float64
        assert set(out.timings_ms) == {"preprocess", "encoder", "routing", "experts", "total"}
        assert all(v >= 0 for v in out.timings_ms.values())
        ref_enc = hand_bundle.reference_encoder(path, obs.images, obs.proprio)
        np.testing.assert_allclose(out.decision.state.gates.sum(), 1.0, rtol=1e-6)
        # The default routing of these bundles is top-2 (dense: the single expert).
        want = np.sort(np.argsort(-ref_enc["gate_logits"], kind="stable")[: min(2, e)])
        np.testing.assert_array_equal(out.decision.active, want)
        if family == "adamoe":
            np.testing.assert_allclose(out.decision.weights,
                                       ref_enc["adapter_weights"][want], rtol=1e-5)
        else:
            g = np.exp(ref_enc["gate_logits"][want] - ref_enc["gate_logits"].max())
            np.testing.assert_allclose(out.decision.weights, g / g.sum(), rtol=1e-5)
        noise = _noise(7, e, 2, chunk=i)[out.decision.active] if family == "smp" else None
        ref = hand_bundle.reference_chunk(path, obs.images, obs.proprio, out.decision.active,
                              out.decision.weights, noise)
        np.testing.assert_allclose(out.actions, ref, rtol=1e-4, atol=1e-5)


def test_dense_and_mass_routing_override(
    hand_bundles: dict[str, Path], ort: Any, hand_bundle: Any
) -> None:
    b = load_bundle(hand_bundles["dibm"])
    obs = synthetic_observation(b.manifest, seed=3)
    dense = MoEPolicy(b, ort, RoutingConfig(strategy="dense")).infer(obs)
    assert dense.decision.active.tolist() == [0, 1, 2, 3]
    ref = hand_bundle.reference_chunk(hand_bundles["dibm"], obs.images, obs.proprio,
                          dense.decision.active, dense.decision.weights)
    np.testing.assert_allclose(dense.actions, ref, rtol=1e-4, atol=1e-5)
    mass = MoEPolicy(b, ort, RoutingConfig(strategy="mass", tau=0.5)).infer(obs)
    assert 1 <= mass.decision.k <= 4
    assert mass.decision.state.gates[mass.decision.active].sum() >= 0.5 - 1e-6


def test_routing_merge_semantics(hand_bundles: dict[str, Path], ort: Any) -> None:
    b = load_bundle(hand_bundles["lar"])
    default = b.manifest.routing
    assert merge_routing(default, None) == default
    assert merge_routing(default, RoutingConfig()) == default  # empty strategy: bundle default
    m = merge_routing(default, RoutingConfig(k=3))
    assert m.strategy == "topk" and m.k == 3
    m = merge_routing(default, RoutingConfig(strategy="mass", tau=0.7))
    assert (m.strategy, m.tau, m.k) == ("mass", 0.7, default.k)
    pol = MoEPolicy(b, ort, RoutingConfig(k=3))
    assert pol.routing_config.k == 3 and pol.strategy.name == "topk"
    assert pol.infer(synthetic_observation(b.manifest, seed=0)).decision.k == 3
    with pytest.raises(ValueError, match="k 9 exceeds"):
        MoEPolicy(b, ort, RoutingConfig(k=9))


def test_flow_determinism_and_reset(hand_bundles: dict[str, Path], ort: Any) -> None:
    b = load_bundle(hand_bundles["smp"])
    obs = [synthetic_observation(b.manifest, seed=i) for i in range(3)]
    p1, p2, p3 = MoEPolicy(b, ort, seed=1), MoEPolicy(b, ort, seed=1), MoEPolicy(b, ort, seed=2)
    a1 = [p1.infer(o).actions for o in obs]
    a2 = [p2.infer(o).actions for o in obs]
    for x, y in zip(a1, a2, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a1[0], p3.infer(obs[0]).actions)
    assert not np.allclose(a1[0], p1.infer(obs[0]).actions)  # the noise stream moved on
    p1.reset()
    np.testing.assert_array_equal(p1.infer(obs[0]).actions, a1[0])


def test_warmup_runs_and_resets(hand_bundles: dict[str, Path], ort: Any) -> None:
    b = load_bundle(hand_bundles["smp"])
    pol = MoEPolicy(b, ort, seed=5)
    totals = pol.warmup(2)
    assert len(totals) == 2 and all(t > 0 for t in totals)
    obs = synthetic_observation(b.manifest, seed=0)
    np.testing.assert_array_equal(pol.infer(obs).actions,
                                  MoEPolicy(b, ort, seed=5).infer(obs).actions)
    assert pol.warmup(0) == []


def _obs(b: LoadedBundle, **changes: Any) -> Observation:
    base = synthetic_observation(b.manifest, seed=0)
    images = dict(base.images)
    images.update(changes.pop("images", {}))
    for name in changes.pop("drop", ()):
        del images[name]
    return Observation(images=images, proprio=changes.pop("proprio", base.proprio))


def test_observation_validation_names_the_bad_value(hand_bundles: dict[str, Path],
                                                    ort: Any) -> None:
    b = load_bundle(hand_bundles["adamoe"])
    pol = MoEPolicy(b, ort)
    cases = [
        (_obs(b, drop=["wrist"]), r"missing \['wrist'\]"),
        (_obs(b, images={"side": np.zeros((16, 16, 3), np.uint8)}), r"unexpected \['side'\]"),
        (_obs(b, images={"top": np.zeros((24, 32, 3), np.float32)}),
         r"image 'top': dtype must be uint8, got float32"),
        (_obs(b, images={"top": np.zeros((32, 24, 3), np.uint8)}),
         r"image 'top': shape must be \(24, 32, 3\).*got \(32, 24, 3\)"),
        (_obs(b, images={"wrist": np.zeros((16, 16), np.uint8)}), r"got \(16, 16\)"),
        (_obs(b, images={"top": [[0]]}), "expected a numpy array, got list"),
        (_obs(b, proprio=np.zeros(4, np.float32)), r"expected shape \(5,\).*got \(4,\)"),
        (_obs(b, proprio=np.array([0, 0, np.nan, 0, 0], np.float32)),
         r"proprio\[2\] \(joint 'q2'\) is nan"),
        (_obs(b, proprio=np.array([0, 0, 0, 0, np.inf])), r"proprio\[4\] \(joint 'q4'\) is inf"),
    ]
    for obs, pattern in cases:
        with pytest.raises(ObservationError, match=pattern):
            pol.infer(obs)


def test_stamp_passes_through(hand_bundles: dict[str, Path], ort: Any) -> None:
    b = load_bundle(hand_bundles["dense"])
    base = synthetic_observation(b.manifest, seed=0)
    out = MoEPolicy(b, ort).infer(Observation(base.images, base.proprio, stamp_ns=123))
    assert out.stamp_ns == 123 and out.decision.active.tolist() == [0]


def _edit_manifest(root: Path, **changes: Any) -> None:
    path = root / "policy.yaml"
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key == "sampler_kind":
            data["sampler"]["kind"] = value
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_every_manifest_the_loader_accepts_runs(
    tmp_path: Path, ort: Any, hand_bundle: Any
) -> None:
    """Each sampler kind and combination the manifest schema admits for a family is served by
    the runtime (no option is accepted at load and refused at run time)."""
    kinds = get_args(SamplerSpec.model_fields["kind"].annotation)
    assert kinds == ("flow_euler",)  # ddim and a denoise.onnx stage are not offered
    for family, combos in FAMILY_COMBINATIONS.items():
        for combo in (None, *combos):
            for kind in kinds if family == "smp" else (None,):
                root = hand_bundle.write_bundle(tmp_path / f"{family}_{combo}_{kind}", family)
                if combo is not None:
                    _edit_manifest(root, combination=combo)
                if kind is not None:
                    _edit_manifest(root, sampler_kind=kind)
                b = load_bundle(root)
                assert b.manifest.combination_weights == (combo or combos[0])
                obs = synthetic_observation(b.manifest, seed=1)
                out = MoEPolicy(b, ort, seed=2).infer(obs)
                enc = hand_bundle.reference_encoder(root, obs.images, obs.proprio)
                act = out.decision.active
                gl, aw = enc["gate_logits"], enc["adapter_weights"]
                active_gates = np.exp(gl[act] - gl[act].max())
                gates = np.exp(gl - gl.max()) / np.exp(gl - gl.max()).sum()
                want = {
                    "gates": active_gates / active_gates.sum(),
                    "adapter": aw[act],
                    "router_plus_adapter": gates[act] + aw[act],
                    "unit": np.ones(len(act)),
                }[b.manifest.combination_weights]
                np.testing.assert_allclose(out.decision.weights, want, rtol=1e-5)
                noise = _noise(2, 4, 2)[act] if family == "smp" else None
                ref = hand_bundle.reference_chunk(root, obs.images, obs.proprio, act,
                                                  out.decision.weights, noise)
                np.testing.assert_allclose(out.actions, ref, rtol=1e-4, atol=1e-5)
    root = hand_bundle.write_bundle(tmp_path / "ddim", "smp")
    _edit_manifest(root, sampler_kind="ddim")
    with pytest.raises(BundleError, match=r"sampler\.kind.*ddim"):
        load_bundle(root)
    root = hand_bundle.write_bundle(tmp_path / "wrong", "adamoe")
    _edit_manifest(root, combination="unit")
    with pytest.raises(BundleError, match="'unit' is not defined for family adamoe"):
        load_bundle(root)


def test_shipped_demo_bundles_keep_their_behaviour(ort: Any) -> None:
    """models/demo_* predate ``combination``: they load and compose as they always did."""
    root = Path(__file__).resolve().parents[2] / "models"
    for name, combination in (("demo_adamoe", "adapter"), ("demo_smp", "gates")):
        b = load_bundle(root / name)
        assert b.manifest.combination is None
        assert b.manifest.combination_weights == combination
        out = MoEPolicy(b, ort).infer(synthetic_observation(b.manifest, seed=0))
        d = out.decision
        assert np.isfinite(out.actions).all()
        if combination == "adapter":
            assert d.state.adapter_weights is not None
            np.testing.assert_allclose(d.weights, d.state.adapter_weights[d.active], rtol=1e-6)
        else:
            assert float(d.weights.sum()) == pytest.approx(1.0, abs=1e-6)


MODELS = Path(__file__).resolve().parents[2] / "models"
TRAINED = sorted(p.name for p in MODELS.iterdir()
                 if (p / "policy.yaml").is_file() and not p.name.startswith("demo_"))


def test_trained_bundles_are_shipped() -> None:
    # the best MoE family and the dense baseline, per task (docs/results.md)
    assert {"tc_adamoe", "tc_dense", "ins_adamoe", "ins_dense"} <= set(TRAINED), TRAINED


@pytest.mark.parametrize("name", TRAINED)
def test_every_trained_bundle_loads_and_runs_in_the_runtime_unchanged(
    ort: Any, name: str
) -> None:
    """What `make demo` and `evaluate` run: the committed bundle, hashes verified, fits the
    simulator's parameters (config/sim_dual_arm.yaml), infers finite chunks, and says where it came
    from (dataset hash, steps, wall time, validation loss, rollout success)."""
    from moe_policy_ros.core.config import load_config
    from moe_policy_ros.core.pipeline import configure_problems

    b = load_bundle(MODELS / name)
    m = b.manifest
    cfg = load_config(MODELS.parent / "config" / "sim_dual_arm.yaml")
    assert configure_problems(cfg, m, name) == []
    pol = MoEPolicy(b, ort)
    out = pol.infer(synthetic_observation(m, seed=0))
    assert out.actions.shape == (m.action.chunk_length, m.action.dim)
    assert np.isfinite(out.actions).all()
    assert len(m.experts.labels) == m.experts.count
    training = m.provenance.training
    assert training is not None, f"{name}: no provenance.training"
    assert len(training.dataset_sha256) == 64 and training.steps > 0
    assert training.wall_time_s > 0 and training.val_loss is not None
    assert training.rollout_episodes > 0
    assert training.task == {"tc": "transfer_cube", "ins": "insertion"}[name.split("_")[0]]


# --------------------------------------------------------------------------- torch parity

torch = pytest.importorskip("torch")
from moe_policy_ros.core.manifest import CameraSpec  # noqa: E402
from moe_policy_ros.models.export import export_bundle, load_checkpoint  # noqa: E402
from moe_policy_ros.models.families import build_model  # noqa: E402

SMALL: dict[str, Any] = {
    "num_experts": 4, "cameras": [{"name": "top", "height": 24, "width": 32}],
    "proprio_dim": 4, "action_dim": 4, "chunk_length": 4, "context_dim": 32,
    "expert_hidden": 32, "trunk_layers": 1, "rank": 2, "sampler_steps": 3,
    "vision_channels": 8, "latent_dim": 4, "time_dim": 8, "energy_hidden": 16,
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for fam in FAMILIES:
        torch.manual_seed(0)
        model = build_model({"family": fam, **SMALL})
        export_bundle(
            model, root / fam, name=f"parity_{fam}", parity_trials=1,
            cameras=[CameraSpec(name="top", height=24, width=32, mean=(0.4, 0.5, 0.6),
                                std=(0.2, 0.3, 0.25))],
            proprio_mean=[0.1, -0.2, 0.3, 0.0], proprio_std=[0.5, 1.5, 2.0, 1.0],
            action_mean=[1.0, -1.0, 0.5, 0.0], action_std=[0.5, 2.0, 1.0, 3.0],
            checkpoint_out=root / f"{fam}.pt",
        )  # fmt: skip
        out[fam] = root / fam
    return out


def _checkpoint(b: LoadedBundle) -> Path:
    """The checkpoint the exported fixture wrote beside the bundle (never inside it)."""
    return b.path.parent / f"{b.manifest.family}.pt"


def _torch_reference(b: LoadedBundle, obs: Observation, seed: int) -> np.ndarray:
    """The reference model's own forward (model.act with its default top-k), with the
    runtime's flow noise for smp; normalisation done here from the manifest."""
    m = b.manifest
    model: Any = load_checkpoint(_checkpoint(b))
    imgs = []
    for cam in m.observation.cameras:
        x = obs.images[cam.name].astype(np.float64) / 255.0
        x = (x - np.array(cam.mean)) / np.array(cam.std)
        imgs.append(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))
    p = m.observation.proprio
    q = (obs.proprio - np.array(p.mean)) / np.array(p.std)
    prop = torch.from_numpy(q[None].astype(np.float32))
    with torch.inference_mode():
        if m.family == "smp":
            assert m.sampler is not None
            e, r, steps = m.experts.count, m.sampler.rank, m.sampler.steps
            enc = model.encode(imgs, prop)
            x_t = torch.from_numpy(_noise(seed, e, r))[None]
            for s in range(steps):
                x_t = x_t + (1.0 / steps) * model.velocity_all(
                    enc["context"], x_t, torch.full((1,), s / steps))
            w = model.selection_weights(enc["gate_logits"], 2)  # unit weights on the top 2
            flat = model.compose(enc["basis"], x_t, w)
            act = flat.reshape(m.action.chunk_length, m.action.dim)
        else:
            act = model.act(imgs, prop, k=min(2, m.experts.count))[0]
    return act.double().numpy() * np.array(m.action.std) + np.array(m.action.mean)


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_ort_vs_torch_reference(exported: dict[str, Path], ort: Any,
                                       family: str) -> None:
    b = load_bundle(exported[family])
    routing = RoutingConfig(strategy="dense" if family == "dense" else "topk", k=2)
    pol = MoEPolicy(b, ort, routing, seed=3)
    tb = make_backend("torch", checkpoint=_checkpoint(b), model_loader=load_checkpoint)
    tpol = MoEPolicy(b, tb, routing, seed=3)
    assert tb.name == "torch-cpu"
    for i in range(2):
        pol.reset()
        tpol.reset()
        obs = synthetic_observation(b.manifest, seed=10 + i)
        out = pol.infer(obs)
        ref = _torch_reference(b, obs, seed=3)
        np.testing.assert_allclose(out.actions, ref, rtol=1e-4, atol=2e-4)
        tout = tpol.infer(obs)
        np.testing.assert_array_equal(tout.decision.active, out.decision.active)
        np.testing.assert_allclose(tout.actions, out.actions, rtol=1e-4, atol=2e-4)


def test_torch_backend_gets_its_model_loader_injected(exported: dict[str, Path]) -> None:
    """The core imports no models/: without an injected loader the torch backend says so
    (after verifying the checkpoint), and backend_factory.build_backend injects it."""
    from moe_policy_ros.backend_factory import build_backend
    from moe_policy_ros.core.backends import BackendUnavailable

    b = load_bundle(exported["adamoe"])
    bare = make_backend("torch", checkpoint=_checkpoint(b))
    with pytest.raises(BackendUnavailable, match="no model loader given"):
        MoEPolicy(b, bare)
    built = build_backend("torch", checkpoint=_checkpoint(b))
    assert MoEPolicy(b, built).stages["encoder"].input_names
