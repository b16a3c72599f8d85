"""Trackers: the contract of `Tracker.update`, and MOT scores (IDF1, MOTA, ID switches, by motmetrics) against the
synthetic video's ground truth, on noisy ground-truth boxes (the tracker alone) and on the demo model's detections."""

from __future__ import annotations

from pathlib import Path

import motmetrics as mm
import numpy as np
import pytest

from tritonctl.core.errors import BadInput
from tritonctl.stream.tracking import TRACKERS, make_tracker
from tritonctl.vision.detections import Detections
from tritonctl.vision.synthetic import video_frames, write_mot_ground_truth

W, H, SEED = 640, 360, 7
N_FRAMES = 300


def _det(boxes: list[list[float]], scores: list[float], classes: list[int] | None = None) -> Detections:
    n = len(boxes)
    return Detections(np.asarray(boxes, np.float32).reshape(n, 4), np.asarray(scores, np.float32),
                      np.asarray(classes if classes is not None else [0] * n, np.int64))


# ------------------------------------------------------------------ contract


def test_unknown_tracker_is_bad_input() -> None:
    with pytest.raises(BadInput, match="bytetrack, ocsort, botsort"):
        make_tracker("deepsort", 30)
    with pytest.raises(BadInput, match="frame rate"):
        make_tracker("bytetrack", 0)


@pytest.mark.parametrize("name", TRACKERS)
def test_ids_order_unconfirmed_and_spans(name: str) -> None:
    tracker = make_tracker(name, 30.0)
    a, b = [10.0, 10.0, 60.0, 60.0], [300.0, 100.0, 360.0, 170.0]
    seen: list[np.ndarray] = []
    for f in range(6):
        shift = [2.0 * f, 0.0, 2.0 * f, 0.0]
        # b first, then a: the output must keep this order, whatever the library does with it.
        det = _det([list(np.add(b, shift)), list(np.add(a, shift))], [0.9, 0.95], [3, 1])
        out = tracker.update(det)
        assert out.track_ids is not None and out.track_ids.dtype == np.int64
        if len(out) == 2:
            np.testing.assert_array_equal(out.classes, [3, 1])  # input order and each row's own class
            np.testing.assert_array_equal(out.boxes, det.boxes)
            seen.append(out.track_ids)
    assert len(seen) >= 4, "two steady objects are confirmed within two frames"
    assert all((ids == seen[0]).all() for ids in seen) and set(seen[0].tolist()) == {1, 2}
    assert tracker.ended() == []
    spans = tracker.finish()
    assert sorted(s.track_id for s in spans) == [1, 2] and all(s.last_frame == 5 for s in spans)

    # Objects gone for longer than the lost buffer end; reset starts ids again at 1.
    for _ in range(40):
        tracker.update(Detections.empty())
    tracker.reset()
    assert tracker.frame == -1
    for _ in range(3):
        out = tracker.update(_det([a], [0.9]))
    assert out.track_ids is not None and out.track_ids.tolist() == [1]


@pytest.mark.parametrize("name", TRACKERS)
def test_unconfirmed_kept_on_request_with_id_minus_one(name: str) -> None:
    tracker = make_tracker(name, 30.0, keep_unconfirmed=True)
    out = tracker.update(_det([[10, 10, 60, 60], [200, 200, 240, 240]], [0.9, 0.3]))
    assert len(out) == 2 and out.track_ids is not None
    assert out.track_ids[1] == -1  # a 0.3 box never starts a track
    strict = make_tracker(name, 30.0).update(_det([[200, 200, 240, 240]], [0.3]))
    assert len(strict) == 0 and strict.track_ids is not None


def test_lost_track_ends_with_its_span() -> None:
    tracker = make_tracker("bytetrack", 30.0)
    for f in range(5):
        tracker.update(_det([[10 + f, 10, 60 + f, 60]], [0.9]))
    ended = []
    for _ in range(60):
        tracker.update(Detections.empty())
        ended += tracker.ended()
    assert len(ended) == 1 and ended[0].track_id == 1 and ended[0].last_frame == 4
    assert not tracker._spans  # bounded: nothing kept for a track that is gone


def test_mot_ground_truth_file(tmp_path: Path) -> None:
    path = write_mot_ground_truth(tmp_path / "gt.txt", n_frames=5, width=W, height=H, seed=SEED)
    rows = np.loadtxt(path, delimiter=",")
    assert rows.shape == (15, 10)
    assert rows[:, 0].tolist() == [f for f in range(1, 6) for _ in range(3)]
    assert rows[:, 1].tolist() == [1, 2, 3] * 5
    first = next(video_frames(1, W, H, SEED))[1][0]
    np.testing.assert_allclose(rows[0, 2:6], [first.x1, first.y1, first.x2 - first.x1, first.y2 - first.y1], atol=0.01)
    assert (rows[:, 6:] == [1, -1, -1, -1]).all()


# ------------------------------------------------------------------ MOT scores


def _ground_truth(tmp_path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """frame (1-based) -> (ids, xywh), read back from the MOT file the writer makes (so the writer is what is scored)."""
    rows = np.loadtxt(write_mot_ground_truth(tmp_path / "gt.txt", N_FRAMES, W, H, SEED), delimiter=",")
    return {f: (rows[rows[:, 0] == f, 1].astype(int), rows[rows[:, 0] == f, 2:6]) for f in range(1, N_FRAMES + 1)}


def _score(name: str, gt: dict[int, tuple[np.ndarray, np.ndarray]], frames: list[Detections]) -> dict[str, float]:
    tracker = make_tracker(name, 30.0)
    acc = mm.MOTAccumulator(auto_id=True)
    for f, det in enumerate(frames, 1):
        out = tracker.update(det)
        assert out.track_ids is not None
        hyp = np.concatenate([out.boxes[:, :2], out.boxes[:, 2:] - out.boxes[:, :2]], 1)
        ids, xywh = gt[f]
        acc.update(ids.tolist(), out.track_ids.tolist(), mm.distances.iou_matrix(xywh, hyp, max_iou=0.5))
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name=name)
    figures = {k: float(summary[k].iloc[0]) for k in ("idf1", "mota", "num_switches")}
    print(f"\n{name}: IDF1 {figures['idf1']:.3f}  MOTA {figures['mota']:.3f}  ID switches {figures['num_switches']:.0f}")
    return figures


def _noisy(gt: dict[int, tuple[np.ndarray, np.ndarray]], seed: int = 0) -> list[Detections]:
    """Ground truth as a mediocre detector would report it: 3 px jitter on every edge, 10% of boxes missed, a
    score between 0.3 and 1, and a false positive (low score, random place) in one frame of five."""
    rng = np.random.default_rng(seed)
    frames = []
    for f in range(1, N_FRAMES + 1):
        xywh = gt[f][1]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) + rng.normal(0, 3, (len(xywh), 4))
        keep = rng.random(len(boxes)) > 0.1
        boxes, scores = boxes[keep], rng.uniform(0.3, 1.0, keep.sum())
        if rng.random() < 0.2:
            x, y = rng.uniform(0, W - 60), rng.uniform(0, H - 60)
            boxes = np.concatenate([boxes, [[x, y, x + 40, y + 40]]])
            scores = np.append(scores, rng.uniform(0.25, 0.45))
        frames.append(Detections(boxes.astype(np.float32), scores.astype(np.float32), np.zeros(len(boxes), np.int64)))
    return frames


# Floors 0.02-0.03 under the figures measured on these seeded inputs (trackers 2.6.1, supervision 0.31.2, numpy 1.26.4):
#   noisy ground truth   bytetrack IDF1 0.930 MOTA 0.870 IDsw 0 | ocsort 0.775 0.632 0 | botsort 0.909 0.833 0
#   demo model, 300 fr.  bytetrack IDF1 0.971 MOTA 0.953 IDsw 2 | ocsort 0.901 0.820 0 | botsort 0.903 0.944 1
# OC-SORT is lower because it discards every box under its 0.5 threshold (it has no low-score stage): a quarter of the
# demo model's boxes and a third of the noisy ones. Its IDF1 is very sensitive to that threshold on this video (0.80 at
# 0.35, 0.96 at 0.4, 0.92 at 0.45, 0.90 at 0.5): it is left at the round 0.5 rather than tuned on the test itself.
NOISY_FLOORS = {"bytetrack": (0.90, 0.84, 2), "ocsort": (0.74, 0.60, 2), "botsort": (0.88, 0.80, 2)}
# On the model's detections the floors leave room for another CPU's ONNX Runtime rounding moving a score across a
# tracker's threshold (OC-SORT's IDF1 moves 0.80-0.96 with its threshold alone); ByteTrack's stays above the 0.9 target.
MODEL_FLOORS = {"bytetrack": (0.92, 0.90, 5), "ocsort": (0.80, 0.70, 4), "botsort": (0.85, 0.85, 4)}


@pytest.mark.parametrize("name", TRACKERS)
def test_mot_scores_on_noisy_ground_truth(name: str, tmp_path: Path) -> None:
    gt = _ground_truth(tmp_path)
    got = _score(name, gt, _noisy(gt))
    idf1, mota, switches = NOISY_FLOORS[name]
    assert got["idf1"] >= idf1 and got["mota"] >= mota and got["num_switches"] <= switches, got


@pytest.fixture(scope="module")
def demo_detections(demo_export: Path) -> list[Detections]:
    """The demo model's detections (FP32 ONNX on ONNX Runtime, the tool's own pre- and postprocessing) on the demo
    video's first N_FRAMES frames, in source pixels."""
    import onnxruntime as ort

    from tritonctl.vision.postprocess import PostSettings, decode_one, head_layout
    from tritonctl.vision.preprocess import Preprocessor
    from tritonctl.vision.synthetic import CLASS_NAMES

    session = ort.InferenceSession(str(demo_export / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    _, _, h, w = inp.shape
    pre = Preprocessor(h, w, "float32")
    settings = PostSettings()
    layout: str | None = None
    frames = []
    for image, _ in video_frames(N_FRAMES, W, H, SEED):
        box = pre(image)
        pred = session.run(None, {inp.name: pre.batch})[0]
        layout = layout or head_layout(pred.shape, len(CLASS_NAMES))
        det = decode_one(pred[0], layout, settings)
        box.to_source(det.boxes)
        frames.append(det)
    return frames


@pytest.mark.parametrize("name", TRACKERS)
def test_mot_scores_on_demo_model(name: str, demo_detections: list[Detections], tmp_path: Path) -> None:
    got = _score(name, _ground_truth(tmp_path), demo_detections)
    idf1, mota, switches = MODEL_FLOORS[name]
    assert got["idf1"] >= idf1 and got["mota"] >= mota and got["num_switches"] <= switches, got
