"""The frame's vocabulary and its stages: open per-detection data, the emitter on its own thread (order, accounting,
a slow or failing sink), worker-side and ordered stages (tracking, zones) with their own per-source state."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tritonctl.stream.emitter import Emitter
from tritonctl.stream.stages import GeometryFigures, TrackFigures, TrackingStage, ZonesStage
from tritonctl.stream.stats import RunStats
from tritonctl.stream.streaming import Worker
from tritonctl.stream.zones import Zone
from tritonctl.vision.detections import Detections
from tritonctl.vision.frames import Frame, FrameStage, Result, Sink, Unfinished
from tritonctl.vision.postprocess import PostSettings

NAMES = {0: "circle", 1: "square"}
LABELS = SimpleNamespace(name="shapes", names=NAMES)


def _frame(source: int = 0, index: int = 0) -> Frame:
    return Frame(source, index, np.zeros((4, 4, 3), np.uint8), index / 30, time.perf_counter(), 0.0)


def _dets(n: int) -> Detections:
    boxes = np.array([[10.0 * i, 10.0, 10.0 * i + 5, 20.0] for i in range(n)], np.float32).reshape(n, 4)
    return Detections(boxes, np.linspace(0.9, 0.5, n).astype(np.float32), np.arange(n, dtype=np.int64) % 2)


def _result(seq: int, source: int = 0, index: int | None = None, det: Detections | None = None) -> Result:
    return Result(seq, _frame(source, seq if index is None else index), det if det is not None else _dets(2), {})


# ---------------------------------------------------------------- open data on detections


def test_data_arrays_ride_through_selection_and_json() -> None:
    det = _dets(3)
    det.add("embedding", np.arange(6, dtype=np.float32).reshape(3, 2))
    det.add("colour", np.array(["red", "green", "blue"]))
    kept = det.select(np.array([True, False, True]))
    assert kept.data["embedding"].tolist() == [[0.0, 1.0], [4.0, 5.0]]
    assert kept.select(np.array([1])).data["colour"].tolist() == ["blue"]
    rows = kept.to_json(NAMES)
    assert [r["embedding"] for r in rows] == [[0.0, 1.0], [4.0, 5.0]]  # [n, k]: a list per detection
    assert [r["colour"] for r in rows] == ["red", "blue"]  # [n]: a value per detection
    assert rows[0]["class"] == "circle" and "track_id" not in rows[0]
    assert "data" not in Detections.empty().to_json(NAMES) and Detections.empty().data == {}


def test_data_must_have_a_row_per_detection_and_a_free_name() -> None:
    det = _dets(2)
    with pytest.raises(ValueError, match="3 rows for 2 detections"):
        det.add("x", np.zeros(3))
    with pytest.raises(ValueError, match="a field of every detection"):
        det.add("score", np.zeros(2))
    with pytest.raises(ValueError, match="scalar"):
        det.add("x", np.float32(1.0))  # type: ignore[arg-type]


def test_tracking_keeps_the_data_of_the_detections_it_returns() -> None:
    pytest.importorskip("trackers")
    stage = TrackingStage("bytetrack", lambda sid: (30.0, 1))
    for i in range(4):
        det = _dets(2)
        det.add("row", np.array([10 * i, 10 * i + 1]))
        result = _result(i, det=det)
        stage.process(result)
    assert result.detections.track_ids is not None and len(result.detections) == 2
    assert result.detections.data["row"].tolist() == [30, 31]


# ---------------------------------------------------------------- the emitter


class ListSink:
    def __init__(self, gate: threading.Event | None = None, fail_on: set[int] | None = None) -> None:
        self.seen: list[tuple[int, int]] = []
        self.gate, self.fail_on = gate, fail_on or set()

    def write(self, result: Result, info: Any) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        if result.seq in self.fail_on:
            raise OSError(f"disk full at {result.seq}")
        self.seen.append((result.frame.source, result.seq))

    def written(self) -> list[tuple[Path, int]]:
        return []

    def close(self) -> None:
        pass

    def discard(self) -> None:
        pass


class Mark:
    """A stage that notes the order it saw frames in, and what the sinks see after it."""

    name = "mark"

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.added: list[int] = []

    def process(self, result: Result) -> None:
        self.seen.append(result.seq)
        result.detections.add("stage", np.full(len(result.detections), result.seq))

    def source_added(self, source: int) -> None:
        self.added.append(source)

    def source_ended(self, source: int) -> list[Any]:
        return []

    def figures(self) -> Any:
        return None


def _emitter(sinks: list[Sink], stages: list[FrameStage] | None = None, window: int = 16,
             ) -> tuple[Emitter, RunStats, list[int], list[BaseException]]:
    stats, advanced, failures = RunStats(), list[int](), list[BaseException]()
    em = Emitter(window, stages or [], lambda sid: sinks, LABELS, stats, advanced.append, failures.append)
    return em, stats, advanced, failures


def test_the_emitter_orders_results_runs_the_stages_then_the_sinks() -> None:
    sink, mark = ListSink(), Mark()
    em, stats, advanced, failures = _emitter([sink], [mark])
    em.start()
    items: list[Result | Unfinished] = [_result(2), Unfinished(1, _frame(0, 1)), _result(0), _result(4), _result(3, 1)]
    for item in items:
        em.put(item)
    assert em.close() == []
    assert mark.seen == [0, 2, 3, 4] and sink.seen == [(0, 0), (0, 2), (1, 3), (0, 4)]
    assert stats.inferred == {0: 3, 1: 1} and stats.interrupted == {0: 1} and not failures
    assert advanced[-1] == 5 and advanced == sorted(advanced)
    assert stats.stages["end_to_end"].count == 4  # every written frame has its latency


def test_a_slow_sink_holds_only_the_emitter() -> None:
    """A worker hands its results over and goes back to inferring while the sink still writes."""
    gate = threading.Event()
    em, stats, _, _ = _emitter([ListSink(gate)], window=8)
    em.start()
    t0 = time.perf_counter()
    for seq in range(8):  # the dispatcher's whole window
        em.put(_result(seq))
    handed_over = time.perf_counter() - t0
    gate.set()
    em.close()
    assert handed_over < 0.5 and sum(stats.inferred.values()) == 8


def test_a_failing_sink_stops_the_run_once_and_every_frame_is_counted() -> None:
    bad, good = ListSink(fail_on={1, 2}), ListSink()
    em, stats, _, failures = _emitter([bad, good])
    em.start()
    for seq in range(4):
        em.put(_result(seq))
    em.close()
    assert len(failures) == 1 and str(em.failure) == "disk full at 1"
    assert stats.problems == ["OSError: disk full at 2"]  # the next failure is reported, not raised again
    assert stats.inferred == {0: 4} and good.seen == [(0, 0), (0, 3)]  # a sink after the failing one misses its frame


def test_frames_that_never_came_in_order_are_handed_back() -> None:
    em, stats, _, _ = _emitter([ListSink()])
    em.start()
    em.put(_result(1))  # seq 0 never arrives (its worker died)
    left = em.close()
    assert [item.seq for item in left] == [1] and not stats.inferred


def test_an_emitter_that_never_started_hands_back_what_was_queued() -> None:
    em, _, _, _ = _emitter([ListSink()])
    em.put(_result(0))
    assert [item.seq for item in em.close()] == [0]


# ---------------------------------------------------------------- stages


class _Box:
    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        return boxes


def test_worker_side_stages_run_in_the_worker_before_ordering() -> None:
    """The hook in Worker._results: every result passes each worker-side stage, in the worker's thread."""
    threads: list[str] = []

    class Where(Mark):
        def process(self, result: Result) -> None:
            threads.append(threading.current_thread().name)
            super().process(result)

    stage = Where()
    worker = Worker.__new__(Worker)
    worker.run_ = SimpleNamespace(worker_stages=[stage], info=SimpleNamespace(layout="end2end"),  # type: ignore[assignment]
                                  post_for=lambda sid: PostSettings())
    worker.pre = lambda image, row: _Box()  # type: ignore[assignment]
    out = np.array([[[1, 2, 30, 40, 0.9, 1]]] * 2, np.float32)
    worker._infer = lambda n: (out[:n], "ep")  # type: ignore[method-assign]
    results = list(worker._results([(7, _frame(0, 3)), (8, _frame(1, 5))]))
    assert stage.seen == [7, 8] and threads == [threading.current_thread().name] * 2
    assert all(isinstance(r, Result) and r.detections.data["stage"].tolist() == [r.seq] for r in results)


def test_tracking_stage_keeps_a_tracker_per_source_and_ends_it() -> None:
    pytest.importorskip("trackers")
    stage = TrackingStage("bytetrack", lambda sid: (30.0, 1))
    for sid in (0, 1):
        stage.source_added(sid)
    for i in range(5):
        for sid in (0, 1):
            stage.process(_result(i, source=sid, index=i, det=_dets(1 + sid)))
    assert stage.figures() == TrackFigures("track", {0: 1, 1: 2})
    ended = stage.source_ended(1)  # its tracks still alive end with it
    assert sorted(s.track_id for s in ended) == [1, 2] and all(s.last_frame == 4 for s in ended)
    late = _result(5, source=1, index=5, det=_dets(2))
    stage.process(late)  # a frame of an ended source (in flight when it was removed) passes untouched
    assert late.detections.track_ids is None and stage.figures().tracks == {0: 1, 1: 2}


def test_zones_stage_counts_per_source_and_reports_totals() -> None:
    zone = Zone("left", ((0, 0), (12, 0), (12, 100), (0, 100)))
    stage = ZonesStage(lambda sid: ((zone,), ()) if sid == 0 else ((), ()), NAMES)
    stage.source_added(0)
    stage.source_added(1)
    assert stage.figures() == GeometryFigures("zones", {0: {"zones": {"left": {"current": {}, "max": {}}}, "lines": {}}})
    first, other = _result(0, source=0), _result(1, source=1)
    stage.process(first)
    stage.process(other)
    assert first.geometry is not None and first.geometry.zones_of(0) == ["left"] and other.geometry is None
    assert stage.figures().totals[0]["zones"]["left"] == {"current": {"circle": 1}, "max": {"circle": 1}}
    assert stage.source_ended(0) == [] and 0 in stage.figures().totals  # its totals stay for the summary
