"""`Detections`: one image's boxes, scores and classes (and, once tracked, track ids), as parallel numpy arrays.

Every stage speaks it: postprocess makes it, the letterbox maps it back to the source frame, the sinks draw, write
and publish it, parity and val score it. Arrays, not rows read by index: `det.scores`, never `det[:, 4]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    boxes: np.ndarray  # [n, 4] float32, x1 y1 x2 y2 (model canvas from postprocess; source pixels after to_source)
    scores: np.ndarray  # [n] float32
    classes: np.ndarray  # [n] int64
    track_ids: np.ndarray | None = None  # [n] int64 once a tracker has run

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
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep], ids)

    def to_json(self, names: dict[int, str]) -> list[dict[str, object]]:
        """The JSON Lines form: pixels rounded to 0.01, scores to 1e-4, class id and name (and track id)."""
        boxes = np.round(self.boxes.astype(np.float64), 2).tolist()
        scores = np.round(self.scores.astype(np.float64), 4).tolist()
        classes = self.classes.tolist()
        out: list[dict[str, object]] = [
            {"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "score": s, "class_id": c, "class": names.get(c, str(c))}
            for b, s, c in zip(boxes, scores, classes, strict=True)]
        if self.track_ids is not None:
            for row, tid in zip(out, self.track_ids.tolist(), strict=True):
                row["track_id"] = tid
        return out
