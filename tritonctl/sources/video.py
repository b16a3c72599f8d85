"""Frame sources (video files, RTSP/HTTP streams, webcams, images, folders, globs) read off the main thread into
bounded queues with an explicit policy: `block` (offline: every frame, in order) or `latest` (real-time: keep the
newest, drop the rest, and count every drop)."""

from __future__ import annotations

import glob
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from tritonctl.core.errors import BadInput

# FFmpeg's own logger writes straight to stderr ("moov atom not found"); we report unreadable sources ourselves.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LIVE_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass
class Frame:
    source: int
    index: int  # frame number in its source (before --vid-stride)
    image: np.ndarray
    timestamp: float  # seconds into the source (files) or wall clock (live)
    read_at: float  # perf_counter when decoded
    decode_s: float
    path: Path | None = None  # the image file, for image sources (a folder or glob names many)


@dataclass
class SourceSpec:
    id: int
    uri: str
    kind: str  # video, stream, webcam, images
    paths: list[Path] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.kind in ("stream", "webcam")


def parse_sources(uris: list[str]) -> list[SourceSpec]:
    """Recognise each source, refusing what cannot be read before anything starts."""
    if not uris:
        raise BadInput("no source given: pass video files, image folders, globs, RTSP/HTTP URLs or webcam indexes")
    specs = []
    for i, uri in enumerate(uris):
        path = Path(uri)
        if uri.isdigit():
            specs.append(SourceSpec(i, uri, "webcam"))
        elif uri.lower().startswith(LIVE_PREFIXES):
            specs.append(SourceSpec(i, uri, "stream"))
        elif any(c in uri for c in "*?["):
            # `**` matches any depth, as in a shell with globstar; a folder source, by contrast, reads only its own files.
            paths = sorted(Path(p) for p in glob.glob(uri, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise BadInput(f"no images match {uri!r}")
            specs.append(SourceSpec(i, uri, "images", paths))
        elif path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise BadInput(f"folder {uri} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            specs.append(SourceSpec(i, uri, "images", paths))
        elif not path.exists():
            raise BadInput(f"source {uri} does not exist: give a video file, image, folder, glob, URL or webcam index")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            specs.append(SourceSpec(i, uri, "images", [path]))
        else:
            specs.append(SourceSpec(i, uri, "video"))
    return specs


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


@dataclass(frozen=True)
class OpenFailure:
    """Why a live source cannot be opened: `reason` in a few words (a table cell, a progress row), `hint` what the
    user can do about it."""

    reason: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.hint}" if self.hint else self.reason


class CannotOpen(ConnectionError):
    def __init__(self, failure: OpenFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


DEFAULT_PORTS = {"rtsp": 554, "rtmp": 1935, "http": 80, "https": 443}


def stream_failure(uri: str, exc: BaseException, took_s: float, timeout_s: float) -> OpenFailure:
    """PyAV's error for a stream that did not open, in the protocol's own words: the 404 of a wrong path, the 401 of
    missing credentials, nobody listening, no answer. FFmpeg says a silent server is "Invalid data" (RTSP) or an
    "Immediate exit" (HTTP, our timeout interrupting it): the time it took tells those apart."""
    import av.error as averr

    parts = urlsplit(uri)
    scheme = parts.scheme.upper()
    try:
        where = f"{parts.hostname}:{parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), '')}".rstrip(":")
    except ValueError:  # a port that is not a number
        where = parts.netloc.rpartition("@")[2]
    http = {averr.HTTPNotFoundError: ("404 Not Found", "the path is wrong"),
            averr.HTTPUnauthorizedError: ("401 Unauthorized",
                                          f"credentials are missing or wrong ({parts.scheme}://user:pass@host/…)"),
            averr.HTTPForbiddenError: ("403 Forbidden", "the server refuses this client or these credentials")}
    for kind, (status, hint) in http.items():
        if isinstance(exc, kind):
            return OpenFailure(f"{scheme} {status}", hint)
    if isinstance(exc, (averr.HTTPClientError, averr.HTTPError)):  # other 4xx, 5xx: "Server returned 5XX Server Error reply"
        return OpenFailure(f"{scheme} {_strerror(exc).removeprefix('Server returned ').removesuffix(' reply')}")
    if isinstance(exc, ConnectionRefusedError):
        return OpenFailure("connection refused", f"nothing listens at {where}")
    if isinstance(exc, averr.ProtocolNotFoundError):
        return OpenFailure(f"{parts.scheme or 'this'} protocol unsupported", "this FFmpeg build cannot read it")
    errno = getattr(exc, "errno", None)
    if isinstance(exc, TimeoutError) or took_s >= timeout_s * 0.9:
        return OpenFailure("timed out", f"no answer from {where} within {timeout_s:g} s")
    if errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return OpenFailure("host unreachable", f"no route to {where}")
    if errno == 5 and parts.hostname and not _resolves(parts.hostname):  # FFmpeg's EIO for a failed lookup
        return OpenFailure("host not found", f"{parts.hostname} does not resolve")
    if isinstance(exc, averr.InvalidDataError):
        return OpenFailure("not a stream FFmpeg can read")
    return OpenFailure(_strerror(exc))


def _strerror(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)


def _resolves(host: str) -> bool:
    import socket

    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


def webcam_failure(index: str) -> OpenFailure:
    """Why OpenCV could not open webcam `index`, from its device node (Linux): missing, not ours to read, or busy."""
    import sys

    device = Path(f"/dev/video{index}")
    if not sys.platform.startswith("linux"):  # no device node to ask
        return OpenFailure("will not open", f"no camera at index {index}, or another program holds it")
    if not device.exists():
        return OpenFailure(f"no {device}", f"no camera at index {index} ({device} does not exist)")
    if not os.access(device, os.R_OK | os.W_OK):
        return OpenFailure(f"{device}: permission denied", "add this user to the group that owns it (often `video`)")
    return OpenFailure(f"{device} will not open", "another program holds it, or it is not a capture device")


class Capture(Protocol):
    """One open video source. read(): (ok, BGR image or None when convert is False, seconds into the source)."""

    total: int | None
    fps: float
    size: tuple[int, int]  # width, height

    def read(self, convert: bool) -> tuple[bool, np.ndarray | None, float]: ...

    def release(self) -> None: ...


class CvCapture:
    """OpenCV's capture: video files and webcams. Frames skipped by --vid-stride are grabbed, never decoded."""

    def __init__(self, spec: SourceSpec, check: bool = True, timeout_s: float = 5.0) -> None:
        import cv2

        self.cap = open_capture(spec, check=check, timeout_s=timeout_s)
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.total = count if count > 0 else None
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def read(self, convert: bool) -> tuple[bool, np.ndarray | None, float]:
        import cv2

        with quiet_opencv():  # a failing webcam logs its own warnings here: the summary counts stalls
            ok, image = self.cap.read() if convert else (self.cap.grab(), None)
        return bool(ok), image, self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000

    def release(self) -> None:
        self.cap.release()


class AvCapture:
    """A network stream (RTSP, RTMP, HTTP, UDP) through PyAV's FFmpeg. OpenCV's FFmpeg backend opens such streams one
    at a time across threads and takes seconds each; PyAV opens them in parallel and decodes without holding the GIL.

    Raises CannotOpen (a ConnectionError) when the stream cannot be opened, with the protocol's reason; read()
    returns not-ok when it ends or stays silent for `timeout_s` (a stalled camera), and the reader reconnects."""

    def __init__(self, uri: str, timeout_s: float = 5.0) -> None:
        import av

        # Measured against GStreamer's RTSP server: FFmpeg's default probing holds av.open ~1 s; with analyzeduration 0
        # and the smallest probe the first frame comes after ~90 ms. low_delay also turns off frame threading (frames
        # held back per thread). Not fflags=nobuffer: it drops the probed packets, and the first frame waits for the
        # next keyframe (~1 s).
        options = {"flags": "low_delay", "analyzeduration": "0", "probesize": "32"}
        if uri.lower().startswith("rtsp://"):
            options["rtsp_transport"] = "tcp"  # UDP loses packets under load: smeared frames, not counted drops
        t = time.perf_counter()
        try:
            self.container = av.open(uri, options=options, timeout=(timeout_s, timeout_s))
        except (av.FFmpegError, OSError) as exc:
            raise CannotOpen(stream_failure(uri, exc, time.perf_counter() - t, timeout_s)) from exc
        if not self.container.streams.video:
            self.container.close()
            raise CannotOpen(OpenFailure("no video stream", "it carries no video"))
        stream = self.container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.total: int | None = None
        self.size = (stream.codec_context.width, stream.codec_context.height)
        self._frames = self.container.decode(stream)
        self._av_errors = (av.FFmpegError, OSError, StopIteration)

    def read(self, convert: bool) -> tuple[bool, np.ndarray | None, float]:
        try:
            frame = next(self._frames)
        except self._av_errors:
            return False, None, 0.0
        if self.size == (0, 0):
            self.size = (frame.width, frame.height)
        return True, frame.to_ndarray(format="bgr24") if convert else None, float(frame.time or 0.0)

    def release(self) -> None:
        self.container.close()


def open_capture(spec: SourceSpec, check: bool = True, timeout_s: float = 5.0) -> Any:
    """OpenCV's capture for a video file or webcam (or a stream, for tools that want OpenCV's); `check`: refuse one
    that does not open."""
    import cv2

    with quiet_opencv():
        if spec.kind == "webcam":
            cap = cv2.VideoCapture(int(spec.uri))
        elif spec.kind == "stream":
            ms = int(timeout_s * 1000)
            cap = cv2.VideoCapture(spec.uri, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            cap = cv2.VideoCapture(spec.uri)
    if check and not cap.isOpened():
        cap.release()
        raise BadInput(f"cannot open video {spec.uri}: OpenCV/FFmpeg cannot read it (corrupt or unsupported)")
    return cap


_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_previous = 0


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV logs its own warnings when a source cannot be opened ("can't be used to capture by name", one per webcam
    backend it tries) or stalls ("Stream timeout triggered"), before we can report it in one line (or count it in the
    summary), so its log is silenced while a source opens or reads. The level is process-wide and readers open and read
    at the same time: the first to enter silences it, the last to leave puts it back, so none restores it under
    another."""
    import cv2

    global _quiet_users, _quiet_previous
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_previous = cv2.getLogLevel()
            cv2.setLogLevel(0)  # 0: silent
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                cv2.setLogLevel(_quiet_previous)
