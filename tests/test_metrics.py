from __future__ import annotations

import numpy as np
import pytest

from tritonctl.vision.metrics import LatencyHistogram, average_precision, iou_matrix, match, precision_recall


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


def test_histogram_percentiles_within_one_percent() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=-4.0, sigma=1.2, size=200_000)  # latencies around 20 ms, a long tail
    hist = LatencyHistogram()
    for v in values:
        hist.add(float(v))
    for q in (1, 50, 90, 95, 99, 99.9):
        exact = float(np.percentile(values, q, method="inverted_cdf"))  # nearest rank
        assert abs(hist.percentile(q) - exact) / exact <= 0.01, q
    assert hist.count == len(values) and hist.mean == pytest.approx(values.mean(), rel=1e-9)
    assert hist.percentile(0) == pytest.approx(values.min()) and hist.percentile(100) == pytest.approx(values.max())


def test_histogram_memory_does_not_grow() -> None:
    hist = LatencyHistogram()
    size = hist.counts.nbytes
    for v in np.random.default_rng(1).uniform(1e-7, 1e4, 100_000):  # beyond both ends: clamped, still counted
        hist.add(float(v))
    assert hist.counts.nbytes == size <= 16 * 1024 and hist.counts.sum() == 100_000
    assert LatencyHistogram().percentile(50) == 0.0 and LatencyHistogram().mean == 0.0
