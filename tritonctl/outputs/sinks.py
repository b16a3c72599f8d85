"""Where detections go: an annotated video per video source, a folder of annotated images per image source, JSON
Lines, a window. Each file is written under a temporary name and moved into place when it is complete (images: one by
one; videos and JSON Lines: when the run ends, normally, on Ctrl-C or on an error), so a finished name is never partial.
JSON Lines to `-`, a FIFO or a device are written through as they come (files.py: nothing but a regular file is ever
replaced).

JSON Lines schema (one line per inferred frame; in frame order within a source, sources interleaved in no set order):
  {"source": 0, "uri": "video.mp4", "frame": 12, "timestamp": 0.4,
   "detections": [{"x1": 10.5, "y1": 20.0, "x2": 110.0, "y2": 220.0, "score": 0.91, "class_id": 2, "class": "triangle"}]}
Coordinates are pixels of the source frame; timestamp is seconds into the file, or since the start for live sources.
With --track, each detection also has "track_id" (1-based, stable per object within its source), and a line may carry
"ended_tracks": [{"track_id": 3, "first_frame": 12, "last_frame": 240}] for the tracks that ended by that frame.
A source with zones or lines (pipeline file) adds "zones": {name: {"count": {class: n}, "entered": [ids], "left": [ids]}}
and "lines": {name: {"in": {class: n}, "out": {class: n}, "in_ids": [...], "out_ids": [...]}} (this frame's).
Lines of an image source (a folder, a glob, an image) also carry "path": the image file the frame was read from.

Every sink follows the `Sink` protocol (vision/frames.py): write() is called from one thread (the emitter), in frame
order, for each inferred frame; close() finishes its files on any ending; written() names them; discard() drops what it
started when the run fails before its first frame (no empty file replaces an existing one).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonctl.core.errors import BadInput
from tritonctl.core.files import LinesFile, commit, partial_path
from tritonctl.sources.video import IMAGE_SUFFIXES, SourceSpec
from tritonctl.vision.detections import Detections

if TYPE_CHECKING:
    from tritonctl.vision.frames import Labels, Result

_PALETTE = np.array([[56, 56, 255], [151, 157, 255], [31, 112, 255], [29, 178, 255], [49, 210, 207], [10, 249, 72],
                     [23, 204, 146], [134, 219, 61], [52, 147, 26], [187, 212, 0], [168, 153, 44], [255, 194, 0]])


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")  # containers OpenCV writes here (mp4v or MJPG)


def output_targets(path: Path, sources: list[SourceSpec]) -> dict[int, Path]:
    """Where `--output PATH` puts each source's annotated frames: a video file for a video, stream or webcam; a folder
    of images, named after the inputs, for an image source (never a video of resized stills).

    - PATH names a video (out.mp4): one source writes out.mp4; several write out_<id>.mp4, and their image sources
      (mixed with videos) write the folders out_<id>/. Image sources alone need a folder instead (refused).
    - PATH names a folder (annotated/, or any name without a video extension): only image sources; one source writes
      into annotated/, several into annotated/<id>/."""
    images = [s.id for s in sources if s.kind == "images"]
    several = len(sources) > 1
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise BadInput(f"--output {path}: annotated images are written into a folder, each named after its input; "
                       f"name a folder, e.g. --output {path.with_suffix('')}/")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        if len(images) < len(sources):
            raise BadInput(f"--output {path}: a video source writes an annotated video: name a video file ending in "
                           f"{', '.join(VIDEO_SUFFIXES)}, e.g. out.mp4 (image sources given with it go to out_<id>/)")
        return {sid: path / str(sid) if several else path for sid in images}
    if len(images) == len(sources):
        raise BadInput(f"--output {path}: image sources are written as annotated images, one per input, into a folder; "
                       f"name a folder, e.g. --output {path.with_suffix('')}/")
    if not several:
        return {sources[0].id: path}
    return {s.id: path.with_name(f"{path.stem}_{s.id}" + ("" if s.kind == "images" else path.suffix)) for s in sources}


def image_names(spec: SourceSpec) -> dict[Path, Path]:
    """Each input image's name in its output folder: its path below the folder that holds all of the source's images,
    so a glob over several folders (data/*/*.jpg) keeps a/1.jpg and b/1.jpg apart."""
    folders = [str(p.parent.absolute()) for p in spec.paths]
    common = Path(os.path.commonpath(folders)) if folders else Path()
    return {p: p.absolute().relative_to(common) for p in spec.paths}


def class_name(names: dict[int, str], cls: int) -> str:
    return names.get(cls, str(cls))


class JsonlSink:
    def __init__(self, path: Path, uri_of: Callable[[int], str]) -> None:
        """`uri_of(source)`: its uri, asked per line (sources can join a running pipeline)."""
        self.path = path
        self.uri_of = uri_of
        self.file = LinesFile(path)  # `-`, a FIFO or a device: written through; a file: renamed into place at close
        self.lines = 0

    def write(self, result: Result, info: Labels) -> None:
        assert result.detections is not None
        rows = result.detections.to_json(info.names)
        frame = result.frame
        line: dict[str, Any] = {"source": frame.source, "uri": self.uri_of(frame.source), "frame": frame.index}
        if frame.path is not None:
            line["path"] = str(frame.path)
        line.update(timestamp=round(frame.timestamp, 4), detections=rows)
        if result.geometry is not None:
            line.update(result.geometry.to_json(info.names))
        if result.ended_tracks:
            line["ended_tracks"] = [{"track_id": s.track_id, "first_frame": s.first_frame, "last_frame": s.last_frame}
                                    for s in result.ended_tracks]
        self.file.write(json.dumps(line) + "\n")
        self.lines += 1

    def written(self) -> list[tuple[Path, int]]:
        return [(self.path, self.lines)]

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.discard()


def fps_label(fps: float | None) -> str | None:
    """The overlay text of an annotated frame: the throughput measured by FpsMeter (None: no overlay)."""
    return None if fps is None else f"{fps:.1f} fps"


def draw(image: np.ndarray, det: Detections, names: dict[int, str], label: str | None = None) -> np.ndarray:
    import cv2

    ids = det.track_ids.tolist() if det.track_ids is not None else [None] * len(det)
    for (x1, y1, x2, y2), score, cls, tid in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist(), ids,
                                                 strict=True):
        color = tuple(int(c) for c in _PALETTE[(cls if tid is None else tid) % len(_PALETTE)])
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(image, p1, p2, color, 2, cv2.LINE_AA)
        text = f"{class_name(names, cls)} {score:.2f}" if tid is None else f"#{tid} {class_name(names, cls)} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(p1[1], th + 4)
        cv2.rectangle(image, (p1[0], top - th - 4), (p1[0] + tw + 2, top), color, -1)
        cv2.putText(image, text, (p1[0] + 1, top - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    if label is not None:
        cv2.putText(image, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2, cv2.LINE_AA)
    return image


class FpsMeter:
    """Frames per second of wall time over the last `window_s` (since the meter started, while it is younger): frames
    emitted in a burst (one batch) average out, and the first frames show the rate, not their count.

    Bounded: at most `limit` timestamps are kept; above limit/window_s fps the rate is taken over the span they cover."""

    def __init__(self, window_s: float = 1.0, limit: int = 4096, clock: Callable[[], float] = time.perf_counter) -> None:
        self.window_s, self.clock = window_s, clock
        self.started = clock()
        self.times: deque[float] = deque(maxlen=limit)

    def tick(self) -> float:
        now = self.clock()
        self.times.append(now)
        while now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) == self.times.maxlen:
            span = now - self.times[0]
            return (len(self.times) - 1) / span if span > 0 else 0.0
        span = min(self.window_s, now - self.started)
        return len(self.times) / span if span > 0 else 0.0


class VideoSink:
    """An annotated video per video, stream or webcam source (paths from output_targets), stamped with the throughput."""

    def __init__(self, targets: dict[int, Path], fps: Callable[[int], float],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """`fps(source)`: the frame rate to write, asked when the source's first frame arrives (a live source knows
        its rate only once it opened)."""
        self.targets = targets
        self.fps = fps
        self.writers: dict[int, Any] = {}
        self.sizes: dict[int, tuple[int, int]] = {}
        self.frames = dict.fromkeys(targets, 0)
        self.meters = {sid: FpsMeter(clock=clock) for sid in targets}
        self.labels: dict[int, str | None] = {}  # the overlay last stamped, per source

    def write(self, result: Result, info: Labels) -> None:
        import cv2

        sid = result.frame.source
        if sid not in self.targets:  # an image source: ImageSink's
            return
        self.labels[sid] = fps_label(self.meters[sid].tick())
        # On a copy: the frame is shared with the other sinks (a second video, the window, the view) that draw too.
        image = draw(result.frame.image.copy(), result.detections, info.names, self.labels[sid])
        if sid not in self.writers:
            h, w = image.shape[:2]
            target = self.targets[sid]
            fourcc = cv2.VideoWriter.fourcc(*("mp4v" if target.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"))
            partial_path(target).parent.mkdir(parents=True, exist_ok=True)  # as every output makes its folder
            writer = cv2.VideoWriter(str(partial_path(target)), fourcc, self.fps(sid), (w, h))
            if not writer.isOpened():
                raise BadInput(f"OpenCV cannot write video {target}: name a {'/'.join(VIDEO_SUFFIXES)} file "
                               "in a writable folder")
            self.writers[sid], self.sizes[sid] = writer, (w, h)
        if (image.shape[1], image.shape[0]) != self.sizes[sid]:  # a stream reopened at another size
            image = cv2.resize(image, self.sizes[sid])
        self.writers[sid].write(image)
        self.frames[sid] += 1

    def written(self) -> list[tuple[Path, int]]:
        return [(self.targets[sid], self.frames[sid]) for sid in self.writers]

    def close(self) -> None:
        for sid, writer in self.writers.items():
            writer.release()
            commit(partial_path(self.targets[sid]), self.targets[sid])

    def discard(self) -> None:
        for sid, writer in self.writers.items():
            writer.release()
            partial_path(self.targets[sid]).unlink(missing_ok=True)
        self.writers.clear()


class ImageSink:
    """One annotated image per input image, in the source's folder (from output_targets), under the input's name and
    format. Each is complete when it appears (written under a temporary name, then moved)."""

    def __init__(self, targets: dict[int, Path], sources: list[SourceSpec]) -> None:
        self.targets = targets
        self.names = {s.id: image_names(s) for s in sources if s.id in targets}
        self.frames = dict.fromkeys(targets, 0)
        self._made: set[Path] = set()

    def write(self, result: Result, info: Labels) -> None:
        import cv2

        frame = result.frame
        if frame.source not in self.targets or frame.path is None:  # a video source: VideoSink's
            return
        dest = self.targets[frame.source] / self.names[frame.source][frame.path]
        if dest.parent not in self._made:  # once per folder, not per image
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(dest.parent)
        tmp = partial_path(dest)
        if not cv2.imwrite(str(tmp), draw(frame.image, result.detections, info.names)):
            raise BadInput(f"OpenCV cannot write image {dest}: is the folder writable and the disk not full?")
        commit(tmp, dest)
        self.frames[frame.source] += 1

    def written(self) -> list[tuple[Path, int]]:
        return [(self.targets[sid], n) for sid, n in self.frames.items() if n]

    def close(self) -> None:
        pass  # each image was complete when it appeared

    def discard(self) -> None:
        pass


class ShowSink:
    def __init__(self) -> None:
        self.meters: dict[int, FpsMeter] = {}

    def write(self, result: Result, info: Labels) -> None:
        import cv2

        sid = result.frame.source
        label = fps_label(self.meters.setdefault(sid, FpsMeter()).tick())
        cv2.imshow(f"tritonctl {sid}", draw(result.frame.image.copy(), result.detections, info.names, label))
        cv2.waitKey(1)

    def written(self) -> list[tuple[Path, int]]:
        return []

    def close(self) -> None:
        import cv2

        cv2.destroyAllWindows()

    def discard(self) -> None:
        self.close()
