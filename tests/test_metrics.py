from __future__ import annotations

import numpy as np
import pytest

from tritonctl.metrics import average_precision, iou_matrix, match, precision_recall


def test_iou() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1, 1 / 3, 0], atol=1e-6)


def test_match_same_class_only() -> None:
    ref = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.9, 1]], np.float32)
    cand = np.array([[20, 20, 30, 30, 0.8, 1], [0, 0, 10, 10, 0.8, 1]], np.float32)
    assert match(ref, cand, 0.5).pairs == [(1, 0)]


def test_perfect_and_half_ap() -> None:
    gt = [np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], np.float32)]
    perfect = [np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1]], np.float32)]
    assert average_precision(perfect, gt, 2) == pytest.approx(1.0)
    half = [np.array([[0, 0, 10, 10, 0.9, 0]], np.float32)]
    assert average_precision(half, gt, 2) == pytest.approx(0.5)
    assert precision_recall(half, gt) == (1.0, 0.5)
