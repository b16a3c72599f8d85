"""`tritonctl export` on the demo checkpoint trained here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_PT, run_cli

from tritonctl.model.metadata import read_onnx

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
    """The default gate on the demo model, with the margins measured on two CPUs (see parity.py)."""
    report = json.loads((demo_export / "parity.json").read_text())
    assert report["verdict"] == "passed" and report["passed"] is True and not report["failures"]
    assert report["source"].startswith("64 generated scenes") and report["labelled_images"] == 64
    assert report["detections_fp32"] >= 100  # real detections were compared
    assert report["matched_share"] >= 0.97 and report["max_box_shift"] <= 0.01
    assert report["map_fp32"] - report["map_fp16"] <= 0.005 and report["map_fp32"] > 0.5
    assert report["tolerance"] == {"min_matched": 0.97, "max_map_drop": 0.005, "max_box_shift": 0.01, "min_detections": 10}


def test_cli_export_and_tolerance(tmp_path: Path) -> None:
    result = run_cli("export", "--model-path", str(DEMO_PT), "--out-dir", str(tmp_path), "--max-box-shift", "0")
    assert result.returncode == 6 and "parity" in result.stderr.strip().splitlines()[-1]
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is False and report["verdict"] == "failed" and report["max_box_shift_px"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model_fp16.onnx", "model_fp32.onnx", "parity.json"]


def test_exports_are_byte_identical(demo_export: Path, tmp_path: Path) -> None:
    """The same checkpoint and flags give the same bytes, and model.json records their sha256."""
    import hashlib

    result = run_cli("export", "--model-path", str(DEMO_PT), "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((tmp_path / "model.json").read_text())
    for precision, name in (("fp32", "model_fp32.onnx"), ("fp16", "model_fp16.onnx")):
        data = (tmp_path / name).read_bytes()
        assert data == (demo_export / name).read_bytes(), name
        assert sidecar["files"][precision]["sha256"] == hashlib.sha256(data).hexdigest()


def test_fp16_head_is_fp32_inside(demo_export: Path) -> None:
    """What model.json says is kept in FP32 computes in FP32: no FP32 -> FP16 -> FP32 round trip anywhere, and the
    kept nodes read FP32 tensors (Casts only where the FP16 backbone meets the head, and the model's own)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(demo_export / "model_fp16.onnx")))
    kept = set(json.loads((demo_export / "model.json").read_text())["files"]["fp16"]["kept_fp32_nodes"])
    assert len(kept) > 50
    onnx.checker.check_model(model)  # also: nodes in topological order
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    producer = {o: n for n in model.graph.node for o in n.output}
    to = lambda n: next(a.i for a in n.attribute if a.name == "to")  # noqa: E731
    for node in model.graph.node:
        if node.op_type == "Cast" and to(node) == onnx.TensorProto.FLOAT and node.input[0] in producer:
            src = producer[node.input[0]]
            assert not (src.op_type == "Cast" and to(src) == onnx.TensorProto.FLOAT16), f"round trip at {node.name}"
        if node.name in kept and node.op_type not in ("Cast", "Shape", "Range"):
            assert onnx.TensorProto.FLOAT16 not in [types.get(i) for i in node.input], node.name
    casts = sum(n.op_type == "Cast" for n in model.graph.node)
    assert casts < 20  # the converter alone leaves 228 on this model


def test_untrained_model_is_not_judged(tmp_path: Path) -> None:
    """A COCO-shaped model with random weights detects nothing: parity says "not judged", never "passed"."""
    from ultralytics import YOLO

    pt = tmp_path / "yolov8n.pt"
    YOLO("yolov8n.yaml").save(str(pt))
    result = run_cli("export", "--model-path", str(pt), "--out-dir", str(tmp_path / "out"), "--imgsz", "96")
    assert result.returncode == 0, result.stderr
    assert "not judged" in result.stderr and "Traceback" not in result.stderr
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["verdict"] == "not judged" and report["passed"] is False
    assert report["source"].endswith("+ 2 photos")  # Ultralytics' bus.jpg and zidane.jpg
    strict = run_cli("export", "--model-path", str(pt), "--out-dir", str(tmp_path / "strict"), "--imgsz", "96", "--strict")
    assert strict.returncode == 6 and "not judged" in strict.stderr.strip().splitlines()[-1]


def test_check_images_folder(tmp_path: Path) -> None:
    import cv2

    from tritonctl.vision.synthetic import SceneSpec, random_scene

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        cv2.imwrite(str(images / f"{i}.jpg"), random_scene(rng, SceneSpec(width=400, height=300))[0])
    result = run_cli("export", "--model-path", str(DEMO_PT), "--out-dir", str(tmp_path / "out"), "--check-images",
                     str(images), "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["images"] == 4 and report["source"] == str(images) and report["map_fp32"] is None
    assert not (tmp_path / "out" / "model_fp32.onnx").exists() and (tmp_path / "out" / "model_fp16.onnx").exists()


@pytest.fixture(scope="module")
def other_task_pts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of tasks other than detection (untrained: only their task matters)."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("tasks")
    paths = {"segment": folder / "yolov8n-seg.pt", "classify": folder / "yolov8n-cls.pt"}
    YOLO("yolov8n-seg.yaml").save(str(paths["segment"]))
    YOLO("yolov8n-cls.yaml").save(str(paths["classify"]))
    return paths


def test_bad_inputs(tmp_path: Path, other_task_pts: dict[str, Path]) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    text = tmp_path / "model.onnx"
    text.write_text("x")
    out = tmp_path / "out" / "export"
    cases = [
        ([str(tmp_path / "missing.pt")], 2, "does not exist"),
        ([str(corrupt)], 2, f"{corrupt} is not a checkpoint Ultralytics can load (UnpicklingError: "),
        ([str(text)], 2, "not a PyTorch checkpoint"),
        ([str(other_task_pts["segment"])], 5, "is a segment model"),  # README: 5 covers "not a detection model"
        ([str(other_task_pts["classify"])], 5, "is a classify model"),
    ]
    for args, code, words in cases:
        result = run_cli("export", "--model-path", *args, "--out-dir", str(out))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code and len(lines) == 1 and words in lines[0], result.stderr
        assert ".export-" not in lines[0] and "❌" not in lines[0] and lines[0].count("(") == lines[0].count(")"), lines[0]
        assert not (tmp_path / "out").exists(), args  # refused or failed on its checkpoint: no folder of ours left
    unwritable = run_cli("export", "--model-path", str(DEMO_PT), "--out-dir", "/proc/tritonctl")
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
