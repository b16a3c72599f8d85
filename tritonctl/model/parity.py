"""FP16 against FP32 on real inputs: raw output differences and, after decoding and NMS, matched detections and mAP.

The gate judges what users care about and what holds on any CPU: the same objects found (same class, IoU >= 0.9,
with a score margin around the confidence threshold so that a 0.001 score change near 0.25 does not count as a
miss), mAP50-95 against ground truth within a small drop, and a box shift limit relative to the input size. The
absolute FP16 rounding depends on the CPU's kernels (0.17 px on one machine, 0.78 px on another for the same
192x192 model), so no criterion is a sub-pixel threshold. Too few detections to compare is "not judged", never "passed".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.model.metadata import TRITON_TO_NUMPY, read_onnx
from tritonctl.vision.detections import Detections
from tritonctl.vision.metrics import average_precision, match
from tritonctl.vision.postprocess import PostSettings, decode, head_layout
from tritonctl.vision.preprocess import Preprocessor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MATCH_IOU = 0.9
CONF = 0.25  # detections compared: those at or above the usual deployment threshold ...
CONF_MARGIN = 0.05  # ... found by the other model at or above CONF - CONF_MARGIN
MAP_CONF = 0.001  # mAP as Ultralytics' val computes it
MAP_IOUS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))
PASSED, FAILED, NOT_JUDGED = "passed", "failed", "not judged"


@dataclass(frozen=True)
class ParityTolerance:
    min_matched: float = 0.97  # share of detections found by both
    max_map_drop: float = 0.005  # mAP50-95 of FP32 minus FP16, against ground truth
    max_box_shift: float = 0.01  # largest corner shift of a matched box, as a fraction of the input size
    min_detections: int = 10  # fewer FP32 detections than this: not judged


@dataclass(frozen=True)
class CheckImage:
    name: str
    image: np.ndarray
    truth: np.ndarray | None  # [n, 5] rows of class, x1, y1, x2, y2 (source pixels), or None when unlabelled


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
    max_box_shift_px: float  # in the model's input pixels
    max_box_shift: float  # the same as a fraction of the input size
    input_size: int
    max_score_diff: float
    map50_fp32: float | None = None
    map50_fp16: float | None = None
    map_fp32: float | None = None  # mAP50-95
    map_fp16: float | None = None
    labelled_images: int = 0
    tolerance: dict[str, float] = field(default_factory=dict)
    verdict: str = PASSED
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def write(self, path: Path) -> None:
        from tritonctl.core.files import write_text

        write_text(path, json.dumps({**asdict(self), "passed": self.passed}, indent=2))


def default_photos() -> list[Path]:
    """The real photos Ultralytics ships with its package (bus.jpg, zidane.jpg), when it is installed."""
    try:
        from ultralytics.utils import ASSETS
    except ImportError:
        return []
    return sorted(p for p in Path(ASSETS).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_images(folder: Path | None, n: int, imgsz: int) -> tuple[list[CheckImage], str]:
    """Images from the folder; by default n generated scenes with their ground truth plus Ultralytics' photos."""
    if folder is not None:
        images = _read_images(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        if not images:
            from tritonctl.core.errors import BadInput

            raise BadInput(f"--check-images {folder} holds no image OpenCV can read ({', '.join(IMAGE_SUFFIXES)})")
        return images, str(folder)
    from tritonctl.vision.synthetic import SceneSpec, random_scene

    rng = np.random.default_rng(1234)
    scenes = []
    for k in range(n):
        img, boxes = random_scene(rng, SceneSpec(width=imgsz * 5 // 4, height=imgsz))
        truth = np.array([[b.cls, b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32).reshape(-1, 5)
        scenes.append(CheckImage(f"scene {k}", img, truth))
    photos = _read_images(default_photos())
    return scenes + photos, f"{n} generated scenes" + (f" + {len(photos)} photos" if photos else "")


def _read_images(paths: list[Path]) -> list[CheckImage]:
    import cv2

    out = []
    for p in paths:
        img = cv2.imread(str(p))
        if img is not None:
            out.append(CheckImage(p.name, img, None))
    return out


@dataclass
class Outputs:
    raw: list[np.ndarray]
    detections: list[Detections]  # per image, in source pixels; score >= MAP_CONF
    gains: list[float]  # input pixels per source pixel


def run_onnx(path: Path, images: list[CheckImage]) -> Outputs:
    """Raw outputs and decoded detections for each image, one at a time."""
    import onnxruntime as ort

    meta = read_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = meta.inputs[0]
    pre = Preprocessor(inp.shape[2], inp.shape[3], TRITON_TO_NUMPY[inp.dtype])
    layout = head_layout(meta.outputs[0].shape, len(meta.names) or None)
    post = PostSettings(conf=MAP_CONF, iou=0.45, max_det=300)
    out = Outputs([], [], [])
    for item in images:
        box = pre(item.image)
        raw = session.run([meta.outputs[0].name], {inp.name: pre.batch[:1]})[0]
        out.raw.append(raw.astype(np.float32))
        det = decode(raw, layout, post)[0]
        box.to_source(det.boxes)
        out.detections.append(det)
        out.gains.append(box.scale)
    return out


@dataclass
class _Agreement:
    n32: int = 0
    n16: int = 0
    found: int = 0  # detections of either model that the other also has
    pairs: int = 0
    shift_px: float = 0.0
    score_diff: float = 0.0


def _agreement(a: Outputs, b: Outputs) -> _Agreement:
    g = _Agreement()
    for det32, det16, gain in zip(a.detections, b.detections, a.gains, strict=True):
        hi32, hi16 = det32.select(det32.scores >= CONF), det16.select(det16.scores >= CONF)
        lo32 = det32.select(det32.scores >= CONF - CONF_MARGIN)
        lo16 = det16.select(det16.scores >= CONF - CONF_MARGIN)
        forward, backward = match(hi32.rows(), lo16.rows(), MATCH_IOU), match(hi16.rows(), lo32.rows(), MATCH_IOU)
        g.n32, g.n16 = g.n32 + len(hi32), g.n16 + len(hi16)
        g.found += len(forward.pairs) + len(backward.pairs)
        g.pairs += len(forward.pairs)
        for i, j in forward.pairs:
            g.shift_px = max(g.shift_px, float(np.abs(hi32.boxes[i] - lo16.boxes[j]).max()) * gain)
            g.score_diff = max(g.score_diff, float(abs(hi32.scores[i] - lo16.scores[j])))
    return g


def map50_95(dets: list[np.ndarray], truths: list[np.ndarray], n_classes: int) -> tuple[float, float]:
    """(mAP50, mAP50-95) over the labelled images."""
    aps = [average_precision(dets, truths, n_classes, float(t)) for t in MAP_IOUS]
    return aps[0], float(np.mean(aps))


def check_parity(fp32: Path, fp16: Path, settings: Any) -> ParityReport:
    meta = read_onnx(fp32)
    imgsz = meta.imgsz[0] if meta.imgsz else meta.inputs[0].shape[2]
    tol: ParityTolerance = settings.tolerance
    images, source = load_images(settings.check_images, settings.n_check, imgsz)
    a, b = run_onnx(fp32, images), run_onnx(fp16, images)
    diffs = np.concatenate([np.abs(x - y).ravel() for x, y in zip(a.raw, b.raw, strict=True)])
    g = _agreement(a, b)
    total = g.n32 + g.n16
    report = ParityReport(
        images=len(images), source=source, max_abs_diff=float(diffs.max()), mean_abs_diff=float(diffs.mean()),
        detections_fp32=g.n32, detections_fp16=g.n16, matched=g.pairs, matched_share=g.found / total if total else 0.0,
        max_box_shift_px=g.shift_px, max_box_shift=g.shift_px / imgsz, input_size=imgsz, max_score_diff=g.score_diff,
        tolerance={k: float(v) for k, v in asdict(tol).items()},
    )
    labelled = [(k, item.truth) for k, item in enumerate(images) if item.truth is not None]
    if labelled:
        truths = [t for _, t in labelled]
        n_classes = len(meta.names) or int(max((t[:, 0].max() for t in truths if len(t)), default=0)) + 1
        report.labelled_images = len(labelled)
        report.map50_fp32, report.map_fp32 = map50_95([a.detections[k].rows() for k, _ in labelled], truths, n_classes)
        report.map50_fp16, report.map_fp16 = map50_95([b.detections[k].rows() for k, _ in labelled], truths, n_classes)
    _judge(report, tol)
    return report


def _judge(report: ParityReport, tol: ParityTolerance) -> None:
    if report.detections_fp32 < tol.min_detections:
        report.verdict = NOT_JUDGED
        report.failures.append(f"only {report.detections_fp32} FP32 detections at conf {CONF} (fewer than "
                               f"{tol.min_detections}): give images the model detects objects in (--check-images)")
        return
    if report.matched_share < tol.min_matched:
        report.failures.append(f"matched share {report.matched_share:.3f} < {tol.min_matched}")
    if report.map_fp32 is not None and report.map_fp16 is not None and report.map_fp32 - report.map_fp16 > tol.max_map_drop:
        report.failures.append(f"mAP50-95 drop {report.map_fp32 - report.map_fp16:.4f} > {tol.max_map_drop}")
    if report.max_box_shift > tol.max_box_shift:
        report.failures.append(f"box shift {report.max_box_shift:.4f} of the input size > {tol.max_box_shift}")
    report.verdict = FAILED if report.failures else PASSED


def render(report: ParityReport) -> None:
    from rich.table import Table

    from tritonctl.core.ui import console

    colour = {PASSED: "green", FAILED: "red", NOT_JUDGED: "yellow"}[report.verdict]
    table = Table("FP16 vs FP32", "value", title=f"parity on {report.source}: [{colour}]{report.verdict}[/]")
    rows = [
        ("raw output max |diff|", f"{report.max_abs_diff:.4g}"), ("raw output mean |diff|", f"{report.mean_abs_diff:.4g}"),
        (f"detections FP32 / FP16 (conf >= {CONF})", f"{report.detections_fp32} / {report.detections_fp16}"),
        (f"found by both (same class, IoU >= {MATCH_IOU})", f"{report.matched_share:.1%}"),
        ("max box shift (input pixels)", f"{report.max_box_shift_px:.3f} px of {report.input_size}"),
        ("max score diff", f"{report.max_score_diff:.4f}"),
    ]
    if report.map_fp32 is not None and report.map_fp16 is not None:
        rows.append((f"mAP50-95 FP32 / FP16 ({report.labelled_images} labelled)",
                     f"{report.map_fp32:.4f} / {report.map_fp16:.4f}"))
        rows.append(("mAP50 FP32 / FP16", f"{report.map50_fp32:.4f} / {report.map50_fp16:.4f}"))
    for row in rows:
        table.add_row(*row)
    for failure in report.failures:
        table.add_row(f"[{colour}]{report.verdict}[/]", failure)
    console().print(table)
