"""bench/inference.py on the demo flow bundle: the report's shape and the bytes model (gather
once per chunk copies steps times less than per step); no timed assertions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_inference", REPO / "bench/inference.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_inference_bench_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench_module()
    out = tmp_path / "r.json"
    argv = [str(REPO / "models/demo_smp"), "--runs", "5", "--k-runs", "2", "--json", str(out)]
    assert bench.main(argv) == 0
    capsys.readouterr()
    report = json.loads(out.read_text())
    (r,) = report["results"]
    assert r["family"] == "smp" and r["experts"] == 8 and r["flow_steps"] == 10
    assert set(r["default_routing"]) == {"gather_once", "gather_per_step"}
    for stage in ("preprocess", "encoder", "routing", "experts", "total"):
        assert r["default_routing"]["gather_once"][stage]["median"] > 0
    assert [row["k"] for row in r["k_sweep"]] == list(range(1, 9))
    s = r["expert_slice_bytes"]
    assert s > 0
    for row in r["k_sweep"]:
        k = row["k"]
        assert row["bytes_copied_once"] == k * s
        assert row["bytes_copied_per_step"] == 10 * k * s
        assert row["bytes_read_once"] < row["bytes_read_per_step"]
    assert len(report["results"]) == 1 and "load_before" in r
    assert r["rtc"]["delay_steps"] == 3 and r["rtc"]["total"]["median"] > 0
    assert bench.main(["--markdown", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| demo_smp | 8 |" in table and "rtc guided (d=3, s=5)" in table
