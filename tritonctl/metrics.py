"""Box IoU, detection matching and mAP: for FP16 parity, peer comparison and ground-truth checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in a [n, >=4] with every box in b [m, >=4] -> [n, m]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:4] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:4] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


@dataclass
class Match:
    pairs: list[tuple[int, int]]  # (index in reference, index in candidate)
    ious: list[float]


def match(ref: np.ndarray, cand: np.ndarray, iou_thr: float, cls_col: int = 5) -> Match:
    """Greedy one-to-one matching by IoU, same class only. Rows are (x1, y1, x2, y2, score, class)."""
    ious = iou_matrix(ref, cand)
    if ious.size:
        ious[ref[:, cls_col][:, None] != cand[:, cls_col][None, :]] = 0
    pairs, values = [], []
    while ious.size and ious.max() >= iou_thr:
        i, j = np.unravel_index(int(ious.argmax()), ious.shape)
        pairs.append((int(i), int(j)))
        values.append(float(ious[i, j]))
        ious[i, :] = 0
        ious[:, j] = 0
    return Match(pairs, values)


def average_precision(dets: list[np.ndarray], gts: list[np.ndarray], n_classes: int, iou_thr: float = 0.5) -> float:
    """mAP at one IoU threshold (all-point interpolated, as COCO/Ultralytics at 0.5). dets rows: x1,y1,x2,y2,score,cls;
    gts rows: cls,x1,y1,x2,y2."""
    aps = []
    for c in range(n_classes):
        scores, hits, n_gt = [], [], 0
        for det, gt in zip(dets, gts, strict=True):
            g = gt[gt[:, 0] == c][:, 1:5] if len(gt) else np.zeros((0, 4))
            d = det[det[:, 5] == c] if len(det) else np.zeros((0, 6))
            n_gt += len(g)
            d = d[np.argsort(-d[:, 4], kind="stable")]
            used = np.zeros(len(g), bool)
            ious = iou_matrix(d, g)
            for k in range(len(d)):
                scores.append(d[k, 4])
                j = int(ious[k].argmax()) if len(g) else -1
                hit = j >= 0 and ious[k, j] >= iou_thr and not used[j]
                if hit:
                    used[j] = True
                hits.append(hit)
        if n_gt == 0:
            continue
        order = np.argsort(-np.asarray(scores), kind="stable")
        tp = np.cumsum(np.asarray(hits, float)[order]) if hits else np.zeros(0)
        recall = tp / n_gt
        precision = tp / np.arange(1, len(tp) + 1)
        r = np.concatenate([[0.0], recall, [1.0]])
        p = np.concatenate([[1.0], precision, [0.0]])
        p = np.flip(np.maximum.accumulate(np.flip(p)))
        aps.append(float(np.sum((r[1:] - r[:-1]) * p[1:])))
    return float(np.mean(aps)) if aps else 0.0


def precision_recall(dets: list[np.ndarray], gts: list[np.ndarray], iou_thr: float = 0.5) -> tuple[float, float]:
    """Overall precision and recall of detections against ground truth (same class, IoU >= iou_thr)."""
    tp = n_det = n_gt = 0
    for det, gt in zip(dets, gts, strict=True):
        gt_rows = np.concatenate([gt[:, 1:5], np.zeros((len(gt), 1)), gt[:, :1]], 1) if len(gt) else np.zeros((0, 6))
        tp += len(match(gt_rows, det, iou_thr).pairs)
        n_det += len(det)
        n_gt += len(gt)
    return (tp / n_det if n_det else 1.0), (tp / n_gt if n_gt else 1.0)
