"""Box IoU, detection matching and mAP (FP16 parity, peer comparison, ground truth); a fixed-memory latency histogram."""

from __future__ import annotations

import math
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


class LatencyHistogram:
    """Percentiles of a stream of durations in fixed memory, however long the run.

    Log-spaced buckets from `lo` to `hi` seconds, each `ratio` times wider than the last (1.02: 1,046 buckets for
    1 µs..1000 s, 8 KiB). A percentile is the geometric middle of its bucket, so it is within 1% of the exact
    nearest-rank value; values outside [lo, hi] are clamped into the end buckets. Count, mean, min and max are exact.
    """

    def __init__(self, lo: float = 1e-6, hi: float = 1e3, ratio: float = 1.02) -> None:
        self.lo, self._log_ratio = lo, math.log(ratio)
        self.counts = np.zeros(math.ceil(math.log(hi / lo) / self._log_ratio) + 1, np.int64)
        self.count, self.total = 0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, value: float) -> None:
        index = int(math.log(value / self.lo) / self._log_ratio) if value > self.lo else 0
        self.counts[min(index, len(self.counts) - 1)] += 1
        self.count += 1
        self.total += value
        self.min, self.max = min(self.min, value), max(self.max, value)

    def percentile(self, q: float) -> float:
        """The nearest-rank q-th percentile (q in 0..100; 0 and 100 are the exact min and max), within the bucket
        precision above; 0.0 when empty."""
        if not self.count:
            return 0.0
        if q <= 0 or q >= 100:
            return self.min if q <= 0 else self.max
        rank = max(1, math.ceil(q / 100 * self.count))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        middle = self.lo * math.exp((index + 0.5) * self._log_ratio)
        return min(max(middle, self.min), self.max)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0
