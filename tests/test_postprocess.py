"""Decoding every YOLO head layout, NMS equal to torchvision's, and the layout check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tritonctl.core.errors import BadInput, ModelError
from tritonctl.vision.postprocess import PostSettings, decode, decode_one, head_layout, nms


def _head(boxes_xywh: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """A v8-style [1, 4+nc, A] output from boxes and class scores."""
    return np.concatenate([boxes_xywh, scores], 1).T[None].astype(np.float32)


def test_layouts() -> None:
    assert head_layout((1, 84, 8400), 80) == "anchors"
    assert head_layout((1, 25200, 85), 80) == "objectness"
    assert head_layout((1, 300, 6), 80) == "end2end"
    assert head_layout((-1, 8, 756), None) == "anchors"
    assert head_layout((-1, 300, 6), None) == "end2end"
    for bad in [(1, 1000), (1, 3, 3), (1, 84, 8400, 1)]:
        with pytest.raises(ModelError):
            head_layout(bad, 80)


def test_threshold_nms_and_classes() -> None:
    xywh = np.array([[50, 50, 20, 20], [51, 50, 20, 20], [150, 150, 30, 30], [50, 50, 20, 20]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.0, 0.6]], np.float32)  # box 3 overlaps box 0, other class
    det = decode(_head(xywh, scores), "anchors", PostSettings(conf=0.25, iou=0.45))[0]
    assert det.classes.tolist() == [0, 1, 1] and det.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    np.testing.assert_allclose(det.boxes[0], [40, 40, 60, 60])
    agnostic = decode_one(_head(xywh, scores)[0], "anchors", PostSettings(agnostic=True))
    assert len(agnostic) == 2
    only1 = decode_one(_head(xywh, scores)[0], "anchors", PostSettings(classes=(1,)))
    assert set(only1.classes.tolist()) == {1}
    assert len(decode_one(_head(xywh, scores)[0], "anchors", PostSettings(conf=0.95))) == 0


def test_fp16_input() -> None:
    xywh = np.array([[50, 50, 20, 20]], np.float32)
    out = _head(xywh, np.array([[0.5, 0.1]], np.float32)).astype(np.float16)
    det = decode(out, "anchors", PostSettings())[0]
    assert det.boxes.dtype == det.scores.dtype == np.float32 and det.classes.tolist() == [0]


def test_objectness_layout() -> None:
    rows = np.array([[[50, 50, 20, 20, 0.9, 0.1, 0.8], [50, 50, 20, 20, 0.2, 0.9, 0.1]]], np.float32)
    det = decode(rows, "objectness", PostSettings())[0]
    assert len(det) == 1 and det.classes[0] == 1 and det.scores[0] == pytest.approx(0.72)


def test_end2end_layout() -> None:
    rows = np.array([[[10, 10, 20, 20, 0.3, 2], [0, 0, 5, 5, 0.9, 1], [0, 0, 1, 1, 0.1, 0]]], np.float32)
    det = decode(rows, "end2end", PostSettings())[0]
    assert det.classes.tolist() == [1, 2]


@pytest.mark.parametrize("n", [1, 40, 400, 3000])  # 3000: beyond the IoU-matrix limit, the loop path
def test_nms_equals_torchvision(n: int) -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(n)
    xy = rng.uniform(0, 500, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2))], 1).astype(np.float32)
    boxes[0, 2:] = boxes[0, :2]  # an empty box: torchvision keeps it and lets it suppress nothing
    scores = rng.random(n).astype(np.float32)
    for thr in (0.3, 0.45, 0.7):
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, thr), want)


@pytest.mark.parametrize(("kw", "words"), [
    ({"max_det": -1}, "--max-det -1"), ({"max_det": 0}, "--max-det 0"), ({"conf": 1.5}, "--conf 1.5"),
    ({"conf": -0.1}, "--conf -0.1"), ({"iou": 2.0}, "--iou 2"), ({"classes": (0, -3)}, "--classes 0,-3"),
    ({"max_nms": 0}, "max_nms"),
])
def test_settings_out_of_range_are_refused(kw: dict, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        PostSettings(**kw)


def test_edges_are_valid() -> None:
    PostSettings(conf=0.0, iou=1.0, max_det=1, classes=(0,))
    PostSettings(conf=1.0, iou=0.0)


def test_cli_refuses_max_det_minus_one_in_one_line(tmp_path: Path) -> None:
    """`--max-det -1` was accepted (and kept every box but the last one)."""
    from conftest import assert_one_line_error, run_cli

    for flags, words in ((["--max-det", "-1"], "--max-det -1"), (["--conf", "2"], "--conf 2"),
                         (["--classes", "1,-2"], "--classes 1,-2")):
        assert_one_line_error(run_cli("detect", str(tmp_path), "-m", "m", *flags), 2, words)


def _rowwise(pred: np.ndarray, s: PostSettings) -> np.ndarray:
    """The anchors decoding as first written (every candidate transposed, argmax row by row): the reference."""
    from tritonctl.vision.postprocess import _nms, _xywh_to_xyxy

    best = pred[4:].max(0)
    rows = pred[:, np.flatnonzero(best > s.conf)].T.astype(np.float32)
    if not len(rows):
        return np.zeros((0, 6), np.float32)
    cls = rows[:, 4:].argmax(1)
    score = rows[:, 4:][np.arange(len(cls)), cls]
    keep = score > s.conf
    if s.classes is not None:
        keep &= np.isin(cls, s.classes)
    return _nms(_xywh_to_xyxy(rows[keep, :4]), score[keep], cls[keep], s).rows()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_anchors_equal_the_rowwise_decoding(dtype: str) -> None:
    rng = np.random.default_rng(7)
    for trial in range(300):
        nc, anchors = int(rng.integers(1, 6)), int(rng.integers(1, 900))
        pred = np.empty((4 + nc, anchors), np.float32)
        pred[:2] = rng.random((2, anchors)) * 192
        pred[2:4] = rng.random((2, anchors)) * 60
        pred[4:] = rng.random((nc, anchors)) ** int(rng.integers(1, 12))
        if trial % 7 == 0:
            pred[4, rng.integers(0, anchors)] = np.nan
        pred = pred.astype(dtype)
        s = PostSettings(conf=float(rng.choice([0.01, 0.25, 0.5])), classes=(0, 2) if trial % 5 == 0 else None,
                         agnostic=trial % 4 == 0)
        got = decode_one(pred, "anchors", s)
        assert got.boxes.dtype == got.scores.dtype == np.float32 and got.classes.dtype == np.int64
        np.testing.assert_array_equal(got.rows(), _rowwise(pred, s))


def test_nms_of_one_box_or_none() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.45).tolist() == []
    assert nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.5], np.float32), 0.45).tolist() == [0]
