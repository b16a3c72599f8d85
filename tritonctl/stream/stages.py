"""The run's ordered stages: tracking, then zones and lines. Each keeps its per-source state, from the source's
joining to its end, and reports typed figures. A new per-frame step is one class following `frames.FrameStage` and
one line in `ordered_stages` (or in the worker-side list, for a step that needs no order)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tritonctl.vision.frames import FrameStage, Result, StageFigures, TrackSpan

if TYPE_CHECKING:
    from tritonctl.stream.tracking import Tracker
    from tritonctl.stream.zones import Line, SourceGeometry, Zone

class StageSettings(Protocol):
    """What choosing the stages reads of the run's settings."""

    @property
    def track(self) -> str | None: ...

    @property
    def dwell(self) -> bool: ...


RateOf = Callable[[int], tuple[float, int]]  # a source's frames per second (0: not known yet) and its --vid-stride
GeometryOf = Callable[[int], tuple[Sequence["Zone"], Sequence["Line"]]]  # a source's zones and lines


@dataclass(frozen=True)
class TrackFigures(StageFigures):
    tracks: dict[int, int]  # per source, the distinct tracks seen


@dataclass(frozen=True)
class GeometryFigures(StageFigures):
    totals: dict[int, dict[str, Any]]  # per source with zones or lines: zones.SourceGeometry.totals() so far


class TrackingStage:
    """--track: one tracker per source, made at the source's first result (a live source knows its frame rate only
    once it opened). Results of a source that ended pass untouched (nothing writes them any more)."""

    name = "track"

    def __init__(self, algorithm: str, rate_of: RateOf) -> None:
        self.algorithm, self.rate_of = algorithm, rate_of
        self._trackers: dict[int, Tracker] = {}
        self._seen: dict[int, set[int]] = {}  # per source, the track ids seen (the summary's count)
        self._ended: set[int] = set()

    def process(self, result: Result) -> None:
        sid = result.frame.source
        if sid in self._ended:
            return
        tracker = self._trackers.get(sid)
        if tracker is None:
            tracker = self._trackers[sid] = self._make(sid)
        # Timestamps let the motion model span frames a live camera dropped; image sources have none (all 0).
        ts = result.frame.timestamp if result.frame.path is None else None
        result.detections = tracker.update(result.detections, timestamp=ts, frame=result.frame.index)
        result.ended_tracks = tracker.ended()
        ids = result.detections.track_ids
        self._seen.setdefault(sid, set()).update(ids.tolist() if ids is not None else [])

    def _make(self, source: int) -> Tracker:
        from tritonctl.stream.tracking import make_tracker

        fps, stride = self.rate_of(source)
        # A stream's guessed rate can be its 90 kHz timebase: only a plausible rate is believed. The tracker sees
        # every vid_stride-th frame, so its motion model runs at the rate it is fed.
        fps = fps if 1.0 <= fps <= 120.0 else 30.0
        return make_tracker(self.algorithm, fps / stride)

    def source_added(self, source: int) -> None:
        self._ended.discard(source)

    def source_ended(self, source: int) -> list[TrackSpan]:
        self._ended.add(source)
        tracker = self._trackers.pop(source, None)
        return tracker.finish() if tracker is not None else []

    def figures(self) -> TrackFigures:
        return TrackFigures(self.name, {sid: len(ids) for sid, ids in list(self._seen.items())})


class ZonesStage:
    """Zones and counting lines (the pipeline file's), counted per source in frame order; sources without any pass.
    The totals are copied after each frame, so the live view's thread reads them without waiting for the emitter."""

    name = "zones"

    def __init__(self, geometry_of: GeometryOf, names: Mapping[int, str]) -> None:
        self.geometry_of, self.names = geometry_of, names
        self._geometry: dict[int, SourceGeometry] = {}
        self._totals: dict[int, dict[str, Any]] = {}

    def process(self, result: Result) -> None:
        sid = result.frame.source
        geometry = self._geometry.get(sid)
        if geometry is not None:
            result.geometry = geometry.update(result.detections, result.frame.index)
            self._totals[sid] = geometry.totals(self.names)

    def source_added(self, source: int) -> None:
        """Raises BadInput for a source whose zones or lines cannot be counted (a name used twice)."""
        zones, lines = self.geometry_of(source)
        if zones or lines:
            from tritonctl.stream.zones import SourceGeometry

            geometry = SourceGeometry(zones, lines)
            self._geometry[source] = geometry
            self._totals[source] = geometry.totals(self.names)

    def source_ended(self, source: int) -> list[TrackSpan]:
        self._geometry.pop(source, None)  # its totals stay: the summary reports them
        return []

    def figures(self) -> GeometryFigures:
        return GeometryFigures(self.name, dict(self._totals))


@dataclass(frozen=True)
class DwellFigures(StageFigures):
    longest_s: dict[int, float]  # per source, the longest time one object has been in view so far


class DwellStage:
    """--dwell: how long each tracked object has been in view, in seconds of the source's own clock (video time for a
    file, wall time since the start for a live source), as `dwell_s` per detection (Detections.data: the JSON Lines
    and the brokers carry it without knowing of it). Needs track ids, so it runs after tracking."""

    name = "dwell"

    def __init__(self) -> None:
        self._first: dict[int, dict[int, float]] = {}  # per source, each track id's first timestamp
        self._longest: dict[int, float] = {}

    def process(self, result: Result) -> None:
        import numpy as np

        ids = result.detections.track_ids
        if ids is None:
            return
        sid, now = result.frame.source, result.frame.timestamp
        first = self._first.setdefault(sid, {})
        dwell = np.array([now - first.setdefault(int(t), now) for t in ids.tolist()], dtype=np.float64)
        result.detections.add("dwell_s", np.round(dwell, 3))
        if len(dwell):
            self._longest[sid] = max(self._longest.get(sid, 0.0), float(dwell.max()))
        for span in result.ended_tracks:  # an ended track's id is not seen again: its clock goes with it
            first.pop(span.track_id, None)

    def source_added(self, source: int) -> None:
        self._first[source] = {}

    def source_ended(self, source: int) -> list[TrackSpan]:
        self._first.pop(source, None)
        return []

    def figures(self) -> DwellFigures:
        return DwellFigures(self.name, dict(self._longest))


def ordered_stages(settings: StageSettings, rate_of: RateOf, geometry_of: GeometryOf,
                   names: Mapping[int, str]) -> list[FrameStage]:
    """The run's ordered stages: tracking (--track), then zones and lines (which need track ids to count crossings,
    so after it), then dwell time (--dwell). A new stage is one line here."""
    stages: list[FrameStage] = [TrackingStage(settings.track, rate_of)] if settings.track is not None else []
    stages.append(ZonesStage(geometry_of, names))
    stages += [DwellStage()] if settings.dwell else []
    return stages
