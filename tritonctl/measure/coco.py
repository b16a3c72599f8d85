"""Scoring detections as the COCO benchmark does: pycocotools' COCOeval on our predictions, the averages it prints,
P/R at the best F1."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonctl.core.errors import BadInput
from tritonctl.measure.datasets import Dataset


@dataclass(frozen=True)
class Metrics:
    map50_95: float
    map50: float
    map75: float
    precision: float  # at the confidence of the best mean F1 (Ultralytics' rule)
    recall: float
    f1_conf: float
    per_class: dict[str, float | None]  # AP50-95 per class name; None: no ground truth of that class

    @classmethod
    def zero(cls, names: dict[int, str]) -> Metrics:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, {n: 0.0 for n in names.values()})


def _quiet_coco() -> contextlib.AbstractContextManager[Any]:
    """pycocotools prints its progress ("loading annotations ...") to stdout: not ours to show."""
    return contextlib.redirect_stdout(io.StringIO())


def coco_ground_truth(ds: Dataset, sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """The dataset as a COCO annotation dict, for the images that decoded (their pixel size from the decoded image)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for sample in ds.samples:
        if sample.image_id not in sizes:
            continue
        h, w = sizes[sample.image_id]
        images.append({"id": sample.image_id, "width": w, "height": h, "file_name": sample.path.name})
        for cls, (x1, y1, x2, y2) in zip(sample.classes, sample.pixel_boxes(h, w), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": sample.image_id, "iscrowd": 0,
                                "category_id": ds.category_ids[int(cls)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": cid, "name": ds.names[i]} for i, cid in enumerate(ds.category_ids)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_predictions(ds: Dataset, dets: dict[int, np.ndarray], class_map: dict[int, int]) -> list[dict[str, Any]]:
    """Detections in COCO results format: [x, y, w, h] in source pixels, the data's category id."""
    out = []
    for image_id, det in dets.items():
        for x1, y1, x2, y2, score, cls in det.tolist():
            if int(cls) not in class_map:  # a model without class names (end2end) was not counted up front
                raise BadInput(f"the model predicted class {int(cls)}, --data {ds.source} has {len(ds.names)} classes: "
                               "validate a model on data of its own classes")
            out.append({"image_id": image_id, "category_id": ds.category_ids[class_map[int(cls)]],
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(score, 5)})
    return out


def evaluate(gt: dict[str, Any], preds: list[dict[str, Any]], names: dict[int, str], max_det: int) -> tuple[Metrics, Any]:
    """COCOeval (bbox) over the given images; returns the metrics and the evaluator (for the PR curve)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not preds or not gt["annotations"]:
        return Metrics.zero(names), None
    with _quiet_coco():
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(p) for p in preds])  # it adds id, area, segmentation to what it is given
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = [img["id"] for img in gt["images"]]
        ev.params.maxDets = [1, 10, max_det]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]  # only "all" is reported: a quarter of the work
        ev.evaluate()
        ev.accumulate()
    return _metrics(ev, names), ev


def _mean_valid(a: np.ndarray) -> float:
    valid = a[a > -1]  # -1: a class without ground truth (COCOeval's marker)
    return float(valid.mean()) if valid.size else 0.0


def _metrics(ev: Any, names: dict[int, str]) -> Metrics:
    """The averages COCOeval.summarize() prints (area all, the last maxDets), read from its precision array."""
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [IoU 10, recall 101, class]
    iou = ev.params.iouThrs
    per_class = {}
    for k, name in names.items():
        ap = precision[:, :, k]
        per_class[name] = _mean_valid(ap) if (ap > -1).any() else None
    p, r, conf = pr_at_best_f1(ev, len(names))
    return Metrics(_mean_valid(precision), _mean_valid(precision[np.isclose(iou, 0.5)]),
                   _mean_valid(precision[np.isclose(iou, 0.75)]), p, r, conf, per_class)


def _smooth(y: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Ultralytics' box filter over the F1 curve, so the best-F1 point is picked as it picks it."""
    nf = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(nf // 2)
    return np.convolve(np.concatenate([pad * y[0], y, pad * y[-1]]), np.ones(nf) / nf, mode="valid")


def pr_at_best_f1(ev: Any, n_classes: int) -> tuple[float, float, float]:
    """Precision and recall at IoU 0.5 at the confidence where the class-mean F1 is highest.

    From the evaluator's own matches (evalImgs: dtMatches, dtIgnore, gtIgnore at IoU 0.5, area all): per class,
    cumulative TP/FP by descending score give P and R as functions of confidence, sampled on 1000 thresholds and
    averaged over the classes that have ground truth; F1 = 2PR/(P+R), smoothed; P and R are read at its maximum."""
    px = np.linspace(0, 1, 1000)
    curves_p, curves_r = [], []
    for cat in ev.params.catIds[:n_classes]:
        scores, hits, npos = _class_matches(ev, cat)
        if npos == 0:
            continue
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(hits[order])
        fp = np.cumsum(~hits[order])
        conf = scores[order]
        curves_r.append(np.interp(-px, -conf, tp / npos, left=0) if len(conf) else np.zeros_like(px))
        curves_p.append(np.interp(-px, -conf, tp / np.maximum(tp + fp, 1), left=1) if len(conf) else np.ones_like(px))
    if not curves_p:
        return 0.0, 0.0, 0.0
    p, r = np.mean(curves_p, 0), np.mean(curves_r, 0)
    i = int(_smooth(2 * p * r / (p + r + 1e-16)).argmax())
    return float(p[i]), float(r[i]), float(px[i])


def _class_matches(ev: Any, cat: int) -> tuple[np.ndarray, np.ndarray, int]:
    scores, hits, npos = [], [], 0
    all_area = ev.params.areaRng[0]
    for e in ev.evalImgs:
        if e is None or e["category_id"] != cat or list(e["aRng"]) != list(all_area):
            continue
        keep = ~np.asarray(e["dtIgnore"], bool)[0]
        scores.append(np.asarray(e["dtScores"], float)[keep])
        hits.append(np.asarray(e["dtMatches"])[0][keep] > 0)
        npos += int((~np.asarray(e["gtIgnore"], bool)).sum())
    if not scores:
        return np.zeros(0), np.zeros(0, bool), npos
    return np.concatenate(scores), np.concatenate(hits), npos


# ---------------------------------------------------------------- the checkpoint's own val (Ultralytics)


def _match_names(names: dict[int, str], ds: Dataset) -> tuple[dict[int, int], str]:
    """By name when the model's names are the data's (in any order, each once), else by index."""
    if names and set(names.values()) == set(ds.names.values()) and len(set(ds.names.values())) == len(ds.names):
        by_name = {n: i for i, n in ds.names.items()}
        return {m: by_name[n] for m, n in names.items()}, "names"
    return {i: i for i in ds.names}, "index"
