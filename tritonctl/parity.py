"""FP16 against FP32 on real inputs: raw output differences and, after decoding and NMS, matched detections."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.metadata import TRITON_TO_NUMPY, read_onnx
from tritonctl.metrics import average_precision, match
from tritonctl.postprocess import PostSettings, decode, head_layout
from tritonctl.preprocess import Preprocessor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MATCH_IOU = 0.95


@dataclass
class ParityReport:
    images: int
    source: str
    max_abs_diff: float
    mean_abs_diff: float
    detections_fp32: int
    detections_fp16: int
    matched: int
    matched_share: float
    max_box_shift_px: float
    max_score_diff: float
    map50_fp32: float | None = None
    map50_fp16: float | None = None
    tolerance: dict[str, float] = field(default_factory=dict)
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


def load_images(folder: Path | None, n: int, imgsz: int) -> tuple[list[np.ndarray], list[np.ndarray] | None, str]:
    """Images from the folder, or n generated scenes with their ground truth."""
    import cv2

    if folder is not None:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images = [img for img in (cv2.imread(str(p)) for p in paths) if img is not None]
        if not images:
            from tritonctl.errors import BadInput

            raise BadInput(f"--check-images {folder} holds no image OpenCV can read ({', '.join(IMAGE_SUFFIXES)})")
        return images, None, str(folder)
    from tritonctl.synthetic import SceneSpec, random_scene

    rng = np.random.default_rng(1234)
    images, gts = [], []
    for _ in range(n):
        img, boxes = random_scene(rng, SceneSpec(width=imgsz * 5 // 4, height=imgsz))
        images.append(img)
        gts.append(np.array([[b.cls, b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32).reshape(-1, 5))
    return images, gts, f"{n} generated scenes"


def run_onnx(path: Path, images: list[np.ndarray], post: PostSettings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw outputs and decoded detections (source-frame pixels) for each image, one at a time."""
    import onnxruntime as ort

    meta = read_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = meta.inputs[0]
    pre = Preprocessor(inp.shape[2], inp.shape[3], TRITON_TO_NUMPY[inp.dtype])
    layout = head_layout(meta.outputs[0].shape, len(meta.names) or None)
    raws, dets = [], []
    for img in images:
        box = pre(img)
        raw = session.run([meta.outputs[0].name], {inp.name: pre.batch[:1]})[0]
        raws.append(raw.astype(np.float32))
        det = decode(raw, layout, post)[0]
        box.to_source(det)
        dets.append(det)
    return raws, dets


def check_parity(fp32: Path, fp16: Path, settings: Any) -> ParityReport:
    meta = read_onnx(fp32)
    imgsz = meta.imgsz[0] if meta.imgsz else meta.inputs[0].shape[2]
    images, gts, source = load_images(settings.check_images, settings.n_check, imgsz)
    post = PostSettings(conf=0.25, iou=0.45)
    raw32, det32 = run_onnx(fp32, images, post)
    raw16, det16 = run_onnx(fp16, images, post)
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(raw32, raw16, strict=True)])
    matched = shift = score_diff = 0.0
    for a, b in zip(det32, det16, strict=True):
        m = match(a, b, MATCH_IOU)
        matched += len(m.pairs)
        for i, j in m.pairs:
            shift = max(shift, float(np.abs(a[i, :4] - b[j, :4]).max()))
            score_diff = max(score_diff, float(abs(a[i, 4] - b[j, 4])))
    n32, n16 = sum(len(d) for d in det32), sum(len(d) for d in det16)
    report = ParityReport(
        images=len(images), source=source, max_abs_diff=float(diffs.max()), mean_abs_diff=float(diffs.mean()),
        detections_fp32=n32, detections_fp16=n16, matched=int(matched),
        matched_share=matched / max(n32, n16) if max(n32, n16) else 1.0, max_box_shift_px=shift,
        max_score_diff=score_diff,
        tolerance={"min_matched_share": settings.min_matched, "max_box_shift_px": settings.max_box_shift_px},
    )
    if gts is not None:
        report.map50_fp32 = average_precision(det32, gts, len(meta.names))
        report.map50_fp16 = average_precision(det16, gts, len(meta.names))
    if report.matched_share < settings.min_matched:
        report.failures.append(f"matched share {report.matched_share:.3f} < {settings.min_matched}")
    if report.max_box_shift_px > settings.max_box_shift_px:
        report.failures.append(f"box shift {report.max_box_shift_px:.3f} px > {settings.max_box_shift_px} px")
    report.passed = not report.failures
    return report


def render(report: ParityReport) -> None:
    from rich.table import Table

    from tritonctl.ui import console

    table = Table("FP16 vs FP32", "value", title=f"parity on {report.source}")
    rows = [
        ("raw output max |diff|", f"{report.max_abs_diff:.4g}"), ("raw output mean |diff|", f"{report.mean_abs_diff:.4g}"),
        ("detections FP32 / FP16", f"{report.detections_fp32} / {report.detections_fp16}"),
        (f"matched (same class, IoU >= {MATCH_IOU})", f"{report.matched} ({report.matched_share:.1%})"),
        ("max box shift", f"{report.max_box_shift_px:.3f} px"), ("max score diff", f"{report.max_score_diff:.4f}"),
    ]
    if report.map50_fp32 is not None and report.map50_fp16 is not None:
        rows.append(("mAP50 FP32 / FP16 (ground truth)", f"{report.map50_fp32:.4f} / {report.map50_fp16:.4f}"))
    for row in rows:
        table.add_row(*row)
    console().print(table)
