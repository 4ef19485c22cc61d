"""`moe-policy-ros doctor` as a user runs it (a subprocess), against this machine and against
parameter files that need something that is missing or wrong here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers import REPO

pytestmark = [pytest.mark.slow]

SIM_CFG = REPO / "config" / "sim_dual_arm.yaml"
DUAL_CFG = REPO / "config" / "dual_arm.yaml"


#: A command runner fixture: ``run(*args, timeout=...)`` -> the finished process.
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def doctor(cli: Run) -> Run:
    """``doctor(*args, timeout=180)``: ``moe-policy-ros doctor ARGS``, output captured."""
    return lambda *args, timeout=180: cli("doctor", *args, timeout=timeout)


def _lines(out: str, check: str) -> list[str]:
    return [line for line in out.splitlines() if f"] {check}:" in line]


def _params(tmp: Path, edit: dict[str, Any], name: str = "p.yaml") -> Path:
    doc = yaml.safe_load(DUAL_CFG.read_text())
    pol = doc["/**/moe_policy"]["ros__parameters"]["policy"]
    pol.update(edit)
    path = tmp / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.ros
def test_doctor_reports_every_check_and_exits_0_on_this_machine(doctor: Run) -> None:
    pytest.importorskip("rclpy")
    res = doctor("--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    checks = {f["check"] for f in report["findings"]}
    assert {"versions", "ros", "dds", "ament", "gl", "onnxruntime", "realsense",
            "bundle demo_adamoe", "bundle demo_smp"} <= checks, checks
    by = {f["check"]: f for f in report["findings"]}
    assert by["dds"]["status"] == "ok" and "round trip" in by["dds"]["found"]
    assert by["ament"]["status"] == "ok", by["ament"]
    # every problem line says what to do
    for f in report["findings"]:
        if f["status"] in ("warn", "fail", "info"):
            assert f["todo"], f
    res = doctor()
    assert res.returncode == 0
    assert _lines(res.stdout, "dds") and res.stdout.rstrip().endswith("nothing blocking found")


def test_doctor_fails_for_a_file_whose_bundle_is_tampered(tmp_path: Path, doctor: Run) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "models" / "demo_adamoe", bundle)
    stage = next(bundle.glob("*.onnx"))
    data = bytearray(stage.read_bytes())
    data[-1] ^= 0xFF
    stage.write_bytes(bytes(data))
    res = doctor(str(_params(tmp_path, {"bundle": str(bundle)})), "--listen", "0.5")
    assert res.returncode == 1, res.stdout
    (line,) = _lines(res.stdout, "params bundle")
    assert line.startswith("[FAIL]") and stage.name in line and "->" in line
    assert "problem(s) with what the given file needs" in res.stdout


def test_doctor_finds_the_same_mismatch_as_the_node_s_configure(
    tmp_path: Path, doctor: Run
) -> None:
    """A trained bundle (160x120 camera) under a file that sets 128x96: doctor reports the
    sentence the policy node's configure fails with (core.compat), naming both sizes."""
    from moe_policy_ros.core.bundle import load_bundle
    from moe_policy_ros.core.compat import bundle_mismatches
    from moe_policy_ros.core.config import load_config

    bundle = REPO / "models" / "tc_adamoe"
    params = _params(tmp_path, {"bundle": str(bundle)})
    doc = yaml.safe_load(params.read_text())
    doc["/**"]["ros__parameters"]["cameras"]["top"].update(width=128, height=96)
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = doctor(str(params), "--listen", "0.5")
    assert res.returncode == 1, res.stdout
    (line,) = _lines(res.stdout, "params bundle")
    (want,) = bundle_mismatches(load_bundle(bundle).manifest,
                                load_config(params).robot.joint_names,
                                load_config(params).cameras, str(bundle))
    assert line.startswith("[FAIL]") and want in line, (line, want)
    assert "128x96" in want and "160x120" in want


def test_doctor_fails_for_a_gpu_backend_on_a_machine_without_one(
    tmp_path: Path, doctor: Run
) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    res = doctor(str(_params(tmp_path, {"backend": "onnxruntime-cuda", "device": "cuda"})),
                 "--listen", "0.5")
    assert res.returncode == 1, res.stdout
    assert _lines(res.stdout, "cuda")[0].startswith("[FAIL]")
    (line,) = _lines(res.stdout, "params backend")
    assert line.startswith("[FAIL]") and "onnxruntime-cuda" in line


def test_doctor_names_the_broken_field_of_a_file(tmp_path: Path, doctor: Run) -> None:
    res = doctor(str(_params(tmp_path, {"control_rate_hz": -1})), "--listen", "0.5")
    assert res.returncode == 1
    (line,) = _lines(res.stdout, "params")
    assert line.startswith("[FAIL]") and "policy.control_rate_hz" in line


@pytest.mark.ros
def test_doctor_listens_to_the_camera_topic_and_explains_a_size_mismatch(
    tmp_path: Path, doctor: Run, node_env: dict[str, str], ros: ModuleType,
) -> None:
    """A real publisher (this process) sends 64x48 bgr8 frames on /r7/cameras/top/image_raw;
    the file (and its bundle) need 128x96: doctor sees the frames over DDS and fails."""
    pytest.importorskip("rclpy")
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    client = ros.RosClient("doctor_camera_test")
    try:
        pub = client.node.create_publisher(Image, "/r7/cameras/top/image_raw",
                                           qos_profile_sensor_data)
        msg = Image(height=48, width=64, encoding="bgr8", step=64 * 3, data=bytes(64 * 48 * 3))
        proc = subprocess.Popen(
            [sys.executable, "-m", "moe_policy_ros.cli", "doctor", str(DUAL_CFG),
             "--namespace", "r7", "--listen", "3"],
            cwd=REPO, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None:
            pub.publish(msg)
            time.sleep(0.05)
        out, err = proc.communicate()
    finally:
        client.close()
    assert proc.returncode == 1, out + err
    (line,) = _lines(out, "camera top")
    assert line.startswith("[FAIL]"), line
    assert "/r7/cameras/top/image_raw" in line and "64x48 bgr8" in line
    assert "need 128x96" in line and "->" in line
    # without the namespace nothing publishes: a warning that says what to start
    res = doctor(str(DUAL_CFG), "--listen", "0.5")
    (line,) = _lines(res.stdout, "camera top")
    assert line.startswith("[WARN]") and "nothing publishes /cameras/top/image_raw" in line
