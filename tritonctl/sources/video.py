"""Frame sources (video files, RTSP/HTTP streams, webcams, images, folders, globs) read off the main thread into
bounded queues with an explicit policy: `block` (offline: every frame, in order) or `latest` (real-time: keep the
newest, drop the rest, and count every drop). What a source is: spec.py; how one is opened: captures.py."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritonctl.core.errors import BadInput
from tritonctl.sources.captures import AvCapture, CannotOpen, Capture, CvCapture, OpenFailure, webcam_failure
from tritonctl.sources.spec import IMAGE_SUFFIXES, SourceSpec, parse_sources
from tritonctl.vision.frames import Frame

__all__ = ["IMAGE_SUFFIXES", "FrameQueue", "Reader", "SourceSpec", "SourceStats", "parse_sources"]  # the run's names


class FrameQueue:
    """A bounded queue between a reader and the inference stage.

    policy `block`: a full queue makes the reader wait (nothing lost). policy `latest`: a full queue drops its oldest
    frame to make room, and `dropped` counts it."""

    def __init__(self, maxsize: int, policy: str, on_ready: Callable[[], None] = lambda: None) -> None:
        """`on_ready`: called after a frame is queued or the queue closes (wakes the dispatcher, which waits on it)."""
        if policy not in ("block", "latest"):
            raise ValueError(policy)
        self.maxsize, self.policy = maxsize, policy
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False
        self.on_ready = on_ready

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        with self._cond:
            while self.policy == "block" and len(self._items) >= self.maxsize and not stop.is_set():
                self._cond.wait(0.1)
            if stop.is_set():
                return False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify_all()
        self.on_ready()
        return True

    def get_nowait(self) -> Frame | None:
        with self._cond:
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self.on_ready()

    @property
    def exhausted(self) -> bool:
        with self._cond:
            return self.closed and not self._items


@dataclass
class SourceStats:
    read: int = 0
    skipped_stride: int = 0
    interrupted: int = 0  # read, then the run stopped before the frame could be queued
    failed: int = 0  # images that could not be decoded
    unreadable: list[Path] = field(default_factory=list)  # the first UNREADABLE_KEPT of them, named in the summary
    stalls: int = 0
    reconnects: int = 0
    error: str = ""
    cause: str = ""  # why a live source failed, in a few words ("RTSP 404 Not Found", "stalled"): the table's cell
    total: int | None = None  # frames expected (files), None when unknown (live)
    fps: float = 0.0
    size: tuple[int, int] = (0, 0)  # width, height
    first_frame_at: float = 0.0  # perf_counter when the first frame was queued (a live source: when it started)


UNREADABLE_KEPT = 5  # image files named per source when they cannot be decoded; later ones are only counted


class Reader(threading.Thread):
    """Decodes one source into its queue. A live source is opened in this thread (so sources open in parallel and a
    run can be stopped while they do); one that stops sending, or cannot be opened at all, is reported stalled and
    reopened with back-off, while the run goes on with the other sources."""

    def __init__(self, spec: SourceSpec, queue: FrameQueue, stop: threading.Event, vid_stride: int = 1,
                 stall_timeout_s: float = 5.0, max_reconnects: int = 5) -> None:
        super().__init__(name=f"reader-{spec.id}", daemon=True)
        self.spec, self.queue, self.stop = spec, queue, stop
        self.vid_stride, self.stall_timeout_s, self.max_reconnects = vid_stride, stall_timeout_s, max_reconnects
        self.stats = SourceStats()
        self.failures = 0  # failed reads or opens in a row (a live source): "retrying 2/5" while it is retried
        self._failure: OpenFailure | None = None  # why the last open failed
        self._capture: Capture | None = None
        self._opened = False  # a live source that never opened gives up with "cannot open", not "stalled"
        self.streaming = threading.Event()  # set once the first frame is queued (live sources: when they started)
        self.state = "connecting"  # now: connecting, streaming, stalled (reconnecting), ended, failed
        if spec.kind == "video":  # a file must open now: a bad one is refused before anything starts
            self._capture = CvCapture(spec, check=True, timeout_s=stall_timeout_s)
            self._describe(self._capture)
        elif spec.kind == "images":
            self.stats.total = len(spec.paths)

    def release(self) -> None:
        """Let go of the source when the run ends before this reader started (run() releases it otherwise)."""
        if self._capture is not None and not self.is_alive():
            self._capture.release()
            self._capture = None

    def note(self) -> str:
        """A live source's trouble in a few words, for its progress row ("" while it streams, or is not live)."""
        if not self.spec.live or self.state in ("streaming", "ended"):
            return ""
        if self.state == "failed":
            return f"failed: {self.stats.cause}" if self.stats.cause else "failed"
        if self.failures > self.max_reconnects:
            return "giving up"
        tries = f"{self.failures}/{self.max_reconnects}"
        if self.state == "stalled":
            return f"stalled, reconnecting {tries}" + (f" ({self._failure.reason})" if self._failure else "")
        if self.failures and self._failure is not None:
            return f"cannot open ({self._failure.reason}), retrying {tries}"
        return "connecting"

    def _describe(self, cap: Capture) -> None:
        self._opened = True
        self.stats.total = cap.total if not self.spec.live else None
        self.stats.fps, self.stats.size = cap.fps, cap.size

    def run(self) -> None:
        try:
            frames = {"images": self._images, "video": self._video}.get(self.spec.kind, self._live)()
            for index, image, ts, decode_s, path in frames:
                if self.stop.is_set():
                    break
                self.stats.read += 1
                if image is None:  # grabbed but not decoded: --vid-stride skips it
                    self.stats.skipped_stride += 1
                    continue
                frame = Frame(self.spec.id, index, image, ts, time.perf_counter(), decode_s, path)
                if not self.queue.put(frame, self.stop):
                    self.stats.interrupted += 1
                    break
                if not self.streaming.is_set():
                    self.stats.first_frame_at = frame.read_at
                    self.streaming.set()
        except ConnectionError as exc:  # a live source that gave up: its own words say it all
            self.stats.error = str(exc)
        except Exception as exc:  # reported in the summary and the run's exit status, never swallowed
            self.stats.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.state = "failed" if self.stats.error else "ended"
            try:
                if self._capture is not None:
                    self._capture.release()
            finally:  # whatever releasing does, the run learns that this source has ended
                self.queue.close()

    def _images(self) -> Iterator[tuple[int, np.ndarray | None, float, float, Path | None]]:
        import cv2

        for index, path in enumerate(self.spec.paths):
            if index % self.vid_stride:  # skipped by --vid-stride: not even read
                yield index, None, 0.0, 0.0, path
                continue
            t = time.perf_counter()
            image = cv2.imread(str(path))
            if image is None:  # one bad file among many is that frame's failure, not the source's
                self.stats.read += 1
                self.stats.failed += 1
                if len(self.stats.unreadable) < UNREADABLE_KEPT:
                    self.stats.unreadable.append(path)
                continue
            yield index, image, 0.0, time.perf_counter() - t, path

    def _video(self) -> Iterator[tuple[int, np.ndarray | None, float, float, Path | None]]:
        assert self._capture is not None
        index = 0
        while not self.stop.is_set():
            t = time.perf_counter()
            ok, image, ts = self._capture.read(convert=not index % self.vid_stride)
            if not ok:
                if index == 0:
                    raise BadInput(f"{self.spec.uri}: no frame could be decoded (corrupt or unsupported video)")
                return  # the end of the file
            yield index, image, ts, time.perf_counter() - t, None
            index += 1

    def _live(self) -> Iterator[tuple[int, np.ndarray | None, float, float, Path | None]]:
        index, backoff = 0, 0.5
        start = time.time()
        while not self.stop.is_set():
            if self._capture is None:
                self._capture = self._open()
            t = time.perf_counter()
            ok, image, _ = self._capture.read(convert=not index % self.vid_stride) if self._capture else (False, None, 0)
            if ok:
                self.failures, backoff = 0, 0.5
                self.state = "streaming"
                if self.stats.size == (0, 0) and self._capture is not None:  # a stream says its size with its frames
                    self.stats.size = self._capture.size
                yield index, image, time.time() - start, time.perf_counter() - t, None
                index += 1
                continue
            self.failures += 1
            self.stats.stalls += 1
            self.state = "stalled" if self._opened else "connecting"
            if self.failures > self.max_reconnects:
                raise ConnectionError(self._gave_up())
            if self._capture is not None:
                self._capture.release()
                self._capture = None
            self.stop.wait(backoff)
            backoff = min(backoff * 2, self.stall_timeout_s)
            self.stats.reconnects += 1

    def _open(self) -> Capture | None:
        """The live source's capture, or None when it cannot be opened now (the caller retries with back-off)."""
        try:
            cap: Capture
            if self.spec.kind == "stream":
                cap = AvCapture(self.spec.uri, self.stall_timeout_s)
            else:
                cap = CvCapture(self.spec, check=True, timeout_s=self.stall_timeout_s)
        except CannotOpen as exc:
            self._failed_to_open(exc.failure)
            return None
        except BadInput:  # OpenCV says only that it could not: the device node says why
            self._failed_to_open(webcam_failure(self.spec.uri))
            return None
        self._failure, self.stats.cause = None, ""
        if not self._opened:
            self._describe(cap)
        return cap

    def _failed_to_open(self, failure: OpenFailure) -> None:
        self._failure = failure
        if not self._opened:  # a source that streamed and stalls is a stall in the table, whatever its reopen says
            self.stats.cause = failure.reason

    def _gave_up(self) -> str:
        """The source's end in one line, with the protocol's own reason: the CLI prints it once, after the table."""
        tries = f"{self.max_reconnects} reconnect{'' if self.max_reconnects == 1 else 's'}"
        if self._opened:
            self.stats.cause = "stalled"
            reopening = f"; reopening it: {self._failure}" if self._failure else ""
            return f"{self.spec.uri} stalled: no frame after {tries}{reopening}"
        what = "webcam" if self.spec.kind == "webcam" else "stream"
        why = self._failure or OpenFailure("not a stream FFmpeg can read", "")
        return f"cannot open {what} {self.spec.uri}: {why} (after {tries})"


