"""Letterbox geometry and tensor layout, checked against Ultralytics' own LetterBox."""

from __future__ import annotations

import numpy as np
import pytest

from tritonctl.vision.preprocess import Letterbox, Preprocessor


@pytest.mark.parametrize(("h", "w"), [(1080, 1920), (360, 640), (1, 1), (7, 2000), (2000, 7), (640, 640), (4000, 3000)])
def test_matches_ultralytics_letterbox(h: int, w: int) -> None:
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(h * w)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    want = LetterBox((192, 192), auto=False, stride=32)(image=frame)
    pre = Preprocessor(192, 192, "float32")
    pre(frame)
    got = (pre.batch[0].transpose(1, 2, 0)[:, :, ::-1] * 255).round().astype(np.uint8)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_dtypes_and_rows() -> None:
    frame = np.full((100, 200, 3), (10, 20, 30), np.uint8)  # BGR
    for dtype in ("float16", "float32", "uint8"):
        pre = Preprocessor(64, 64, dtype, max_batch=2)
        pre(frame, row=1)
        assert pre.batch.dtype == np.dtype(dtype)
        centre = pre.batch[1, :, 32, 32].astype(np.float32)
        scale = 1 if dtype == "uint8" else 255
        np.testing.assert_allclose(centre * scale, [30, 20, 10], atol=0.1)  # RGB order


def test_boxes_map_back_like_ultralytics() -> None:
    import torch
    from ultralytics.utils import ops

    rng = np.random.default_rng(2)
    for h, w in [(500, 300), (1080, 1920), (413, 731), (7, 2000)]:
        canvas = np.concatenate([np.sort(rng.uniform(0, 192, (20, 2)), 1), np.sort(rng.uniform(0, 192, (20, 2)), 1)],
                                1)[:, [0, 2, 1, 3]].astype(np.float32)
        want = ops.scale_boxes((192, 192), torch.from_numpy(canvas.copy()), (h, w)).numpy()
        got = Letterbox.fit(h, w, 192, 192).to_source(np.concatenate([canvas, np.zeros((20, 2), np.float32)], 1))
        np.testing.assert_allclose(got[:, :4], want, rtol=1e-5, atol=1e-3)


def test_boxes_map_back_to_source() -> None:
    box = Letterbox.fit(1080, 1920, 640, 640)
    canvas_box = np.array([[box.pad_x + 10 * box.scale, box.pad_y + 20 * box.scale,
                            box.pad_x + 110 * box.scale, box.pad_y + 220 * box.scale, 0.9, 1]], np.float32)
    np.testing.assert_allclose(box.to_source(canvas_box)[0, :4], [10, 20, 110, 220], atol=0.01)
    outside = np.array([[-50, -50, 700, 700, 0.5, 0]], np.float32)
    assert box.to_source(outside)[0, :4].tolist() == [0, 0, 1920, 1080]


def test_buffers_are_reused() -> None:
    pre = Preprocessor(64, 64, "float16", max_batch=4)
    before = pre.batch.ctypes.data
    for h, w in [(100, 50), (50, 100), (100, 50)]:
        pre(np.zeros((h, w, 3), np.uint8), row=3)
    assert pre.batch.ctypes.data == before


def test_sliver_frames() -> None:
    """3 x 2000 scales to less than a pixel high: it still lands on the canvas, boxes still map back."""
    pre = Preprocessor(192, 192)
    box = pre(np.full((3, 2000, 3), 255, np.uint8))
    assert box.resized == (192, 1)
    assert pre.batch[0, 0, 95:97].max() == pytest.approx(1.0)


def test_empty_frame_rejected() -> None:
    with pytest.raises(ValueError, match="empty frame"):
        Preprocessor(64, 64)(np.zeros((0, 10, 3), np.uint8))


def test_fp16_table_equals_fp32_rounded() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    half, full = Preprocessor(192, 192, "float16"), Preprocessor(192, 192, "float32")
    half(frame)
    full(frame)
    np.testing.assert_array_equal(half.batch, full.batch.astype(np.float16))


def test_the_resize_lands_in_the_canvas_itself_and_equals_a_resize_copy() -> None:
    import cv2

    rng = np.random.default_rng(3)
    pre = Preprocessor(192, 256, "uint8")
    for h, w in [(1080, 1920), (333, 777), (5, 1900), (1900, 5)]:
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        box = pre.letterbox(frame)
        nw, nh = box.resized
        region = pre._canvas[box.pad_y:box.pad_y + nh, box.pad_x:box.pad_x + nw]
        np.testing.assert_array_equal(region, cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR))
        outside = np.ones(pre._canvas.shape[:2], bool)
        outside[box.pad_y:box.pad_y + nh, box.pad_x:box.pad_x + nw] = False
        assert (pre._canvas[outside] == 114).all()  # the pad, also after a frame of another size


def test_to_source_maps_both_axes_in_place_and_takes_no_boxes() -> None:
    box = Letterbox.fit(1080, 1920, 192, 192)
    boxes = np.array([[0, 42, 192, 150], [96, 96, 100, 100], [-5, 0, 300, 300]], np.float32)
    new_w, new_h = box.resized
    want = boxes.copy()
    want[:, [0, 2]] = ((want[:, [0, 2]] - box.pad_x) / (new_w / 1920)).clip(0, 1920)
    want[:, [1, 3]] = ((want[:, [1, 3]] - box.pad_y) / (new_h / 1080)).clip(0, 1080)
    got = box.to_source(boxes)
    assert got is boxes
    np.testing.assert_array_equal(got, want)
    assert box.to_source(np.zeros((0, 4), np.float32)).shape == (0, 4)
