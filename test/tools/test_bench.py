"""`bench` and `inspect` CLI glue on real bundles: the JSON shape, refusals, exit codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from moe_policy_ros.tools import bench
from moe_policy_ros.tools import inspect as inspect_cmd
from moe_policy_ros.tools.bench import MIN_RUNS


def _bench_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(argv)


def _inspect_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    inspect_cmd.add_arguments(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, hand_bundle: Any) -> Path:
    root = tmp_path_factory.mktemp("bench") / "adamoe"
    return hand_bundle.write_bundle(root, "adamoe", num_experts=4)


@pytest.mark.parametrize("routing", [["dense"], ["topk", "--k", "2"], ["mass", "--tau", "0.6"]])
def test_bench_json_shape(bundle: Path, capsys: pytest.CaptureFixture[str],
                          routing: list[str]) -> None:
    args = _bench_args([str(bundle), "--backend", "onnxruntime", "--routing", *routing,
                        "--runs", "200", "--warmup", "2", "--threads", "1", "--json"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    r = json.loads(out)  # exactly one JSON object
    assert r["backend"] == "onnxruntime-cpu" and r["routing"] == routing[0]
    assert r["runs"] == 200 and r["family"] == "adamoe" and r["num_experts"] == 4
    assert set(r["stages"]) == {"preprocess", "encoder", "routing", "experts", "total"}
    for st in r["stages"].values():
        assert 0 <= st["median_ms"] <= st["p99_ms"]
    k = r["mean_active_experts"]
    if routing[0] == "dense":
        assert k == 4.0
    elif routing[0] == "topk":
        assert k == 2.0 and r["active_experts_histogram"] == {"2": 200}
    else:
        assert 1 <= k <= 4
    m = r["machine"]
    assert m["cores"] >= 1 and m["python"] and m["onnxruntime"] and m["cpu"]
    assert r["date"].endswith("Z") and len(r["manifest_sha256"]) == 64


def test_bench_table_and_errors(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _bench_args([str(bundle), "--backend", "onnxruntime", "--warmup", "0"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "experts" in out and "median ms" in out and "routing topk" in out
    with pytest.raises(SystemExit):
        _bench_args([str(bundle), "--runs", str(MIN_RUNS - 1)])
    assert "--runs must be >= 200" in capsys.readouterr().err
    assert bench.run(_bench_args([str(bundle), "--sha256", "f" * 64])) == 2
    assert "pinned" in capsys.readouterr().err
    assert bench.run(_bench_args([str(bundle), "--backend", "tensorrt", "--device", "cuda"])
                     ) in (0, 2)


def test_inspect_text_and_json(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect_cmd.run(_inspect_args([str(bundle)])) == 0
    out = capsys.readouterr().out
    for needle in ("family     adamoe", "experts    4: 0=skill0", "routing    default topk",
                   "camera     top: 24x32x3", "proprio    5", "action     3 joints x H=4",
                   "verified", "parameters", "provenance", "parity     not recorded"):
        assert needle in out, needle
    assert inspect_cmd.run(_inspect_args([str(bundle), "--json"])) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["experts"]["count"] == 4 and s["stages"]["experts"]["sha256_verified"]
    # W1 4*8*6 + b1 4*6 + W2 4*6*12 + b2 4*12 (+ 4 shape constants of 3+2+2+3 values)
    assert s["stages"]["experts"]["parameters"] == 192 + 24 + 288 + 48 + 10
    assert s["parameters"]["default_k"] == 2


def test_inspect_refuses_tampered(bundle: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], hand_bundle: Any) -> None:
    b = hand_bundle.write_bundle(tmp_path / "t", "lar")
    (b / "encoder.onnx").write_bytes((b / "encoder.onnx").read_bytes() + b"\0")
    assert inspect_cmd.run(_inspect_args([str(b)])) == 2
    err = capsys.readouterr().err
    assert "bundle refused" in err and "encoder.onnx" in err and "SHA-256 mismatch" in err
