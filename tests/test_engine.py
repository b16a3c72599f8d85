"""build-engine: the exact trtexec command lines, the container it would run in, and the parsers on real-format output.

No GPU, TensorRT or Docker engine here: the commands and container spec are checked as data; the parsers run on
fixtures written in the format trtexec prints (tests/fixtures).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from tritonctl.engine import EngineSettings, build_command, engine_container_spec, parse_summary, parse_times, timing_command
from tritonctl.errors import BadInput

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def yolo_like_onnx(tmp_path: Path) -> Path:
    from onnx_models import tiny_detector

    return tiny_detector(tmp_path / "model_fp16.onnx", imgsz=64, fp16=True)


def test_build_command_equals_the_seeds(yolo_like_onnx: Path, tmp_path: Path) -> None:
    s = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, imgsz=(640, 640))
    cmd = build_command(s, "/usr/src/tensorrt/bin/trtexec", "MODEL.onnx", "CONVERTED.engine")
    assert cmd == [
        "/usr/src/tensorrt/bin/trtexec", "--onnx=MODEL.onnx", "--saveEngine=CONVERTED.engine",
        "--optShapes=images:8x3x640x640", "--minShapes=images:1x3x640x640", "--maxShapes=images:16x3x640x640",
        "--shapes=images:8x3x640x640", "--fp16",
    ]
    fp32 = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, precision="fp32", min_batch=2, opt_batch=4,
                                 max_batch=8, workspace_mb=2048)
    cmd32 = build_command(fp32, "trtexec", "m.onnx", "m.plan")
    assert "--fp16" not in cmd32 and "--minShapes=images:2x3x64x64" in cmd32  # image size read from the model
    assert "--memPoolSize=workspace:2048M" in cmd32


def test_timing_command_equals_the_seeds() -> None:
    assert timing_command("/usr/src/tensorrt/bin/trtexec", "CONVERTED.engine", "images:8x3x640x640",
                          "inference_times.json") == [
        "/usr/src/tensorrt/bin/trtexec", "--loadEngine=CONVERTED.engine", "--shapes=images:8x3x640x640",
        "--exportTimes=inference_times.json"]


def test_container_spec(yolo_like_onnx: Path, tmp_path: Path) -> None:
    s = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path / "out", gpus="0")
    spec = engine_container_spec(s, ["trtexec"])
    assert spec["privileged"] is False and spec["network_disabled"] is True
    assert spec["volumes"][str(yolo_like_onnx.parent.resolve())]["mode"] == "ro"
    assert spec["volumes"][str((tmp_path / "out").resolve())]["mode"] == "rw"
    assert spec["device_requests"][0]["DeviceIDs"] == ["0"]
    assert spec["image"].startswith("nvcr.io/nvidia/tritonserver:")


@pytest.mark.parametrize(
    ("kw", "words"),
    [({"min_batch": 4, "opt_batch": 2}, "min"), ({"precision": "int4"}, "int4"), ({"runtime": "k8s"}, "k8s"),
     ({"repo": Path("r")}, "--name")],
)
def test_bad_settings(yolo_like_onnx: Path, tmp_path: Path, kw: dict, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, **kw)


def test_parse_summary_reads_trtexec_log() -> None:
    summary = parse_summary((FIXTURES / "trtexec_build.log").read_text().splitlines())
    assert summary.throughput_qps == pytest.approx(302.447)
    assert summary.stats["latency"].mean == pytest.approx(3.57941)
    assert summary.stats["latency"].percentiles == {"p90": 3.62549, "p95": 3.66211, "p99": 4.07593}
    assert summary.stats["gpu_compute"].median == pytest.approx(3.29102)
    assert summary.stats["h2d"].max == pytest.approx(0.0876465)
    assert set(summary.stats) == {"latency", "enqueue", "h2d", "gpu_compute", "d2h"}
    assert summary.host_walltime_s == pytest.approx(3.00879) and summary.passed is True


def test_parse_times_reads_export_times() -> None:
    import json

    import numpy as np

    times = parse_times(FIXTURES / "inference_times.json")
    records = json.loads((FIXTURES / "inference_times.json").read_text())
    assert times["inferences"] == 200
    assert times["compute"]["mean"] == pytest.approx(np.mean([r["computeMs"] for r in records]))
    assert times["h2d"]["median"] == pytest.approx(np.median([r["h2dMs"] for r in records]))
    assert times["d2h"]["p99"] >= times["d2h"]["median"] >= times["d2h"]["min"]


def test_parse_times_rejects_other_json(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(BadInput):
        parse_times(bad)


@pytest.mark.parametrize("runtime", ["local", "docker"])
def test_cli_without_any_builder_points_to_the_local_runtime(yolo_like_onnx: Path, tmp_path: Path, runtime: str) -> None:
    """No trtexec and no Docker engine (these machines): one line that names both and what works instead, not a
    circle between --runtime local and --runtime docker. Nothing is written."""
    result = run_cli("build-engine", "--onnx", str(yolo_like_onnx), "--runtime", runtime, "--out-dir", str(tmp_path / "e"),
                     env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert_one_line_error(result, 3, "neither Docker nor", "trtexec", "tritonctl serve")
    assert "--runtime" not in result.stderr
    assert not (tmp_path / "e").exists()


def test_cli_missing_onnx(tmp_path: Path) -> None:
    result = run_cli("build-engine", "--onnx", str(tmp_path / "none.onnx"), "--runtime", "local")
    assert result.returncode == 2 and "tritonctl export" in result.stderr


def test_run_local_streams_and_keeps_the_log(tmp_path: Path) -> None:
    """A local trtexec's output reaches the callback line by line and the log file whole (a script stands in)."""
    from tritonctl.engine import run_local

    fake = tmp_path / "trtexec"
    fake.write_text(f"#!/bin/sh\ncat {FIXTURES / 'trtexec_build.log'}\nexit 0\n")
    fake.chmod(0o755)
    seen: list[str] = []
    log = tmp_path / "build.log"
    assert run_local([str(fake)], log, seen.append) == 0
    assert log.read_text().splitlines() == seen == (FIXTURES / "trtexec_build.log").read_text().splitlines()
    assert parse_summary(seen).throughput_qps == pytest.approx(302.447)
