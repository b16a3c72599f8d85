"""val's plots: the PR curve per class and the confusion matrix (with background), from COCOeval's matching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.measure.coco import _mean_valid


def pr_curve_png(ev: Any, names: dict[int, str], path: Path) -> Path:
    """Precision over recall at IoU 0.5 per class (COCOeval's interpolated curve) and their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision = ev.eval["precision"][0, :, :, 0, -1]  # [101 recall points, class]
    recall = ev.params.recThrs
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for k, name in names.items():
        if (precision[:, k] > -1).any():
            ax.plot(recall, precision[:, k], lw=1, label=f"{name} {_mean_valid(precision[:, k]):.3f}")
    ax.plot(recall, np.where(precision > -1, precision, np.nan).mean(1), lw=3, color="blue",
            label=f"all classes {_mean_valid(precision):.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall at IoU 0.5")
    ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path)
    plt.close(fig)
    return path


CONFUSION_CONF, CONFUSION_IOU = 0.25, 0.45  # Ultralytics' confusion-matrix thresholds: boxes a user would see


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes a [n, 4] against b [m, 4]."""
    ax2, bx2 = a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:]
    wh = (np.minimum(ax2, bx2) - np.maximum(a[:, None, :2], b[None, :, :2])).clip(0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter + 1e-9)


def confusion_matrix(gt: dict[str, Any], preds: list[dict[str, Any]], category_ids: list[int]) -> np.ndarray:
    """Counts [predicted class or background][true class or background] for detections above CONFUSION_CONF, each
    matched once to the ground-truth box it overlaps most (IoU above CONFUSION_IOU), largest overlaps first."""
    nc = len(category_ids)
    index = {cid: i for i, cid in enumerate(category_ids)}
    matrix = np.zeros((nc + 1, nc + 1), np.int64)
    truth: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        truth[ann["image_id"]].append(ann)
    dets: dict[int, list[dict[str, Any]]] = {i: [] for i in truth}
    for p in preds:
        if p["score"] > CONFUSION_CONF:
            dets[p["image_id"]].append(p)
    for image_id, anns in truth.items():
        g_cls = np.array([index[a["category_id"]] for a in anns], np.int64)
        d_cls = np.array([index[d["category_id"]] for d in dets[image_id]], np.int64)
        g_box = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        d_box = np.array([d["bbox"] for d in dets[image_id]], np.float64).reshape(-1, 4)
        _count_image(matrix, g_cls, d_cls, _iou(d_box, g_box))
    return matrix


def _count_image(matrix: np.ndarray, g_cls: np.ndarray, d_cls: np.ndarray, iou: np.ndarray) -> None:
    background = matrix.shape[0] - 1
    di, gi = np.nonzero(iou > CONFUSION_IOU)
    order = np.argsort(-iou[di, gi], kind="stable")
    used_d: set[int] = set()
    used_g: set[int] = set()
    for d, g in zip(di[order].tolist(), gi[order].tolist(), strict=True):
        if d not in used_d and g not in used_g:
            used_d.add(d)
            used_g.add(g)
            matrix[d_cls[d], g_cls[g]] += 1
    for g in set(range(len(g_cls))) - used_g:
        matrix[background, g_cls[g]] += 1  # missed: background "predicted"
    for d in set(range(len(d_cls))) - used_d:
        matrix[d_cls[d], background] += 1  # a false positive on background


def confusion_png(matrix: np.ndarray, names: dict[int, str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*names.values(), "background"]
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="True", ylabel="Predicted", title=f"Confusion matrix (conf > {CONFUSION_CONF}, IoU > {CONFUSION_IOU})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


