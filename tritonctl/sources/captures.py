"""Opening a video source: OpenCV for files and webcams, PyAV's FFmpeg for network streams; and why one will not open,
in the protocol's own words."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from tritonctl.core.errors import BadInput
from tritonctl.sources.spec import SourceSpec

# FFmpeg's own logger writes straight to stderr ("moov atom not found"); we report unreadable sources ourselves.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


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
