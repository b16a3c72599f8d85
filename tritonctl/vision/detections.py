"""`Detections`: one image's boxes, scores and classes (and, once tracked, track ids), as parallel numpy arrays.

Every stage speaks it: postprocess makes it, the letterbox maps it back to the source frame, the sinks draw, write
and publish it, parity and val score it. Arrays, not rows read by index: `det.scores`, never `det[:, 4]`.

`data` holds any further per-detection arrays (an embedding, an attribute), one row per detection, as supervision's
`Detections.data`: selection keeps their rows and the JSON form writes them, so a stage can add one without editing
the consumers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

JSON_FIELDS = ("x1", "y1", "x2", "y2", "score", "class_id", "class", "track_id")


@dataclass
class Detections:
    boxes: np.ndarray  # [n, 4] float32, x1 y1 x2 y2 (model canvas from postprocess; source pixels after to_source)
    scores: np.ndarray  # [n] float32
    classes: np.ndarray  # [n] int64
    track_ids: np.ndarray | None = None  # [n] int64 once a tracker has run
    data: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [n, ...] per-detection extras (see add)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> Detections:
        """From [n, 6] rows (x1, y1, x2, y2, score, class), the layout of NMS-exported heads."""
        rows = np.asarray(rows, np.float32).reshape(-1, 6)
        return cls(np.ascontiguousarray(rows[:, :4]), rows[:, 4].copy(), rows[:, 5].astype(np.int64))

    def rows(self) -> np.ndarray:
        """[n, 6] float32 rows (x1, y1, x2, y2, score, class): what the COCO-style metrics take."""
        return np.concatenate([self.boxes, self.scores[:, None], self.classes[:, None].astype(np.float32)], 1)

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep: np.ndarray) -> Detections:
        """The detections a boolean mask or index array keeps."""
        ids = None if self.track_ids is None else self.track_ids[keep]
        data = {k: v[keep] for k, v in self.data.items()}
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep], ids, data)

    def add(self, name: str, values: np.ndarray) -> None:
        """A per-detection array rides along under `name`: one row per detection ([n] or [n, k]). The names of the
        JSON fields are taken (a data array would hide one)."""
        values = np.asarray(values)
        if name in JSON_FIELDS:
            raise ValueError(f"detection data {name!r}: the name is a field of every detection's JSON")
        if values.ndim == 0:
            raise ValueError(f"detection data {name!r}: a scalar, not a row per detection")
        if len(values) != len(self):
            raise ValueError(f"detection data {name!r}: {len(values)} rows for {len(self)} detections")
        self.data[name] = values

    def to_json(self, names: dict[int, str]) -> list[dict[str, object]]:
        """The JSON Lines form: pixels rounded to 0.01, scores to 1e-4, class id and name (and track id); then each
        `data` array, a value per detection for [n] arrays, a list for [n, k] ones."""
        boxes = np.round(self.boxes.astype(np.float64), 2).tolist()
        scores = np.round(self.scores.astype(np.float64), 4).tolist()
        classes = self.classes.tolist()
        out: list[dict[str, object]] = [
            {"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "score": s, "class_id": c, "class": names.get(c, str(c))}
            for b, s, c in zip(boxes, scores, classes, strict=True)]
        if self.track_ids is not None:
            for row, tid in zip(out, self.track_ids.tolist(), strict=True):
                row["track_id"] = tid
        for name, values in self.data.items():
            for row, value in zip(out, values.tolist(), strict=True):
                row[name] = value
        return out
