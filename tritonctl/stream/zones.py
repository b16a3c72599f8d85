"""Zones and counting lines: objects in each polygon per class, and tracks crossing each line, per source.

Which point of a box counts is its *anchor*: by default the bottom centre (where the object stands, as Roboflow
supervision and Frigate do: a person's box overlaps a floor zone long before their feet are in it), or the centre.

Lines count a track when its anchor moves from one side of the line to the other *through* the segment a->b. Sides
are seen in the image (x right, y down): walking from a to b, "in" is a crossing from your left to your right, "out"
the reverse. So a line drawn left to right across the frame counts objects moving down the image as "in", and a line
drawn bottom to top counts objects moving right as "in".

Everything per frame is numpy over all boxes at once; the per-track memory (last side, last point, last frame seen)
is a sorted id array, matched with searchsorted, dropped after `max_age` frames unseen so it stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from tritonctl.core.errors import BadInput
from tritonctl.vision.detections import Detections

Anchor = Literal["bottom_center", "center"]
ANCHORS: tuple[str, ...] = get_args(Anchor)
Point = tuple[float, float]
ClassCounts = dict[int, int]  # class id -> objects (only classes with at least one)

# A point within this many pixels of a line or polygon edge counts as on it. Boxes are float32 (about 1e-4 px of
# rounding at 1000 px), so an exact zero test would turn a box resting on a line into random side flips.
_ON_EDGE_PX = 1e-3
MAX_AGE = 30  # frames a track may go unseen before its memory is dropped (a tracker's usual track buffer)


# ---------------------------------------------------------------- validation (shared with the pipeline file)


def _as_points(points: Sequence[Sequence[float]]) -> tuple[Point, ...] | str:
    """The points as float pairs, or what is wrong with them."""
    out: list[Point] = []
    for p in points:
        if len(p) != 2:
            return f"[{', '.join(f'{v:g}' for v in p)}] is not a point: give [x, y]"
        x, y = float(p[0]), float(p[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            return f"[{x:g}, {y:g}] is not a finite point"
        out.append((x, y))
    return tuple(out)


def _area(polygon: Sequence[Point]) -> float:
    xy = np.asarray(polygon, np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)  # shoelace


def polygon_problem(points: Sequence[Sequence[float]]) -> str | None:
    """Why these points are no zone polygon (None: they are one). Self-intersecting polygons are allowed (even-odd)."""
    polygon = _as_points(points)
    if isinstance(polygon, str):
        return polygon
    if len(polygon) < 3:
        return f"a polygon needs at least 3 points, not {len(polygon)}"
    if _area(polygon) <= 1e-9:
        return "the polygon has no area (its points lie on one line)"
    return None


def line_problem(points: Sequence[Sequence[float]]) -> str | None:
    """Why these points are no counting line (None: they are one)."""
    line = _as_points(points)
    if isinstance(line, str):
        return line
    if len(line) != 2:
        return f"a line needs exactly 2 points, not {len(line)}"
    if math.dist(line[0], line[1]) <= _ON_EDGE_PX:
        return "the line's two points are the same point"
    return None


def _anchor_problem(anchor: str) -> str | None:
    return None if anchor in ANCHORS else f"anchor {anchor!r} is not one of {', '.join(ANCHORS)}"


# ---------------------------------------------------------------- the geometry (immutable, what the config holds)


@dataclass(frozen=True)
class Zone:
    """A polygon in source pixels; a detection is in it when its anchor is inside or on the edge."""

    name: str
    polygon: tuple[Point, ...]
    anchor: Anchor = "bottom_center"

    def __post_init__(self) -> None:
        problem = polygon_problem(self.polygon) or _anchor_problem(self.anchor)
        if problem:
            raise BadInput(f"zone {self.name!r}: {problem}")
        points = _as_points(self.polygon)
        assert not isinstance(points, str)
        object.__setattr__(self, "polygon", points)  # lists and ints in, one hashable form out: equal zones compare equal

    def contains(self, points: np.ndarray) -> np.ndarray:
        """[n] bool: which of [n, 2] points are inside (even-odd rule) or on an edge (a zone includes its border)."""
        return _Edges(self.polygon).contains(points)


@dataclass(frozen=True)
class Line:
    """A counting segment a->b in source pixels; "in" is a crossing from its left to its right (see the module doc)."""

    name: str
    a: Point
    b: Point
    anchor: Anchor = "bottom_center"

    def __post_init__(self) -> None:
        problem = line_problem((self.a, self.b)) or _anchor_problem(self.anchor)
        if problem:
            raise BadInput(f"line {self.name!r}: {problem}")
        object.__setattr__(self, "a", (float(self.a[0]), float(self.a[1])))
        object.__setattr__(self, "b", (float(self.b[0]), float(self.b[1])))

    def sides(self, points: np.ndarray) -> np.ndarray:
        """[n] int8: +1 right of a->b (as seen in the image), -1 left, 0 on the line (within a micro-pixel)."""
        (ax, ay), (bx, by) = self.a, self.b
        # y points down in images, so a positive cross product is the right-hand side on screen.
        cross = (bx - ax) * (points[:, 1] - ay) - (by - ay) * (points[:, 0] - ax)
        side = np.sign(cross).astype(np.int8)
        side[np.abs(cross) <= _ON_EDGE_PX * math.dist(self.a, self.b)] = 0
        return side


def anchor_points(boxes: np.ndarray, anchor: Anchor) -> np.ndarray:
    """[n, 2] float64 anchor points of [n, 4] xyxy boxes."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    y = b[:, 3] if anchor == "bottom_center" else (b[:, 1] + b[:, 3]) / 2
    return np.stack([(b[:, 0] + b[:, 2]) / 2, y], 1)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """[n] bool for [n, 2] points and a [k, 2] polygon: inside (even-odd) or on an edge."""
    return _Edges(polygon).contains(points)


class _Edges:
    """A polygon's edges as [k] arrays, made once per zone: each frame is then a few [n, k] array operations."""

    def __init__(self, polygon: Sequence[Point] | np.ndarray) -> None:
        xy = np.asarray(polygon, np.float64)
        self.x1, self.y1 = xy[:, 0], xy[:, 1]
        x2, y2 = np.roll(self.x1, -1), np.roll(self.y1, -1)
        self.y2, self.dx, self.dy = y2, x2 - self.x1, y2 - self.y1
        with np.errstate(divide="ignore"):  # horizontal edges never straddle a ray: their inf slope is masked off
            self.slope = self.dx / self.dy
        self.tol = _ON_EDGE_PX * np.hypot(self.dx, self.dy)  # |cross| = edge length * distance from its line
        self.lo = np.minimum(xy, np.stack([x2, y2], 1)) - _ON_EDGE_PX
        self.hi = np.maximum(xy, np.stack([x2, y2], 1)) + _ON_EDGE_PX

    def contains(self, points: np.ndarray) -> np.ndarray:
        x, y = points[:, :1], points[:, 1:2]  # [n, 1] against [k] edges
        straddles = (self.y1 > y) != (self.y2 > y)  # half-open, so a ray through a vertex counts it once
        with np.errstate(invalid="ignore"):  # inf * 0 on horizontal edges, masked by straddles
            x_cross = self.x1 + (y - self.y1) * self.slope
        inside = np.count_nonzero(straddles & (x < x_cross), axis=1) % 2 == 1
        # The half-open rule puts some border points outside (e.g. feet on the frame's bottom row): include the border.
        cross = self.dx * (y - self.y1) - self.dy * (x - self.x1)
        on_edge = ((np.abs(cross) <= self.tol) & (x >= self.lo[:, 0]) & (x <= self.hi[:, 0])
                   & (y >= self.lo[:, 1]) & (y <= self.hi[:, 1]))
        result: np.ndarray = inside | on_edge.any(axis=1)
        return result


def class_counts(classes: np.ndarray) -> ClassCounts:
    if not len(classes):
        return {}
    if classes.min() >= 0:  # bincount: no sort, the common case (class ids index the model's names)
        counts = np.bincount(classes)
        values = np.flatnonzero(counts)
        return dict(zip(values.tolist(), counts[values].tolist(), strict=True))
    values, counts = np.unique(classes, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


# ---------------------------------------------------------------- per-track memory


_NO_IDS = np.zeros(0, np.int64)


class _TrackMemory:
    """Per track id: a side (+1/-1, 0 unknown), the point it was last seen on that side, the frame last seen.

    Sorted by id so a frame's ids are matched with one searchsorted, not a Python loop over tracks.
    """

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.sides = np.zeros(0, np.int8)
        self.points = np.zeros((0, 2), np.float64)
        self.seen = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def expire(self, frame: int, max_age: int) -> np.ndarray:
        """Drop tracks unseen for more than max_age frames; returns the ids of those dropped on side +1 (in a zone)."""
        old = frame - self.seen > max_age
        dropped = self.ids[old & (self.sides > 0)]
        if old.any():
            keep = ~old
            self.ids, self.sides, self.points, self.seen = (
                self.ids[keep], self.sides[keep], self.points[keep], self.seen[keep])
        return dropped

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, found) per id: row is valid only where found."""
        rows = np.searchsorted(self.ids, ids)
        found = rows < len(self.ids)
        found[found] = self.ids[rows[found]] == ids[found]
        return rows, found

    def previous(self, rows: np.ndarray, found: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(side, point) each id had: side 0 and the given point for ids not seen before."""
        if not len(self.ids):
            return np.zeros(len(rows), np.int8), points
        safe = np.minimum(rows, len(self.ids) - 1)
        return np.where(found, self.sides[safe], 0).astype(np.int8), np.where(found[:, None], self.points[safe], points)

    def put(self, ids: np.ndarray, sides: np.ndarray, points: np.ndarray, frame: int,
            rows: np.ndarray, found: np.ndarray) -> None:
        """Record this frame's sightings. A side of 0 (on the line) keeps the last strict side and its point."""
        strict = sides != 0
        known = rows[found & strict]
        self.sides[known] = sides[found & strict]
        self.points[known] = points[found & strict]
        self.seen[rows[found]] = frame
        new = ~found
        if new.any():
            self.ids = np.concatenate([self.ids, ids[new]])
            self.sides = np.concatenate([self.sides, sides[new]])
            self.points = np.concatenate([self.points, points[new]])
            self.seen = np.concatenate([self.seen, np.full(int(new.sum()), frame, np.int64)])
            order = np.argsort(self.ids, kind="stable")
            self.ids, self.sides, self.points, self.seen = (
                self.ids[order], self.sides[order], self.points[order], self.seen[order])


class _Frame:
    """One frame as the counters read it, so that a source's zones and lines share the work (anchors, track ids)."""

    def __init__(self, det: Detections, frame: int) -> None:
        self.det, self.frame = det, frame
        self._anchors: dict[Anchor, np.ndarray] = {}
        self.tracked: np.ndarray | None = None  # rows with a track id, one per id (the first); None: untracked
        self.ids = _NO_IDS
        if det.track_ids is not None:
            self.ids, first = np.unique(det.track_ids, return_index=True)  # a tracker never repeats an id; if it does
            self.tracked = first  # ... one of them counts

    def anchors(self, anchor: Anchor) -> np.ndarray:
        if anchor not in self._anchors:
            self._anchors[anchor] = anchor_points(self.det.boxes, anchor)
        return self._anchors[anchor]


# ---------------------------------------------------------------- per frame results


@dataclass(frozen=True, eq=False)
class ZoneState:
    counts: ClassCounts  # objects inside this frame, per class
    inside: np.ndarray  # [n] bool, per detection of the frame
    entered: np.ndarray  # track ids first seen inside since the last frame
    left: np.ndarray  # track ids seen outside after being inside, or gone for max_age frames while inside


@dataclass(frozen=True, eq=False)
class LineState:
    crossed_in: np.ndarray  # track ids that crossed left -> right of a->b on this frame
    crossed_out: np.ndarray  # and right -> left
    counts_in: ClassCounts  # this frame's crossings per class
    counts_out: ClassCounts


@dataclass(frozen=True, eq=False)
class GeometryState:
    """One frame's zones and lines, by name."""

    frame: int
    zones: dict[str, ZoneState]
    lines: dict[str, LineState]

    def zones_of(self, index: int) -> list[str]:
        """The zones detection `index` of the frame is in (for per-object events and drawing)."""
        return [name for name, z in self.zones.items() if z.inside[index]]

    def to_json(self, names: Mapping[int, str]) -> dict[str, Any]:
        """The JSON Lines form: counts keyed by class name, track ids as lists."""
        return {
            "zones": {n: {"count": _named(z.counts, names), "entered": z.entered.tolist(), "left": z.left.tolist()}
                      for n, z in self.zones.items()},
            "lines": {n: {"in": _named(s.counts_in, names), "out": _named(s.counts_out, names),
                          "in_ids": s.crossed_in.tolist(), "out_ids": s.crossed_out.tolist()}
                      for n, s in self.lines.items()},
        }


def _named(counts: ClassCounts, names: Mapping[int, str]) -> dict[str, int]:
    return {names.get(c, str(c)): n for c, n in sorted(counts.items())}


# ---------------------------------------------------------------- counters



class ZoneCounter:
    """Occupancy per class of one zone, the most seen at once, and which tracks entered or left it."""

    def __init__(self, zone: Zone, max_age: int = MAX_AGE) -> None:
        self.zone = zone
        self.max_age = max_age
        self.current: ClassCounts = {}
        self.max: ClassCounts = {}
        self._edges = _Edges(zone.polygon)
        self._tracks = _TrackMemory()  # side +1 inside, -1 outside

    def update(self, det: Detections, frame: int) -> ZoneState:
        return self.count(_Frame(det, frame))

    def count(self, f: _Frame) -> ZoneState:
        inside = self._edges.contains(f.anchors(self.zone.anchor))
        self.current = class_counts(f.det.classes[inside])
        for c, n in self.current.items():
            self.max[c] = max(self.max.get(c, 0), n)
        entered, left = self._events(f, inside)
        return ZoneState(dict(self.current), inside, entered, left)

    def _events(self, f: _Frame, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gone = self._tracks.expire(f.frame, self.max_age)  # inside and unseen too long: it has left
        if f.tracked is None:
            return _NO_IDS, gone
        sides = np.where(inside[f.tracked], 1, -1).astype(np.int8)
        points = f.anchors(self.zone.anchor)[f.tracked]
        rows, found = self._tracks.find(f.ids)
        before, _ = self._tracks.previous(rows, found, points)
        entered = f.ids[(sides > 0) & (before <= 0)]
        left = f.ids[(sides < 0) & (before > 0)]
        self._tracks.put(f.ids, sides, points, f.frame, rows, found)
        return entered, np.sort(np.concatenate([left, gone])) if len(gone) else left


class LineCounter:
    """Crossings in and out of one line per class, counted once per crossing of each track."""

    def __init__(self, line: Line, max_age: int = MAX_AGE) -> None:
        self.line = line
        self.max_age = max_age
        self.counts_in: ClassCounts = {}
        self.counts_out: ClassCounts = {}
        self._tracks = _TrackMemory()  # the last strict side of each track, and where it was on that side

    def update(self, det: Detections, frame: int) -> LineState:
        """Untracked detections (no track_ids) cannot cross anything: nothing is counted for them."""
        return self.count(_Frame(det, frame))

    def count(self, f: _Frame) -> LineState:
        self._tracks.expire(f.frame, self.max_age)
        if f.tracked is None or not len(f.tracked):
            return LineState(_NO_IDS, _NO_IDS, {}, {})
        now = f.anchors(self.line.anchor)[f.tracked]
        sides = self.line.sides(now)
        rows, found = self._tracks.find(f.ids)
        before, was_at = self._tracks.previous(rows, found, now)
        flipped = (before != 0) & (sides != 0) & (before != sides)
        # A side flip alone is not a crossing: the move must pass through the segment, not around its ends.
        crossed = flipped & self._through_segment(was_at, now)
        self._tracks.put(f.ids, sides, now, f.frame, rows, found)
        if not crossed.any():
            return LineState(_NO_IDS, _NO_IDS, {}, {})
        going_in, going_out = crossed & (sides > 0), crossed & (sides < 0)
        classes = f.det.classes[f.tracked]
        counts_in, counts_out = class_counts(classes[going_in]), class_counts(classes[going_out])
        _add(self.counts_in, counts_in)
        _add(self.counts_out, counts_out)
        return LineState(f.ids[going_in], f.ids[going_out], counts_in, counts_out)

    def _through_segment(self, before: np.ndarray, now: np.ndarray) -> np.ndarray:
        """[n] bool: the segment before->now meets a->b, given before and now lie on opposite sides of the line.

        Then they meet iff a and b are not strictly on one side of the move (touching an end of the line counts).
        """
        move = now - before
        (ax, ay), (bx, by) = self.line.a, self.line.b
        side_a = move[:, 0] * (ay - before[:, 1]) - move[:, 1] * (ax - before[:, 0])
        side_b = move[:, 0] * (by - before[:, 1]) - move[:, 1] * (bx - before[:, 0])
        result: np.ndarray = side_a * side_b <= 0
        return result


def _add(total: ClassCounts, counts: ClassCounts) -> None:
    for c, n in counts.items():
        total[c] = total.get(c, 0) + n


# ---------------------------------------------------------------- one source


@dataclass
class SourceGeometry:
    """The zones and lines of one source, updated frame by frame; `totals()` is the run summary's part."""

    zones: Sequence[Zone] = ()
    lines: Sequence[Line] = ()
    max_age: int = MAX_AGE
    _zone_counters: list[ZoneCounter] = field(init=False, repr=False)
    _line_counters: list[LineCounter] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for kind, names in (("zone", [z.name for z in self.zones]), ("line", [ln.name for ln in self.lines])):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # names key the per-frame results and the summary: a second one would hide the first
                raise BadInput(f"{kind} name {twice[0]!r} is used twice in one source")
        if self.max_age < 0:
            raise BadInput(f"max_age {self.max_age} is below the minimum 0")
        self._zone_counters = [ZoneCounter(z, self.max_age) for z in self.zones]
        self._line_counters = [LineCounter(ln, self.max_age) for ln in self.lines]

    def __bool__(self) -> bool:
        return bool(self._zone_counters or self._line_counters)

    def update(self, det: Detections, frame: int) -> GeometryState:
        """Count one frame. `frame` is the source's frame number (increasing; max_age is measured in it)."""
        f = _Frame(det, frame)  # anchors and track ids worked out once for all zones and lines
        zones = {c.zone.name: c.count(f) for c in self._zone_counters}
        lines = {c.line.name: c.count(f) for c in self._line_counters}
        return GeometryState(frame, zones, lines)

    def totals(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """{"zones": {name: {"current": {class: n}, "max": {class: n}}}, "lines": {name: {"in": ..., "out": ...}}}."""
        names = names or {}
        return {
            "zones": {c.zone.name: {"current": _named(c.current, names), "max": _named(c.max, names)}
                      for c in self._zone_counters},
            "lines": {c.line.name: {"in": _named(c.counts_in, names), "out": _named(c.counts_out, names)}
                      for c in self._line_counters},
        }
