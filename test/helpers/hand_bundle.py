"""A small hand-built bundle (ONNX graphs made with ``onnx.helper``) that honours the graph
contract for every family, and its numpy reference.

:func:`write_bundle` writes one; :func:`reference_encoder` and :func:`reference_chunk` compute
what the runtime must produce from it (normalisation, routing, sampler, combination and
denormalisation computed independently of the runtime). Tests get this module through the
``hand_bundle`` fixture (test/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

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
