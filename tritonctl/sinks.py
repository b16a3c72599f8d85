"""Where detections go: an annotated video per source, JSON Lines, a window. Each file is written under a temporary
name and moved into place when the run ends (normally, on Ctrl-C or on an error), so a finished name is never partial.

JSON Lines schema (one line per inferred frame, in order):
  {"source": 0, "uri": "video.mp4", "frame": 12, "timestamp": 0.4,
   "detections": [{"x1": 10.5, "y1": 20.0, "x2": 110.0, "y2": 220.0, "score": 0.91, "class_id": 2, "class": "triangle"}]}
Coordinates are pixels of the source frame; timestamp is seconds into the file, or since the start for live sources.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from tritonctl.video import SourceSpec

_PALETTE = np.array([[56, 56, 255], [151, 157, 255], [31, 112, 255], [29, 178, 255], [49, 210, 207], [10, 249, 72],
                     [23, 204, 146], [134, 219, 61], [52, 147, 26], [187, 212, 0], [168, 153, 44], [255, 194, 0]])


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def class_name(names: dict[int, str], cls: int) -> str:
    return names.get(cls, str(cls))


class JsonlSink:
    def __init__(self, path: Path, sources: list[SourceSpec]) -> None:
        self.path, self.tmp = path, _partial(path)
        self.uris = {s.id: s.uri for s in sources}
        self.file: IO[str] = open(self.tmp, "w")  # noqa: SIM115 - closed in close(), also on Ctrl-C

    def write(self, result: Any, info: Any) -> None:
        det = result.detections
        rows = [{"x1": round(float(d[0]), 2), "y1": round(float(d[1]), 2), "x2": round(float(d[2]), 2),
                 "y2": round(float(d[3]), 2), "score": round(float(d[4]), 4), "class_id": int(d[5]),
                 "class": class_name(info.names, int(d[5]))} for d in det]
        line = {"source": result.frame.source, "uri": self.uris[result.frame.source], "frame": result.frame.index,
                "timestamp": round(result.frame.timestamp, 4), "detections": rows}
        self.file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)


def draw(image: np.ndarray, det: np.ndarray, names: dict[int, str], fps: float | None = None) -> np.ndarray:
    import cv2

    for x1, y1, x2, y2, score, cls in det:
        color = tuple(int(c) for c in _PALETTE[int(cls) % len(_PALETTE)])
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(image, p1, p2, color, 2, cv2.LINE_AA)
        label = f"{class_name(names, int(cls))} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(p1[1], th + 4)
        cv2.rectangle(image, (p1[0], top - th - 4), (p1[0] + tw + 2, top), color, -1)
        cv2.putText(image, label, (p1[0] + 1, top - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    if fps is not None:
        cv2.putText(image, f"{fps:.1f} fps", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2, cv2.LINE_AA)
    return image


class _FpsMeter:
    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self) -> float:
        now = time.perf_counter()
        self.times = [t for t in self.times if now - t < 1.0] + [now]
        return float(len(self.times))


class VideoSink:
    """An annotated video per source: `out.mp4` for one source, `out_<id>.mp4` for several."""

    def __init__(self, path: Path, sources: list[SourceSpec], fps: dict[int, float], vid_stride: int) -> None:
        self.path, self.sources = path, sources
        self.fps = {s.id: (fps.get(s.id) or 30.0) / vid_stride for s in sources}
        self.writers: dict[int, Any] = {}
        self.sizes: dict[int, tuple[int, int]] = {}
        self.meters = {s.id: _FpsMeter() for s in sources}

    def target(self, source: int) -> Path:
        return self.path if len(self.sources) == 1 else self.path.with_name(f"{self.path.stem}_{source}{self.path.suffix}")

    def write(self, result: Any, info: Any) -> None:
        import cv2

        sid = result.frame.source
        image = draw(result.frame.image, result.detections, info.names, self.meters[sid].tick())
        if sid not in self.writers:
            h, w = image.shape[:2]
            fourcc = cv2.VideoWriter.fourcc(*("mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"))
            writer = cv2.VideoWriter(str(_partial(self.target(sid))), fourcc, self.fps[sid], (w, h))
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot write video {self.target(sid)}")
            self.writers[sid], self.sizes[sid] = writer, (w, h)
        if (image.shape[1], image.shape[0]) != self.sizes[sid]:  # image folders: frames of several sizes
            image = cv2.resize(image, self.sizes[sid])
        self.writers[sid].write(image)

    def close(self) -> None:
        for sid, writer in self.writers.items():
            writer.release()
            os.replace(_partial(self.target(sid)), self.target(sid))


class ShowSink:
    def __init__(self) -> None:
        self.meter = _FpsMeter()

    def write(self, result: Any, info: Any) -> None:
        import cv2

        cv2.imshow(f"tritonctl {result.frame.source}", draw(result.frame.image.copy(), result.detections, info.names,
                                                             self.meter.tick()))
        cv2.waitKey(1)

    def close(self) -> None:
        import cv2

        cv2.destroyAllWindows()
