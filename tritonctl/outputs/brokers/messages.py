"""The messages (docs/events.md is the contract, outputs/events_schema.json its schema), each with "schema":
"tritonctl.events/1": one `frame` message per inferred frame, and, when the detections carry track ids, Frigate-style
`object` events (new / update / end) per tracked object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonctl.inference.client import ModelInfo
    from tritonctl.vision.detections import Detections
    from tritonctl.vision.frames import Result

SCHEMA = "tritonctl.events/1"
SCHEMA_FILE = Path(__file__).parent.parent / "events_schema.json"


def frame_message(result: Result, info: ModelInfo, name: str, uri: str, model_version: str | None) -> dict[str, Any]:
    """The `frame` message: every inferred frame, detections in the JSON Lines form (track ids when tracked)."""
    frame = result.frame
    msg: dict[str, Any] = {"schema": SCHEMA, "kind": "frame", "source": frame.source, "name": name, "uri": uri,
                           "frame": frame.index, "pts": round(frame.timestamp, 4), "model": info.name}
    if model_version is not None:
        msg["model_version"] = model_version
    msg["detections"] = result.detections.to_json(info.names)
    return msg


@dataclass
class _Track:
    track_id: int
    class_id: int
    first_frame: int
    last_frame: int
    box: list[float]
    score: float
    zones: tuple[str, ...]
    reported: int  # the frame of its last new/update event


class ObjectEvents:
    """Frigate-style object events from tracked detections, state per source, bounded.

    `new` when a track id is first seen; `update` while it is seen, at most every `update_every` frames, or at once
    when the zones it is in change; `end` once it has not been seen for `lost_frames` frames of its source (frame
    numbers, so --vid-stride and dropped live frames count as time passing) and, for every track left, at finish().
    A source keeps at most `max_tracks` open: beyond that its longest-unseen track ends early."""

    def __init__(self, update_every: int = 30, lost_frames: int = 30, max_tracks: int = 1000) -> None:
        self.update_every, self.lost_frames, self.max_tracks = update_every, lost_frames, max_tracks
        self.tracks: dict[int, dict[int, _Track]] = {}  # source -> track id -> track
        self.last_frame: dict[int, int] = {}  # source -> the last frame seen

    def observe(self, source: int, frame: int, det: Detections, names: dict[int, str],
                zones: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
        """The events of one frame of one source: new/update for the tracks in it, end for the ones lost."""
        if det.track_ids is None:
            return []
        tracks = self.tracks.setdefault(source, {})
        self.last_frame[source] = frame
        boxes = det.boxes.tolist()
        out = []
        for i, (tid, cls, score) in enumerate(zip(det.track_ids.tolist(), det.classes.tolist(), det.scores.tolist(),
                                                  strict=True)):
            box = [round(v, 2) for v in boxes[i]]
            inside = tuple(sorted(zones[i])) if zones is not None else ()
            out += self._seen(source, tracks, frame, tid, cls, box, round(score, 4), inside, names)
        out += self._expire(source, tracks, frame, names)
        return out

    def _seen(self, source: int, tracks: dict[int, _Track], frame: int, tid: int, cls: int, box: list[float],
              score: float, zones: tuple[str, ...], names: dict[int, str]) -> list[dict[str, Any]]:
        track = tracks.get(tid)
        if track is None:
            tracks[tid] = _Track(tid, cls, frame, frame, box, score, zones, frame)
            return [self._event("new", source, tracks[tid], frame, names)]
        moved_zone = zones != track.zones
        track.class_id, track.last_frame, track.box, track.score, track.zones = cls, frame, box, score, zones
        if moved_zone or frame - track.reported >= self.update_every:
            track.reported = frame
            return [self._event("update", source, track, frame, names)]
        return []

    def _expire(self, source: int, tracks: dict[int, _Track], frame: int, names: dict[int, str]) -> list[dict[str, Any]]:
        gone = [t for t in tracks.values() if frame - t.last_frame >= self.lost_frames]
        if len(tracks) - len(gone) > self.max_tracks:  # bounded: the longest unseen go first
            alive = sorted((t for t in tracks.values() if t not in gone), key=lambda t: t.last_frame)
            gone += alive[:len(tracks) - len(gone) - self.max_tracks]
        for t in gone:
            del tracks[t.track_id]
        return [self._event("end", source, t, frame, names) for t in gone]

    def finish(self, names: dict[int, str]) -> list[dict[str, Any]]:
        """`end` for every track still open (the run is over)."""
        out = []
        for source, tracks in self.tracks.items():
            out += [self._event("end", source, t, self.last_frame[source], names) for t in tracks.values()]
            tracks.clear()
        return out

    @staticmethod
    def _event(event: str, source: int, t: _Track, frame: int, names: dict[int, str]) -> dict[str, Any]:
        x1, y1, x2, y2 = t.box
        return {"schema": SCHEMA, "kind": "object", "event": event, "source": source, "frame": frame,
                "track_id": t.track_id, "class_id": t.class_id, "class": names.get(t.class_id, str(t.class_id)),
                "first_frame": t.first_frame, "last_frame": t.last_frame,
                "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "score": t.score, "zones": list(t.zones)}
