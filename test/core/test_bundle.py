"""Bundle loading: hashes, pinned manifest, corrupt files, graph I/O contract, containment.

The hand-built bundle these tests corrupt comes from the ``hand_bundle`` fixture
(test/helpers/hand_bundle.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml
from onnx import TensorProto

from moe_policy_ros.core.bundle import BundleError, load_bundle
from moe_policy_ros.core.io import sha256_file
from moe_policy_ros.core.manifest import FAMILIES, MANIFEST_NAME, parse_manifest

# --------------------------------------------------------------------------- tests


@pytest.fixture
def bundle(tmp_path: Path, hand_bundle: Any) -> Path:
    return hand_bundle.write_bundle(tmp_path / "b", "adamoe")


@pytest.mark.parametrize("family", FAMILIES)
def test_valid_bundle_loads(tmp_path: Path, family: str, hand_bundle: Any) -> None:
    root = hand_bundle.write_bundle(tmp_path / family, family)
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


def test_swapped_bundle_refused_by_pin(tmp_path: Path, hand_bundle: Any) -> None:
    a = hand_bundle.write_bundle(tmp_path / "a", "adamoe", seed=0)
    b = hand_bundle.write_bundle(tmp_path / "b", "adamoe", seed=1)
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
def test_corrupt_or_truncated_onnx_refused(bundle: Path, cut: float, hand_bundle: Any) -> None:
    p = bundle / "encoder.onnx"
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)] if cut else b"\x0a\xff\xff\xff garbage")
    hand_bundle.rehash(bundle)  # the hash matches, so the parser must catch it
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


def test_mismatched_graph_io_refused(bundle: Path, hand_bundle: Any) -> None:
    # Manifest says proprio has 5 joints; rebuild the encoder with 6.
    m = onnx.load(str(bundle / "encoder.onnx"))
    m.graph.input[-1].type.tensor_type.shape.dim[1].dim_value = 6
    onnx.save(m, str(bundle / "encoder.onnx"))
    hand_bundle.rehash(bundle)
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    msg = str(ei.value)
    assert "encoder.onnx" in msg and "'proprio' dim 1: expected 5" in msg and "got 6" in msg


def test_renamed_output_and_wrong_dtype_refused(bundle: Path, hand_bundle: Any) -> None:
    m = onnx.load(str(bundle / "experts.onnx"))
    m.graph.input[2].type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.save(m, str(bundle / "experts.onnx"))
    hand_bundle.rehash(bundle)
    with pytest.raises(BundleError, match="'expert_weights' dtype: expected float32, got float64"):
        load_bundle(bundle)
    m = onnx.load(str(bundle / "encoder.onnx"))
    m.graph.output[1].name = "router_logits"
    m.graph.node[-3].output[0] = "router_logits"  # MatMul(context, Wg)
    onnx.save(m, str(bundle / "encoder.onnx"))
    hand_bundle.rehash(bundle)
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    assert "missing ['gate_logits']" in str(ei.value)
    assert "unexpected ['router_logits']" in str(ei.value)


def test_static_k_and_wrong_expert_count_refused(tmp_path: Path, hand_bundle: Any) -> None:
    root = hand_bundle.write_bundle(tmp_path / "b", "dibm")
    m = onnx.load(str(root / "experts.onnx"))
    m.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(m, str(root / "experts.onnx"))
    hand_bundle.rehash(root)
    with pytest.raises(BundleError, match="'expert_idx' dim 0: expected dynamic 'k'"):
        load_bundle(root)
    root = hand_bundle.write_bundle(tmp_path / "c", "dibm")
    data = yaml.safe_load((root / MANIFEST_NAME).read_text())
    data["experts"] = {"count": 5, "labels": list("abcde")}
    (root / MANIFEST_NAME).write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match=r"'gate_logits' dim 1: expected 5 .*got 4"):
        load_bundle(root)


def _externalise(root: Path, location: str, hand_bundle: Any) -> None:
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
    hand_bundle.rehash(root)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../x.bin"])
def test_external_data_escaping_refused(bundle: Path, location: str, hand_bundle: Any) -> None:
    (bundle.parent / "outside.bin").write_bytes(b"\0" * 64)
    _externalise(bundle, location, hand_bundle)
    with pytest.raises(BundleError) as ei:
        load_bundle(bundle)
    msg = str(ei.value)
    assert "experts.onnx" in msg and "'W1'" in msg
    assert "absolute" in msg or "escapes" in msg


def test_external_data_symlink_out_refused(bundle: Path, hand_bundle: Any) -> None:
    (bundle.parent / "outside.bin").write_bytes(b"\0" * 64)
    os.symlink(bundle.parent / "outside.bin", bundle / "link.bin")
    _externalise(bundle, "link.bin", hand_bundle)
    with pytest.raises(BundleError, match="outside the bundle directory"):
        load_bundle(bundle)


def _list_external(bundle: Path, rel: str, sha: str) -> None:
    data = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    data["stages"]["experts"]["external_data"] = {rel: sha}
    (bundle / MANIFEST_NAME).write_text(yaml.safe_dump(data))


def test_external_data_inside_accepted_and_range_checked(bundle: Path, hand_bundle: Any) -> None:
    (bundle / "w1.bin").write_bytes(b"\0" * 64)
    _externalise(bundle, "w1.bin", hand_bundle)
    _list_external(bundle, "w1.bin", sha256_file(bundle / "w1.bin"))
    b = load_bundle(bundle)
    assert b.external_data["experts"] == ((bundle / "w1.bin").resolve(),)
    (bundle / "w1.bin").write_bytes(b"\0" * 8)
    _list_external(bundle, "w1.bin", sha256_file(bundle / "w1.bin"))
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(bundle)


def test_external_data_must_be_hashed_and_match(bundle: Path, hand_bundle: Any) -> None:
    (bundle / "w1.bin").write_bytes(b"\0" * 64)
    _externalise(bundle, "w1.bin", hand_bundle)
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
    """Bundles without observation.cameras[].preprocess (the untrained demo ones) load with
    the default (resize, area); a declared one is read; a bad one is refused naming it."""
    models = Path(__file__).resolve().parents[2] / "models"
    for name in ("demo_adamoe", "demo_smp"):
        shipped = models / name / "policy.yaml"
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
