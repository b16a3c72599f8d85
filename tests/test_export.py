"""`tritonctl export` on the demo checkpoint trained here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_PT, run_cli

from tritonctl.metadata import read_onnx

pytestmark = pytest.mark.slow


def test_both_models_with_metadata(demo_export: Path) -> None:
    fp32, fp16 = read_onnx(demo_export / "model_fp32.onnx"), read_onnx(demo_export / "model_fp16.onnx")
    assert fp32.names == fp16.names == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    side = fp32.imgsz[0]  # type: ignore[index]
    assert [(t.name, t.dtype, t.shape) for t in fp32.inputs] == [("images", "FP32", (-1, 3, side, side))]
    assert [(t.name, t.dtype, t.shape) for t in fp16.inputs] == [("images", "FP16", (-1, 3, side, side))]
    anchors = sum((side // s) ** 2 for s in (8, 16, 32))
    assert fp16.outputs[0].shape == (-1, 8, anchors) and fp16.outputs[0].dtype == "FP16"
    assert (fp32.precision, fp16.precision, fp32.stride, fp32.task) == ("fp32", "fp16", 32, "detect")
    sidecar = json.loads((demo_export / "model.json").read_text())
    assert set(sidecar["files"]) == {"fp32", "fp16"} and sidecar["names"]["3"] == "cross"
    assert sidecar["inputs"][0]["shape"] == [-1, 3, side, side] and sidecar["outputs"][0]["shape"] == [-1, 8, anchors]


def test_dynamic_batch_runs_any_batch(demo_export: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(demo_export / "model_fp16.onnx"))
    side = session.get_inputs()[0].shape[2]
    for batch in (1, 3):
        out = session.run(None, {"images": np.zeros((batch, 3, side, side), np.float16)})[0]
        assert out.shape[0] == batch and out.dtype == np.float16


def test_parity_report(demo_export: Path) -> None:
    report = json.loads((demo_export / "parity.json").read_text()) if (demo_export / "parity.json").exists() else None
    from tritonctl.export import ExportSettings
    from tritonctl.parity import check_parity

    settings = ExportSettings.create(model_path=DEMO_PT, out_dir=demo_export)
    parity = check_parity(demo_export / "model_fp32.onnx", demo_export / "model_fp16.onnx", settings)
    assert parity.detections_fp32 >= 20  # real detections were compared
    assert parity.matched_share >= 0.99 and parity.max_box_shift_px <= 0.5 and parity.passed
    assert parity.map50_fp32 is not None and abs(parity.map50_fp32 - parity.map50_fp16) <= 0.005  # type: ignore[operator]
    assert report is None or report["passed"]


def test_cli_export_and_tolerance(tmp_path: Path) -> None:
    result = run_cli("export", "--model-path", str(DEMO_PT), "--out-dir", str(tmp_path), "--tolerance", "1.0,0.0")
    assert result.returncode == 6 and "parity" in result.stderr.strip().splitlines()[-1]
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is False and report["max_box_shift_px"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model_fp16.onnx", "model_fp32.onnx", "parity.json"]


def test_check_images_folder(tmp_path: Path) -> None:
    import cv2

    from tritonctl.synthetic import SceneSpec, random_scene

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        cv2.imwrite(str(images / f"{i}.jpg"), random_scene(rng, SceneSpec(width=400, height=300))[0])
    result = run_cli("export", "--model-path", str(DEMO_PT), "--out-dir", str(tmp_path / "out"), "--check-images",
                     str(images), "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["images"] == 4 and report["source"] == str(images) and report["map50_fp32"] is None
    assert not (tmp_path / "out" / "model_fp32.onnx").exists() and (tmp_path / "out" / "model_fp16.onnx").exists()


@pytest.fixture(scope="module")
def segment_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("seg") / "yolov8n-seg.pt"
    YOLO("yolov8n-seg.yaml").save(str(path))
    return path


def test_bad_inputs(tmp_path: Path, segment_pt: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    text = tmp_path / "model.onnx"
    text.write_text("x")
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "missing.pt")], 2, "does not exist"),
        ([str(corrupt)], 2, "not a checkpoint"),
        ([str(text)], 2, "not a PyTorch checkpoint"),
        ([str(segment_pt)], 2, "segment model"),
    ]
    for args, code, words in cases:
        result = run_cli("export", "--model-path", *args, "--out-dir", str(out))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code and len(lines) == 1 and words in lines[0], result.stderr
    unwritable = run_cli("export", "--model-path", str(DEMO_PT), "--out-dir", "/proc/tritonctl")
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
