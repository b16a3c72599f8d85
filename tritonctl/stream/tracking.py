"""Multi-object tracking: `Detections` in, the same `Detections` with `track_ids` out, one `Tracker` per source.

The algorithms are Roboflow's `trackers` (Apache-2.0): ByteTrack, OC-SORT and BoT-SORT. Ultralytics' and BoxMOT's
trackers would do the same job but are AGPL. `trackers` 2.x declares numpy>=2, which this project cannot take
(nvidia-pytriton pins numpy<2); it is installed with --no-deps, and it and its `supervision` run unchanged on numpy 1.26
(tests/test_tracking.py scores all three). Its import is inside `make_tracker`, so nothing pays for it (about 0.5 s,
mostly `supervision`) unless `--track` is given.

Contract of `Tracker.update`:
- Association is class-agnostic (as in the ByteTrack paper and Ultralytics): a shape the model calls a square in one
  frame and a triangle in the next keeps its id. Each returned detection keeps this frame's class and score.
- Only detections that belong to a confirmed track are returned (by default). A new object gets its id on the
  frame its track is confirmed (after the library's `minimum_consecutive_frames` detections, 2 for ByteTrack; BoT-SORT
  confirms the tracks of a tracker's very first frame at once). Unconfirmed boxes are mostly
  one-frame false positives, and an id of -1 in the JSON Lines or on the video would only be noise.
  `keep_unconfirmed=True` returns them too, with track id -1 (for a caller that must not lose a box).
- A second box on an object already matched (per-class NMS keeps one box per class, and the demo model's boxes
  for an ambiguous shape come in such pairs) matches no track, starts none when its score is low, and is not
  returned: tracking also cleans those duplicates from the output.
- Returned rows keep the input order (the library reorders them; we put them back).
- Ids are 1-based (MOT convention; 0 is never an id) and never reused within a Tracker's life (until `reset`).
- A detection matched to a track that already has an id always carries it (OC-SORT's own output would hide it
  again after each miss; see `_keep_confirmed_ids`).
- Memory is bounded: the library drops a track LOST_TRACK_BUFFER frames at 30 fps (one second, whatever the fps)
  after its last detection, and `ended()` hands over and forgets the spans of tracks that are gone.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from tritonctl.core.errors import BadInput, ToolMissing
from tritonctl.vision.detections import Detections
from tritonctl.vision.frames import TrackSpan

TRACKERS: tuple[str, ...] = ("bytetrack", "ocsort", "botsort")

# How long (in frames at 30 fps; the library rescales it by the real fps) a lost track may be re-found before its id
# is retired. One second, the library's and ByteTrack's default: long enough to bridge a missed detection or a short
# occlusion, short enough that a stale track does not grab a newcomer.
LOST_TRACK_BUFFER = 30
MAX_PENDING_ENDED = 10_000


class Tracker:
    """One source's tracker state. Not thread-safe; create one per source with `make_tracker`."""

    def __init__(self, name: str, impl: Any, keep_unconfirmed: bool = False) -> None:
        self.name = name
        self.keep_unconfirmed = keep_unconfirmed
        self._impl = impl
        self._frame = -1  # index of the last frame updated
        self._at = -1  # the number spans record for it (the source's frame number when the caller gives it)
        self._spans: dict[int, list[int]] = {}  # live confirmed id -> [first frame, last frame returned]
        # Spans wait here for `ended()`. A caller that never asks (tracking for the JSON Lines only) must not grow
        # memory with every track a long stream ends: the oldest are dropped past this many.
        self._ended: deque[TrackSpan] = deque(maxlen=MAX_PENDING_ENDED)

    @property
    def frame(self) -> int:
        """0-based index of the last frame passed to `update` (-1 before the first)."""
        return self._frame

    def update(self, det: Detections, timestamp: float | None = None, frame: int | None = None) -> Detections:
        """Associate one frame's detections (source pixels, xyxy) with the tracks; returns them with `track_ids`.

        `timestamp` (seconds, e.g. the frame's pts): with it, a gap between frames (a dropped frame from a live camera)
        advances the motion model by the real time elapsed; without it each call is one frame at the fps given.
        `frame`: the frame's number in its source, which the spans of `ended()` then use (default: update count)."""
        import supervision as sv

        self._frame += 1
        self._at = self._frame if frame is None else frame
        n = len(det)
        # The row index rides along in `data`, which the library's indexing keeps: it is how the input order and the
        # rows that are returned are recovered, whatever the library does with the order.
        sv_det = sv.Detections(
            xyxy=det.boxes.astype(np.float32, copy=False).reshape(n, 4),
            confidence=det.scores.astype(np.float32, copy=False),
            class_id=det.classes,
            data={"row": np.arange(n)},
        )
        out = self._impl.update(sv_det, timestamp=timestamp)
        ids = np.full(n, -1, np.int64)
        if len(out):
            tid = np.asarray(out.tracker_id, np.int64)
            ids[np.asarray(out.data["row"], np.int64)] = np.where(tid >= 0, tid + 1, -1)
        if self.name == "ocsort" and (ids < 0).any():
            self._keep_confirmed_ids(ids, sv_det.xyxy)
        self._note_spans(ids)
        keep = np.arange(n) if self.keep_unconfirmed else np.flatnonzero(ids > 0)
        result = det.select(keep)
        result.track_ids = ids[keep]
        return result

    def ended(self) -> list[TrackSpan]:
        """Tracks that ended since the last call (the library retired them), with their first and last frame; each is
        reported once and then forgotten."""
        out = list(self._ended)
        self._ended.clear()
        return out

    def finish(self) -> list[TrackSpan]:
        """End of the source: every track still alive ends now. Returns `ended()` plus those."""
        for tid, (first, last) in self._spans.items():
            self._ended.append(TrackSpan(tid, first, last))
        self._spans.clear()
        return self.ended()

    def reset(self) -> None:
        """Forget every track (a new video, a camera that reconnected to a different scene); ids restart at 1."""
        self._impl.reset()
        self._frame = -1
        self._spans.clear()
        self._ended.clear()

    def _keep_confirmed_ids(self, ids: np.ndarray, boxes: np.ndarray) -> None:
        """A box matched to a track that already has an id gets that id, even where the library says -1.

        OC-SORT (as in its paper, whose `min_hits` suits benchmark scoring) hides a confirmed track again after a
        single missed frame, until it has `minimum_consecutive_frames` hits in a row: on the demo model's detections that
        blanked 15-25% of the boxes of objects it had been tracking all along (ByteTrack and BoT-SORT keep a
        confirmed id through a miss). A track updated this frame holds the very box it was matched to
        (`last_observation`), which is how its row is found."""
        for t in self._impl.tracks:
            box = getattr(t, "last_observation", None)
            if t.tracker_id < 0 or getattr(t, "time_since_update", 1) != 0 or box is None:
                continue
            rows = np.flatnonzero((ids < 0) & (boxes == np.asarray(box, boxes.dtype)).all(1))
            if len(rows) == 1:
                ids[rows[0]] = t.tracker_id + 1

    def _note_spans(self, ids: np.ndarray) -> None:
        for tid in ids[ids > 0].tolist():
            span = self._spans.get(tid)
            if span is None:
                self._spans[tid] = [self._at, self._at]
            else:
                span[1] = self._at
        # An id the library no longer holds can never come back: its span is final.
        alive = {t.tracker_id + 1 for t in self._impl.tracks if t.tracker_id >= 0}
        for tid in [t for t in self._spans if t not in alive]:
            first, last = self._spans.pop(tid)
            self._ended.append(TrackSpan(tid, first, last))


def make_tracker(name: str, fps: float, keep_unconfirmed: bool = False) -> Tracker:
    """A fresh tracker of algorithm `name` (one of TRACKERS) for a source of `fps` frames per second."""
    if name not in TRACKERS:
        raise BadInput(f"--track {name}: unknown tracker, choose one of {', '.join(TRACKERS)}")
    if not fps > 0:
        raise BadInput(f"--track {name}: the source's frame rate must be positive, got {fps:g}")
    try:
        import trackers
    except ImportError as e:  # the setup installs it with --no-deps; a partial install fails here, not mid-video
        raise ToolMissing(f"--track needs the `trackers` package ({e}): run `make setup`") from e
    impl: Any
    if name == "bytetrack":
        # Scores: the library's defaults (activation 0.7, high 0.6) assume a COCO detector; our detect default conf
        # is 0.25, and a box between 0.25 and 0.5 still revives a lost track in ByteTrack's second stage.
        impl = trackers.ByteTrackTracker(lost_track_buffer=LOST_TRACK_BUFFER, frame_rate=fps,
                                         track_activation_threshold=0.5, high_conf_det_threshold=0.5)
    elif name == "ocsort":
        impl = trackers.OCSORTTracker(lost_track_buffer=LOST_TRACK_BUFFER, frame_rate=fps, high_conf_det_threshold=0.5)
    else:
        # Camera-motion compensation off: it needs the pixels (optical flow per frame, several ms at 1080p) and the
        # sources this tool reads are fixed cameras and files. BoT-SORT here is its association rules without ReID.
        impl = trackers.BoTSORTTracker(lost_track_buffer=LOST_TRACK_BUFFER, frame_rate=fps, enable_cmc=False,
                                       track_activation_threshold=0.5, high_conf_det_threshold=0.5)
    return Tracker(name, impl, keep_unconfirmed)
