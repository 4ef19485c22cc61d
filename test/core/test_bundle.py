"""Bundle loading: hashes, pinned manifest, corrupt files, graph I/O contract, containment.

The module also provides :func:`write_bundle`, a small hand-built bundle (ONNX graphs made with
``onnx.helper``) that honours the graph contract for every family; the backend, runtime and
bench tests import it. :func:`reference_chunk` is its numpy reference (normalisation, routing,
sampler, combination and denormalisation computed independently of the runtime).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from moe_policy_ros.core.bundle import BundleError, load_bundle
from moe_policy_ros.core.io import sha256_file
from moe_policy_ros.core.manifest import MANIFEST_NAME, parse_manifest, write_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]

OPSET = 17
CAMS = (("top", 24, 32), ("wrist", 16, 16))
P = 5  # proprio dim
H, A = 4, 3  # chunk length, action dim
D = 8  # context dim
R = 2  # flow rank
Z = 3  # latent dim
HID = 6  # expert hidden width


# --------------------------------------------------------------------------- graph builders


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _weights(family: str, e: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = 3 * len(CAMS) + P
    w = {
        "Wc": rng.normal(0, 0.5, (f, D)).astype(np.float32),
        "bc": rng.normal(0, 0.1, (D,)).astype(np.float32),
        "Wg": rng.normal(0, 1.0, (D, e)).astype(np.float32),
        "Wa": rng.normal(0, 1.0, (D, e)).astype(np.float32),
        "We": rng.normal(0, 1.0, (D, e)).astype(np.float32),
        "Wz": rng.normal(0, 1.0, (D, Z)).astype(np.float32),
        "W1": rng.normal(0, 0.5, (e, D, HID)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (e, HID)).astype(np.float32),
        "W2": rng.normal(0, 0.5, (e, HID, H * A)).astype(np.float32),
        "b2": rng.normal(0, 0.1, (e, H * A)).astype(np.float32),
        "Wv": rng.normal(0, 0.5, (e, D, R)).astype(np.float32),
    }
    q, _ = np.linalg.qr(rng.normal(size=(H * A, e * R)))
    w["basis"] = q.reshape(H * A, e, R).transpose(1, 0, 2)[None].astype(np.float32).copy()
    return w


def encoder_graph(family: str, e: int, w: dict[str, np.ndarray]) -> onnx.ModelProto:
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(f"image_{n}", f32, [1, 3, h, wd]) for n, h, wd in CAMS]
    inputs.append(helper.make_tensor_value_info("proprio", f32, [1, P]))
    nodes = []
    feats = []
    for n, _, _ in CAMS:
        nodes.append(helper.make_node("GlobalAveragePool", [f"image_{n}"], [f"gap_{n}"]))
        nodes.append(helper.make_node("Flatten", [f"gap_{n}"], [f"feat_{n}"], axis=1))
        feats.append(f"feat_{n}")
    nodes += [
        helper.make_node("Concat", [*feats, "proprio"], ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "Wc"], ["pre"]),
        helper.make_node("Add", ["pre", "bc"], ["pre_b"]),
        helper.make_node("Tanh", ["pre_b"], ["context"]),
        helper.make_node("MatMul", ["context", "Wg"], ["gate_logits"]),
    ]
    inits = [_init(k, w[k]) for k in ("Wc", "bc", "Wg")]
    outputs = [
        helper.make_tensor_value_info("context", f32, [1, D]),
        helper.make_tensor_value_info("gate_logits", f32, [1, e]),
    ]
    if family == "adamoe":
        nodes += [
            helper.make_node("MatMul", ["context", "Wa"], ["aw_pre"]),
            helper.make_node("Sigmoid", ["aw_pre"], ["adapter_weights"]),
        ]
        inits.append(_init("Wa", w["Wa"]))
        outputs.append(helper.make_tensor_value_info("adapter_weights", f32, [1, e]))
    elif family == "dibm":
        nodes.append(helper.make_node("MatMul", ["context", "We"], ["energies"]))
        inits.append(_init("We", w["We"]))
        outputs.append(helper.make_tensor_value_info("energies", f32, [1, e]))
    elif family == "lar":
        nodes.append(helper.make_node("MatMul", ["context", "Wz"], ["latent"]))
        inits.append(_init("Wz", w["Wz"]))
        outputs.append(helper.make_tensor_value_info("latent", f32, [1, Z]))
    elif family == "smp":
        nodes.append(helper.make_node("Identity", ["basis_c"], ["basis"]))
        inits.append(_init("basis_c", w["basis"]))
        outputs.append(helper.make_tensor_value_info("basis", f32, [1, e, H * A, R]))
    g = helper.make_graph(nodes, f"{family}_encoder", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def _const(name: str, vals: list[int]) -> TensorProto:
    return _init(name, np.array(vals, dtype=np.int64))


def expert_graph(family: str, e: int, w: dict[str, np.ndarray]) -> onnx.ModelProto:
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    if family == "smp":
        inputs = [
            helper.make_tensor_value_info("context", f32, [1, D]),
            helper.make_tensor_value_info("expert_idx", i64, ["k"]),
            helper.make_tensor_value_info("x_t", f32, [1, "k", R]),
            helper.make_tensor_value_info("t", f32, [1]),
        ]
        nodes = [
            helper.make_node("Gather", ["Wv", "expert_idx"], ["Wvk"], axis=0),
            helper.make_node("MatMul", ["context", "Wvk"], ["a"]),  # [k,1,R]
            helper.make_node("Reshape", ["a", "shp_1kr"], ["a2"]),
            helper.make_node("Tanh", ["a2"], ["ta"]),
            helper.make_node("Mul", ["x_t", "half"], ["hx"]),
            helper.make_node("Sub", ["ta", "hx"], ["v0"]),
            helper.make_node("Add", ["v0", "t"], ["velocity"]),
        ]
        inits = [
            _init("Wv", w["Wv"]),
            _const("shp_1kr", [1, -1, R]),
            _init("half", np.array(0.5, dtype=np.float32)),
        ]
        outputs = [helper.make_tensor_value_info("velocity", f32, [1, "k", R])]
    else:
        inputs = [
            helper.make_tensor_value_info("context", f32, [1, D]),
            helper.make_tensor_value_info("expert_idx", i64, ["k"]),
            helper.make_tensor_value_info("expert_weights", f32, ["k"]),
        ]
        nodes = [
            helper.make_node("Gather", ["W1", "expert_idx"], ["W1k"], axis=0),
            helper.make_node("Gather", ["b1", "expert_idx"], ["b1k"], axis=0),
            helper.make_node("Gather", ["W2", "expert_idx"], ["W2k"], axis=0),
            helper.make_node("Gather", ["b2", "expert_idx"], ["b2k"], axis=0),
            helper.make_node("MatMul", ["context", "W1k"], ["h0"]),  # [k,1,HID]
            helper.make_node("Reshape", ["b1k", "shp_k1h"], ["b1r"]),
            helper.make_node("Add", ["h0", "b1r"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "W2k"], ["o0"]),  # [k,1,HA]
            helper.make_node("Reshape", ["o0", "shp_kha"], ["o1"]),
            helper.make_node("Add", ["o1", "b2k"], ["o2"]),  # [k,HA]
            helper.make_node("Reshape", ["expert_weights", "shp_1k"], ["wr"]),
            helper.make_node("MatMul", ["wr", "o2"], ["mix"]),  # [1,HA]
            helper.make_node("Reshape", ["mix", "shp_1ha"], ["actions"]),
        ]
        inits = [
            _init("W1", w["W1"]),
            _init("b1", w["b1"]),
            _init("W2", w["W2"]),
            _init("b2", w["b2"]),
            _const("shp_k1h", [-1, 1, HID]),
            _const("shp_kha", [-1, H * A]),
            _const("shp_1k", [1, -1]),
            _const("shp_1ha", [1, H, A]),
        ]
        outputs = [helper.make_tensor_value_info("actions", f32, [1, H, A])]
    g = helper.make_graph(nodes, f"{family}_experts", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def manifest_dict(family: str, e: int, enc_sha: str, exp_sha: str) -> dict[str, Any]:
    d: dict[str, Any] = {
        "format_version": 1,
        "name": f"test_{family}",
        "family": family,
        "observation": {
            "cameras": [
                {"name": n, "height": h, "width": wd, "mean": [0.4, 0.5, 0.6],
                 "std": [0.2, 0.25, 0.3]}
                for n, h, wd in CAMS
            ],
            "proprio": {
                "joints": [f"q{i}" for i in range(P)],
                "mean": [0.1 * i for i in range(P)],
                "std": [1.0 + 0.5 * i for i in range(P)],
            },
        },
        "action": {
            "dim": A,
            "joints": [f"a{i}" for i in range(A)],
            "chunk_length": H,
            "control_period_s": 0.02,
            "mean": [0.5, -0.5, 0.0][:A],
            "std": [2.0, 0.5, 1.0][:A],
        },
        "experts": {"count": e, "labels": [f"skill{i}" for i in range(e)]},
        "routing": {"strategy": "dense" if family == "dense" else "topk", "k": min(2, e)},
        "context_dim": D,
        "stages": {
            "encoder": {"file": "encoder.onnx", "sha256": enc_sha},
            "experts": {"file": "experts.onnx", "sha256": exp_sha},
        },
        "provenance": {"exporter": "test/core/test_bundle.py", "onnx_opset": OPSET},
    }
    if family == "lar":
        d["latent_dim"] = Z
    if family == "smp":
        d["sampler"] = {"kind": "flow_euler", "steps": 3, "rank": R}
    return d


def write_bundle(
    root: Path, family: str = "adamoe", num_experts: int = 4, seed: int = 0
) -> Path:
    """Write a small contract-conforming bundle to ``root`` and return ``root``."""
    e = 1 if family == "dense" else num_experts
    root.mkdir(parents=True, exist_ok=True)
    w = _weights(family, e, seed)
    onnx.save(encoder_graph(family, e, w), str(root / "encoder.onnx"))
    onnx.save(expert_graph(family, e, w), str(root / "experts.onnx"))
    np.savez(root / "weights.npz", **w)  # type: ignore[arg-type]  # numpy reference
    data = manifest_dict(family, e, sha256_file(root / "encoder.onnx"),
                         sha256_file(root / "experts.onnx"))
    write_manifest(root, parse_manifest(data))
    return root


def rehash(root: Path) -> None:
    """Re-write the manifest's stage hashes (to test checks that come after the hashes)."""
    path = root / MANIFEST_NAME
    data = yaml.safe_load(path.read_text())
    for st in data["stages"].values():
        st["sha256"] = sha256_file(root / st["file"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --------------------------------------------------------------------------- numpy reference


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def reference_encoder(bundle: Path, images: dict[str, np.ndarray], proprio: np.ndarray,
                      ) -> dict[str, np.ndarray]:
    w = dict(np.load(bundle / "weights.npz"))
    m = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    feats = []
    for cam in m["observation"]["cameras"]:
        x = images[cam["name"]].astype(np.float64) / 255.0
        x = (x - np.array(cam["mean"])) / np.array(cam["std"])
        feats.append(x.mean(axis=(0, 1)))
    pm = m["observation"]["proprio"]
    feats.append((proprio - np.array(pm["mean"])) / np.array(pm["std"]))
    f = np.concatenate(feats)
    c = np.tanh(f @ w["Wc"] + w["bc"])
    return {
        "context": c,
        "gate_logits": c @ w["Wg"],
        "adapter_weights": 1 / (1 + np.exp(-(c @ w["Wa"]))),
        "energies": c @ w["We"],
        "latent": c @ w["Wz"],
    }


def reference_chunk(bundle: Path, images: dict[str, np.ndarray], proprio: np.ndarray,
                    active: np.ndarray, weights: np.ndarray,
                    noise: np.ndarray | None = None) -> np.ndarray:
    """Denormalised [H, A] chunk for a given active set/weights (and flow noise [k, R])."""
    w = dict(np.load(bundle / "weights.npz"))
    m = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    c = reference_encoder(bundle, images, proprio)["context"]
    if m["family"] == "smp":
        assert noise is not None
        steps = m["sampler"]["steps"]
        x = noise.astype(np.float64).copy()
        for i in range(steps):
            t = i / steps
            v = np.stack([np.tanh(c @ w["Wv"][j]) for j in active]) - 0.5 * x + t
            x = x + v / steps
        flat = sum(wj * (w["basis"][0, j] @ x[n]) for n, (j, wj) in
                   enumerate(zip(active, weights, strict=True)))
    else:
        outs = [np.maximum(c @ w["W1"][j] + w["b1"][j], 0) @ w["W2"][j] + w["b2"][j]
                for j in active]
        flat = sum(wj * o for wj, o in zip(weights, outs, strict=True))
    act = np.asarray(flat).reshape(H, A)
    return act * np.array(m["action"]["std"]) + np.array(m["action"]["mean"])


# --------------------------------------------------------------------------- tests


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "b", "adamoe")


@pytest.mark.parametrize("family", ["adamoe", "smp", "dibm", "lar", "dense"])
def test_valid_bundle_loads(tmp_path: Path, family: str) -> None:
    root = write_bundle(tmp_path / family, family)
    b = load_bundle(root)
    assert b.manifest.family == family
    assert set(b.stage_paths) == {"encoder", "experts"}
    assert b.stage_paths["encoder"] == (root / "encoder.onnx").resolve()
    raw = (root / MANIFEST_NAME).read_bytes()
    assert b.manifest_sha256 == hashlib.sha256(raw).hexdigest()


def test_pinned_sha_accepted_and_mismatch_refused(bundle: Path) -> None:
    sha = hashlib.sha256((bundle / MANIFEST_NAME).read_bytes()).hexdigest()
    assert load_bundle(bundle, expected_sha256=sha.upper()).manifest_sha256 == sha
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle, expected_sha256="0" * 64)
    msg = str(ei.value)
    assert MANIFEST_NAME in msg and "0" * 64 in msg and sha in msg


def test_swapped_bundle_refused_by_pin(tmp_path: Path) -> None:
    a = write_bundle(tmp_path / "a", "adamoe", seed=0)
    b = write_bundle(tmp_path / "b", "adamoe", seed=1)
    pin = load_bundle(a).manifest_sha256
    with pytest.raises(BundleError, match="pinned"):
        load_bundle(b, expected_sha256=pin)


def test_tampered_stage_refused_naming_file(bundle: Path) -> None:
    p = bundle / "experts.onnx"
    expected = sha256_file(p)
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    msg = str(ei.value)
    assert "experts.onnx" in msg and "SHA-256 mismatch" in msg
    assert expected in msg and sha256_file(p) in msg


def test_missing_stage_file_refused(bundle: Path) -> None:
    (bundle / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"encoder\.onnx.*missing"):
        load_bundle(bundle)


def test_a_checkpoint_inside_the_bundle_is_refused(bundle: Path) -> None:
    """Bundles ship ONNX + manifest only: a manifest listing a pickle-based file is invalid."""
    (bundle / "model.pt").write_bytes(b"weights")
    data = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    data["checkpoint"] = {"file": "model.pt", "sha256": sha256_file(bundle / "model.pt")}
    (bundle / MANIFEST_NAME).write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match=r"policy\.yaml: invalid manifest:\n  checkpoint"):
        load_bundle(bundle)


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_corrupt_or_truncated_onnx_refused(bundle: Path, cut: float) -> None:
    p = bundle / "encoder.onnx"
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)] if cut else b"\x0a\xff\xff\xff garbage")
    rehash(bundle)  # the hash matches, so the parser must catch it
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    assert "encoder.onnx" in str(ei.value)
    assert "corrupt" in str(ei.value) or "checker" in str(ei.value)


def test_invalid_manifest_refused(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).write_text("format_version: 1\nname: x\n")
    with pytest.raises(BundleError, match="invalid manifest"):
        load_bundle(bundle)
    (bundle / MANIFEST_NAME).write_text("{ not yaml")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle)


def test_mismatched_graph_io_refused(bundle: Path) -> None:
    # Manifest says proprio has 5 joints; rebuild the encoder with 6.
    m = onnx.load(str(bundle / "encoder.onnx"))
    m.graph.input[-1].type.tensor_type.shape.dim[1].dim_value = 6
    onnx.save(m, str(bundle / "encoder.onnx"))
    rehash(bundle)
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    msg = str(ei.value)
    assert "encoder.onnx" in msg and "'proprio' dim 1: expected 5" in msg and "got 6" in msg


def test_renamed_output_and_wrong_dtype_refused(bundle: Path) -> None:
    m = onnx.load(str(bundle / "experts.onnx"))
    m.graph.input[2].type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.save(m, str(bundle / "experts.onnx"))
    rehash(bundle)
    with pytest.raises(BundleError, match="'expert_weights' dtype: expected float32, got float64"):
        load_bundle(bundle)
    m = onnx.load(str(bundle / "encoder.onnx"))
    m.graph.output[1].name = "router_logits"
    m.graph.node[-3].output[0] = "router_logits"  # MatMul(context, Wg)
    onnx.save(m, str(bundle / "encoder.onnx"))
    rehash(bundle)
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    assert "missing ['gate_logits']" in str(ei.value)
    assert "unexpected ['router_logits']" in str(ei.value)


def test_static_k_and_wrong_expert_count_refused(tmp_path: Path) -> None:
    root = write_bundle(tmp_path / "b", "dibm")
    m = onnx.load(str(root / "experts.onnx"))
    m.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(m, str(root / "experts.onnx"))
    rehash(root)
    with pytest.raises(BundleError, match="'expert_idx' dim 0: expected dynamic 'k'"):
        load_bundle(root)
    root = write_bundle(tmp_path / "c", "dibm")
    data = yaml.safe_load((root / MANIFEST_NAME).read_text())
    data["experts"] = {"count": 5, "labels": list("abcde")}
    (root / MANIFEST_NAME).write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match=r"'gate_logits' dim 1: expected 5 .*got 4"):
        load_bundle(root)


def _externalise(root: Path, location: str) -> None:
    m = onnx.load(str(root / "experts.onnx"))
    for t in m.graph.initializer:
        if t.name == "W1":
            t.ClearField("raw_data")
            del t.float_data[:]
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value=location)
            t.external_data.add(key="offset", value="0")
            t.external_data.add(key="length", value="16")
    onnx.save(m, str(root / "experts.onnx"))
    rehash(root)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../x.bin"])
def test_external_data_escaping_refused(bundle: Path, location: str) -> None:
    (bundle.parent / "outside.bin").write_bytes(b"\0" * 64)
    _externalise(bundle, location)
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    msg = str(ei.value)
    assert "experts.onnx" in msg and "'W1'" in msg
    assert "absolute" in msg or "escapes" in msg


def test_external_data_symlink_out_refused(bundle: Path) -> None:
    (bundle.parent / "outside.bin").write_bytes(b"\0" * 64)
    os.symlink(bundle.parent / "outside.bin", bundle / "link.bin")
    _externalise(bundle, "link.bin")
    with pytest.raises(BundleError, match="outside the bundle directory"):
        load_bundle(bundle)


def _list_external(bundle: Path, rel: str, sha: str) -> None:
    data = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    data["stages"]["experts"]["external_data"] = {rel: sha}
    (bundle / MANIFEST_NAME).write_text(yaml.safe_dump(data))


def test_external_data_inside_accepted_and_range_checked(bundle: Path) -> None:
    (bundle / "w1.bin").write_bytes(b"\0" * 64)
    _externalise(bundle, "w1.bin")
    _list_external(bundle, "w1.bin", sha256_file(bundle / "w1.bin"))
    b = load_bundle(bundle)
    assert b.external_data["experts"] == ((bundle / "w1.bin").resolve(),)
    (bundle / "w1.bin").write_bytes(b"\0" * 8)
    _list_external(bundle, "w1.bin", sha256_file(bundle / "w1.bin"))
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(bundle)


def test_external_data_must_be_hashed_and_match(bundle: Path) -> None:
    (bundle / "w1.bin").write_bytes(b"\0" * 64)
    _externalise(bundle, "w1.bin")
    with pytest.raises(BundleError, match=r"w1\.bin: external data of stage 'experts' has no"):
        load_bundle(bundle)
    _list_external(bundle, "w1.bin", sha256_file(bundle / "w1.bin"))
    load_bundle(bundle)
    (bundle / "w1.bin").write_bytes(b"\1" * 64)  # same size, other weights
    with pytest.raises(BundleError, match=r"w1\.bin: external data .* SHA-256 mismatch"):
        load_bundle(bundle)


def test_stage_path_escaping_refused(bundle: Path) -> None:
    outside = bundle.parent / "enc.onnx"
    outside.write_bytes((bundle / "encoder.onnx").read_bytes())
    data = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    data["stages"]["encoder"]["file"] = "../enc.onnx"
    (bundle / MANIFEST_NAME).write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match="escapes the bundle directory"):
        load_bundle(bundle)
    (bundle / "encoder.onnx").unlink()
    os.symlink(outside, bundle / "encoder.onnx")
    data["stages"]["encoder"]["file"] = "encoder.onnx"
    (bundle / MANIFEST_NAME).write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match="outside the bundle directory"):
        load_bundle(bundle)


def test_missing_directory_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"policy\.yaml: bundle manifest not found"):
        load_bundle(tmp_path / "empty")


def test_camera_preprocess_defaults_and_declared(bundle: Path) -> None:
    """Bundles without observation.cameras[].preprocess (all shipped ones) load with the
    default (resize, area); a declared one is read; a bad one is refused naming it."""
    for shipped in sorted((REPO_ROOT / "models").glob("*/policy.yaml")):
        m = load_bundle(shipped.parent).manifest
        for cam in m.observation.cameras:
            assert "preprocess" not in yaml.safe_load(shipped.read_text())["observation"][
                "cameras"][0]
            assert (cam.preprocess.mode, cam.preprocess.roi, cam.preprocess.interpolation) == (
                "resize", None, "area")
    data = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    cams = data["observation"]["cameras"]
    assert cams, "the test bundle has a camera"
    cams[0]["preprocess"] = {"mode": "roi", "roi": [10, 20, 320, 240]}
    m = parse_manifest(data)
    assert m.observation.cameras[0].preprocess.roi == (10, 20, 320, 240)
    cams[0]["preprocess"] = {"mode": "zoom"}
    with pytest.raises(BundleError, match=r"preprocess.mode.*'zoom'"):
        parse_manifest(data)
    cams[0]["preprocess"] = {"mode": "roi"}
    with pytest.raises(BundleError, match=r"needs roi"):
        parse_manifest(data)
