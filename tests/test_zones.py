"""Zones and counting lines (tritonctl.stream.zones): exact counts against the synthetic video's ground truth, and edge cases.

The ground truth of `video_frames` lists each frame's boxes in a fixed order, so index = identity: those boxes,
tracked by index, are what a perfect tracker would hand the counters. The expected counts are computed here from the
anchor paths directly (side changes of a coordinate), not with the module's geometry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from tritonctl.core.errors import BadInput
from tritonctl.stream.zones import (
    Anchor,
    GeometryState,
    Line,
    LineCounter,
    SourceGeometry,
    Zone,
    ZoneCounter,
    anchor_points,
    points_in_polygon,
)
from tritonctl.vision.detections import Detections
from tritonctl.vision.synthetic import video_frames

W, H = 640, 360


@pytest.fixture(scope="module")
def truth() -> list[Detections]:
    frames = []
    for _, boxes in video_frames(300, W, H, seed=7):
        assert len(boxes) == 3  # shapes bounce inside the frame: none is ever dropped, so index = identity holds
        frames.append(Detections(np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32),
                                 np.ones(3, np.float32), np.array([b.cls for b in boxes], np.int64), np.arange(3)))
    return frames


def anchor_path(frames: list[Detections], anchor: Anchor) -> tuple[np.ndarray, np.ndarray]:
    """[frames, objects] x and y of each object's anchor, straight from the boxes."""
    boxes = np.stack([f.boxes for f in frames]).astype(np.float64)
    x = (boxes[..., 0] + boxes[..., 2]) / 2
    y = boxes[..., 3] if anchor == "bottom_center" else (boxes[..., 1] + boxes[..., 3]) / 2
    return x, y


def expected_crossings(coord: np.ndarray, at: float, classes: np.ndarray) -> tuple[Counter[int], Counter[int]]:
    """(in, out) per class: sign changes of coord - at per object, up (- to +) being "in"; on the line is no side."""
    ins: Counter[int] = Counter()
    outs: Counter[int] = Counter()
    for obj in range(coord.shape[1]):
        sides = np.sign(coord[:, obj] - at)
        sides = sides[sides != 0]
        ins[int(classes[obj])] += int(np.sum((sides[:-1] < 0) & (sides[1:] > 0)))
        outs[int(classes[obj])] += int(np.sum((sides[:-1] > 0) & (sides[1:] < 0)))
    return +ins, +outs  # unary + drops the zero counts, as the counters report


def run(geometry: SourceGeometry, frames: list[Detections]) -> list[GeometryState]:
    return [geometry.update(det, i) for i, det in enumerate(frames)]


# ---------------------------------------------------------------- against the synthetic ground truth


@pytest.mark.parametrize("anchor", ["bottom_center", "center"])
def test_line_crossings_equal_ground_truth(truth: list[Detections], anchor: Anchor) -> None:
    classes = truth[0].classes
    xs, ys = range(40, W, 40), range(40, H, 40)
    # Vertical lines drawn bottom to top: right of a->b is +x, so "in" is moving right. Horizontal lines drawn left to
    # right: right of a->b is down the image, so "in" is moving down. Both span the frame, so every side change of the
    # anchor passes through the segment.
    lines = [Line(f"x{x}", (x, H), (x, 0), anchor) for x in xs] + [Line(f"y{y}", (0, y), (W, y), anchor) for y in ys]
    geometry = SourceGeometry(lines=lines)
    run(geometry, truth)
    totals = geometry.totals()["lines"]
    x, y = anchor_path(truth, anchor)
    seen = 0
    for name, coord, at in [(f"x{v}", x, v) for v in xs] + [(f"y{v}", y, v) for v in ys]:
        ins, outs = expected_crossings(coord, at, classes)
        assert totals[name] == {"in": {str(c): n for c, n in sorted(ins.items())},
                                "out": {str(c): n for c, n in sorted(outs.items())}}, name
        seen += sum(ins.values()) + sum(outs.values())
    assert totals["x320"] == {"in": {}, "out": {}}  # nothing crosses the middle of this video: hence the sweep
    assert seen >= 10 and any(t["in"] for t in totals.values()) and any(t["out"] for t in totals.values())


def test_zone_occupancy_equals_ground_truth(truth: list[Detections]) -> None:
    classes = truth[0].classes
    left_half = Zone("left", ((0, 0), (W / 2, 0), (W / 2, H), (0, H)))
    bands = [Zone(f"band{x}", ((0, 0), (x, 0), (x, H), (0, H))) for x in range(40, W, 40)]
    # Concave: the frame with a notch cut from the top middle (a U); inclusive of its border.
    u = Zone("u", ((0, 0), (200, 0), (200, 240), (440, 240), (440, 0), (W, 0), (W, H), (0, H)))
    geometry = SourceGeometry(zones=[left_half, *bands, u])
    states = run(geometry, truth)
    x, y = anchor_path(truth, "bottom_center")
    assert (y <= H).all() and (y >= 0).all()
    expected = {"left": x <= W / 2, "u": ~((x > 200) & (x < 440) & (y < 240))}
    expected |= {f"band{v}": x <= v for v in range(40, W, 40)}
    changing = 0
    for name, inside in expected.items():
        for state, want in zip(states, inside, strict=True):
            assert (state.zones[name].inside == want).all(), name
            assert state.zones[name].counts == dict(Counter(classes[want].tolist())), name
        # Enter/leave events: each object's inside-ness turning on (or on at its first frame) and off.
        turns = np.diff(np.vstack([np.zeros((1, 3), bool), inside]).astype(np.int8), axis=0)
        assert [s.zones[name].entered.tolist() for s in states] == [np.flatnonzero(t > 0).tolist() for t in turns]
        assert [s.zones[name].left.tolist() for s in states] == [np.flatnonzero(t < 0).tolist() for t in turns]
        changing += int((turns[1:] != 0).sum())
        most = {str(c): max(int(np.sum(row[classes == c])) for row in inside) for c in set(classes.tolist())}
        assert geometry.totals()["zones"][name]["max"] == {c: n for c, n in sorted(most.items()) if n}
    assert changing >= 5  # objects do move in and out of some zones in this video
    assert [s.zones["left"].counts for s in states[:1]] == [{0: 1, 1: 1}]


# ---------------------------------------------------------------- lines: edge cases


def tracked(points: Sequence[tuple[float, float]], ids: list[int], classes: list[int] | None = None) -> Detections:
    """Boxes whose bottom centre is each point (10 px wide, 20 tall)."""
    p = np.asarray(points, np.float32).reshape(-1, 2)
    boxes = np.stack([p[:, 0] - 5, p[:, 1] - 20, p[:, 0] + 5, p[:, 1]], 1)
    cls = classes if classes is not None else [0] * len(ids)
    return Detections(boxes, np.ones(len(ids), np.float32), np.asarray(cls, np.int64), np.asarray(ids, np.int64))


def path(counter: LineCounter, xs: list[float | None], y: float = 100, start: int = 0) -> list[tuple[int, int]]:
    """Moves track 7 along x (None: not seen that frame); returns (in, out) per frame."""
    out = []
    for frame, x in enumerate(xs, start):
        det = tracked([(x, y)], [7]) if x is not None else Detections.empty()
        state = counter.update(det, frame)
        out.append((len(state.crossed_in), len(state.crossed_out)))
    return out


def vertical(max_age: int = 30) -> LineCounter:
    return LineCounter(Line("v", (100, 200), (100, 0)), max_age)  # drawn upwards: "in" is moving right


def test_crossing_direction_and_once_per_crossing() -> None:
    c = vertical()
    assert path(c, [80, 90, 110, 120, 130]) == [(0, 0), (0, 0), (1, 0), (0, 0), (0, 0)]
    assert path(c, [90], start=5) == [(0, 1)]
    assert (c.counts_in, c.counts_out) == ({0: 1}, {0: 1})
    # Horizontal, drawn left to right: moving down the image is "in".
    h = LineCounter(Line("h", (0, 50), (200, 50)))
    assert [len(h.update(tracked([(100, y)], [1]), f).crossed_in) for f, y in enumerate([40, 60])] == [0, 1]


def test_touching_the_line_and_going_back_is_no_crossing() -> None:
    c = vertical()
    assert path(c, [90, 100, 100, 90, 100, 95]) == [(0, 0)] * 6
    assert (c.counts_in, c.counts_out) == ({}, {})


def test_resting_on_the_line_then_crossing_counts_once() -> None:
    # Exactly on the line is no side: the last strict side is kept, so 90 -> 100 -> 100 -> 110 -> 100 -> 110 is one "in".
    c = vertical()
    assert path(c, [90, 100, 100, 110, 100, 110, 100, 110]) == [(0, 0)] * 3 + [(1, 0)] + [(0, 0)] * 4
    assert c.counts_in == {0: 1} and c.counts_out == {}


def test_resting_on_a_line_between_pixels() -> None:
    # float32 boxes cannot hold 100.3 exactly: the rounding is within the on-the-line tolerance, so no side flips.
    c = LineCounter(Line("v", (100.3, 200), (100.3, 0)))
    assert [c.line.sides(np.array([[x, 50.0]]))[0] for x in (100.2, 100.3, 100.4)] == [-1, 0, 1]
    for frame, x in enumerate([90, 100.3, 100.3, 90, 100.3, 100.3, 100.3]):
        det = tracked([(x, 100)], [7])
        assert c.line.sides(anchor_points(det.boxes, "bottom_center"))[0] == (0 if x > 100 else -1)
        c.update(det, frame)
    assert (c.counts_in, c.counts_out) == ({}, {})


def test_jitter_across_the_line_balances() -> None:
    # Real side changes are real crossings: a box jittering across the line counts each, and in and out balance.
    c = vertical()
    path(c, [99.5, 100.5, 99.5, 100.5, 99.5])
    assert c.counts_in == c.counts_out == {0: 2}


def test_track_that_disappears_and_reappears() -> None:
    c = vertical(max_age=10)
    assert path(c, [90, None, None, None, 110]) == [(0, 0)] * 4 + [(1, 0)]  # within max_age: the gap is crossed
    c = vertical(max_age=10)
    assert path(c, [90, *[None] * 11, 110]) == [(0, 0)] * 13  # memory dropped after 10 frames: a new start
    assert len(c._tracks) == 1  # and the memory stays bounded: only the track just seen is held


def test_passing_around_the_end_of_the_line_is_no_crossing() -> None:
    c = vertical()
    assert path(c, [90, 110], y=250) == [(0, 0)] * 2  # below the segment: the side flips, the line is not crossed
    assert path(c, [90], y=150, start=2) == [(0, 1)]  # back through it: one "out" (it was on the right side)


def test_several_classes_and_tracks_at_once() -> None:
    c = vertical()
    c.update(tracked([(90, 10), (90, 20), (110, 30), (90, 40)], [1, 2, 3, 4], [0, 2, 2, 5]), 0)
    state = c.update(tracked([(110, 10), (110, 20), (90, 30), (95, 40)], [1, 2, 3, 4], [0, 2, 2, 5]), 1)
    assert state.crossed_in.tolist() == [1, 2] and state.crossed_out.tolist() == [3]
    assert (state.counts_in, state.counts_out) == ({0: 1, 2: 1}, {2: 1})
    assert (c.counts_in, c.counts_out) == ({0: 1, 2: 1}, {2: 1})


def test_a_repeated_track_id_counts_once() -> None:
    c = vertical()
    c.update(tracked([(90, 10), (90, 20)], [1, 1]), 0)
    assert c.update(tracked([(110, 10), (110, 20)], [1, 1]), 1).crossed_in.tolist() == [1]


def test_no_track_ids_zones_count_lines_do_not() -> None:
    # Without ids a box has no previous position: zone occupancy works, crossings and enter/leave events need a tracker.
    g = SourceGeometry(zones=[Zone("z", ((0, 0), (100, 0), (100, 200), (0, 200)))], lines=[Line("v", (100, 200), (100, 0))])
    for frame, x in enumerate([90, 110, 90]):
        det = tracked([(x, 100), (50, 100)], [0, 1])
        det.track_ids = None
        state = g.update(det, frame)
        assert state.lines["v"].crossed_in.size == state.lines["v"].crossed_out.size == 0
        assert state.zones["z"].entered.size == state.zones["z"].left.size == 0
        assert state.zones["z"].counts == {0: 2 if x < 100 else 1}
    assert g.totals() == {"zones": {"z": {"current": {"0": 2}, "max": {"0": 2}}}, "lines": {"v": {"in": {}, "out": {}}}}


# ---------------------------------------------------------------- zones: edge cases


def test_concave_polygon_and_border() -> None:
    u = np.array([(0, 0), (10, 0), (10, 10), (7, 10), (7, 3), (3, 3), (3, 10), (0, 10)], np.float64)
    points = np.array([(1, 5), (5, 5), (9, 9), (5, 2), (5, 3), (0, 0), (10, 10), (7, 7), (11, 5), (3, 10.5), (5, 10)])
    assert points_in_polygon(points, u).tolist() == [True, False, True, True, True, True, True, True, False, False, False]
    # Inside the arms and the base, not in the notch nor its open mouth; vertices and edges (the notch's floor) are in.
    assert points_in_polygon(np.zeros((0, 2)), u).shape == (0,)


def test_anchor_choice() -> None:
    zone_feet = Zone("f", ((0, 50), (100, 50), (100, 100), (0, 100)))  # bottom_center by default
    zone_centre = Zone("c", zone_feet.polygon, "center")
    det = tracked([(50, 60)], [1])  # box from y=40 to y=60: feet inside, centre (y=50) on the border, inside
    det2 = tracked([(50, 55)], [1])  # centre at y=45: outside, feet inside
    assert ZoneCounter(zone_feet).update(det2, 0).counts == {0: 1}
    assert ZoneCounter(zone_centre).update(det2, 0).counts == {}
    assert ZoneCounter(zone_centre).update(det, 0).counts == {0: 1}


def test_zone_events_and_totals() -> None:
    z = ZoneCounter(Zone("z", ((0, 0), (100, 0), (100, 100), (0, 100))), max_age=5)
    states = [z.update(tracked(p, ids, cls), f) for f, (p, ids, cls) in enumerate([
        ([(50, 50), (150, 50)], [1, 2], [0, 1]),  # 1 inside (entered on its first sighting), 2 outside
        ([(50, 50), (90, 50)], [1, 2], [0, 1]),  # 2 enters
        ([(90, 50)], [2], [1]),  # 1 unseen: not left yet
        ([(50, 50), (150, 50)], [1, 2], [0, 1]),  # 1 back inside (no new entry), 2 leaves
    ])]
    assert [s.entered.tolist() for s in states] == [[1], [2], [], []]
    assert [s.left.tolist() for s in states] == [[], [], [], [2]]
    assert [s.counts for s in states] == [{0: 1}, {0: 1, 1: 1}, {1: 1}, {0: 1}]
    assert (z.current, z.max) == ({0: 1}, {0: 1, 1: 1})
    gone = z.update(Detections.empty(), 10)  # 1 unseen for more than max_age while inside: it has left
    assert gone.left.tolist() == [1] and gone.counts == {}


def test_geometry_state_json_and_names() -> None:
    g = SourceGeometry(zones=[Zone("z", ((0, 0), (100, 0), (100, 100), (0, 100)))], lines=[Line("v", (50, 200), (50, 0))])
    g.update(tracked([(40, 90)], [3], [1]), 0)
    state = g.update(tracked([(60, 90)], [3], [1]), 1)
    assert state.to_json({1: "square"}) == {
        "zones": {"z": {"count": {"square": 1}, "entered": [], "left": []}},
        "lines": {"v": {"in": {"square": 1}, "out": {}, "in_ids": [3], "out_ids": []}}}
    assert state.zones_of(0) == ["z"]
    assert g.totals({1: "square"}) == {"zones": {"z": {"current": {"square": 1}, "max": {"square": 1}}},
                                       "lines": {"v": {"in": {"square": 1}, "out": {}}}}
    assert not SourceGeometry() and g


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Zone("z", ((0, 0), (1, 1))), "zone 'z': a polygon needs at least 3 points, not 2"),
    (lambda: Zone("z", ((0, 0), (1, 1), (2, 2))), "zone 'z': the polygon has no area (its points lie on one line)"),
    (lambda: Zone("z", ((0, 0), (1, 0), (0, float("nan")))), "zone 'z': [0, nan] is not a finite point"),
    (lambda: Zone("z", ((0, 0), (1, 0), (0, 1)), "feet"), "zone 'z': anchor 'feet' is not one of bottom_center, center"),  # type: ignore[arg-type]
    (lambda: Line("l", (1, 2), (1, 2)), "line 'l': the line's two points are the same point"),
])
def test_bad_geometry_is_one_line(make: object, message: str) -> None:
    with pytest.raises(BadInput) as info:
        make()  # type: ignore[operator]
    assert str(info.value) == message


def test_source_geometry_refuses_twice_named() -> None:
    z = Zone("z", ((0, 0), (1, 0), (0, 1)))
    with pytest.raises(BadInput, match="zone name 'z' is used twice in one source"):
        SourceGeometry(zones=[z, z])
    assert SourceGeometry(zones=[z], lines=[Line("z", (0, 0), (1, 1))])  # a zone and a line may share a name


def test_geometry_is_hashable_and_normalised() -> None:
    a = Zone("z", [[0, 0], [1, 0], [0, 1]])  # type: ignore[arg-type]  # lists and ints, as from YAML
    assert a == Zone("z", ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))) and hash(a) == hash(Zone("z", ((0, 0), (1, 0), (0, 1))))
    assert Line("l", (0, 0), (1, 0)).b == (1.0, 0.0)
