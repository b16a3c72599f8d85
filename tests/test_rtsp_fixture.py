"""The fake RTSP camera itself (scripts/rtsp_server.py through tests/rtsp.py), checked with PyAV as the client: real
time at 30 fps, a loop nobody notices, a stall that clients feel, and a camera that goes away and comes back."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import av
import pytest
from rtsp import SCRIPT, SYSTEM_PYTHON, RtspServer, free_port

pytestmark = pytest.mark.server

# what a low-latency reader passes: TCP (no loss on loopback under load), and no second of probing before the first
# frame (FFmpeg's default analyzeduration reads ~1 s of the stream inside av.open)
OPTIONS = {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32", "flags": "low_delay"}


def open_camera(url: str, read_timeout: float = 5.0) -> av.container.InputContainer:
    return av.open(url, options=OPTIONS, timeout=(5.0, read_timeout))


def frame_times(frames: Iterator[av.VideoFrame], seconds: float) -> list[float]:
    """Arrival times of the frames decoded during `seconds`, after the first few (the burst queued while opening)."""
    for _ in range(5):
        next(frames)
    times = [time.monotonic()]
    while times[-1] - times[0] < seconds:
        next(frames)
        times.append(time.monotonic())
    return times


def recording_pts(frames: Iterator[av.VideoFrame], pts: list[int | None]) -> Iterator[av.VideoFrame]:
    for frame in frames:
        pts.append(frame.pts)
        yield frame


def fps_of(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


def test_frames_arrive_in_real_time_at_720p(rtsp_server: RtspServer) -> None:
    with open_camera(rtsp_server.url("cam0")) as container:
        frames = container.decode(video=0)
        first = next(frames)
        assert (first.width, first.height) == (1280, 720)
        assert first.key_frame  # a new pipeline starts at the file's first IDR
        times = frame_times(frames, 3.0)
    assert 27 <= fps_of(times) <= 33, fps_of(times)
    assert max(b - a for a, b in pairwise(times)) < 0.2


def test_a_late_client_of_a_shared_mount_gets_a_keyframe_within_a_gop(rtsp_server: RtspServer) -> None:
    with open_camera(rtsp_server.url("cam1")) as early:
        early_frames = early.decode(video=0)
        for _ in range(15):  # half a GOP in: the late client joins between keyframes
            next(early_frames)
        start = time.monotonic()
        with open_camera(rtsp_server.url("cam1")) as late:
            frame = next(late.decode(video=0))
        assert frame.key_frame and (frame.width, frame.height) == (1280, 720)
        assert time.monotonic() - start < 1.5  # one GOP (1 s) plus the RTSP handshake


def test_the_stream_goes_on_across_the_files_loop_point(tmp_path: Path) -> None:
    from tritonctl.vision.synthetic import write_h264

    short = write_h264(tmp_path / "short.h264", seconds=2.0, width=1280, height=720, fps=30)
    with RtspServer.start({"short": short}) as server, open_camera(server.url("short")) as container:
        pts: list[int | None] = []
        times = frame_times(recording_pts(container.decode(video=0), pts), 5.0)  # 2.5 times the file
    assert 27 <= fps_of(times) <= 33, fps_of(times)
    assert max(b - a for a, b in pairwise(times)) < 0.2
    stamps = [p for p in pts if p is not None]
    assert all(a < b for a, b in pairwise(stamps)), "timestamps must keep increasing"


def test_pause_stalls_the_stream_and_resume_restarts_it(rtsp_server: RtspServer) -> None:
    with open_camera(rtsp_server.url("cam0"), read_timeout=5.0) as patient, \
            open_camera(rtsp_server.url("cam0"), read_timeout=0.5) as impatient:
        patient_frames, impatient_frames = patient.decode(video=0), impatient.decode(video=0)
        next(patient_frames), next(impatient_frames)
        rtsp_server.pause("cam0")
        start = time.monotonic()
        # a stalled camera: no frames, and a reader with a short timeout gives up (FFmpeg holds the last frame
        # until its read times out once, then times out again: about 2x the read timeout)
        with pytest.raises(av.error.ExitError):
            for _ in range(5):
                next(impatient_frames)
        assert time.monotonic() - start < 3.0
        with open_camera(rtsp_server.url("cam1")) as other:  # the other camera is not stalled
            assert next(other.decode(video=0)).width == 1280
        rtsp_server.resume("cam0")
        # the patient reader stayed connected through the stall and simply gets frames again, in real time once it
        # has drained what queued up on its socket before the pause while this test was busy with the others
        times = frame_times(patient_frames, 2.0)
        recent = [t for t in times if t >= times[-1] - 1.0]
        assert 25 <= fps_of(recent) <= 35, fps_of(recent)


def test_stop_drops_clients_and_restart_serves_again(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url("cam0")
    with open_camera(url, read_timeout=2.0) as container:
        frames = container.decode(video=0)
        next(frames)
        rtsp_server.stop()
        start = time.monotonic()
        # a killed server closes the connection: FFmpeg reports end of stream (or an error), never more frames
        with pytest.raises((StopIteration, av.error.FFmpegError, OSError)):
            for _ in range(300):
                next(frames)
        assert time.monotonic() - start < 3.0
    with pytest.raises(OSError):  # nothing listens: refused at once
        open_camera(url)
    rtsp_server.restart()
    assert rtsp_server.url("cam0") == url
    with open_camera(url) as container:
        assert next(container.decode(video=0)).height == 720


def test_start_up_errors_are_one_line(tmp_path: Path, camera_h264: Path) -> None:
    def run(*media: str, port: int) -> subprocess.CompletedProcess[str]:
        argv = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(port), *(a for m in media for a in ("--media", m))]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)

    missing = run(f"cam0={tmp_path / 'missing.h264'}", port=free_port())
    (tmp_path / "junk.h264").write_bytes(b"not a video")
    junk = run(f"cam0={tmp_path / 'junk.h264'}", port=free_port())
    with RtspServer.start({"cam0": camera_h264}) as server:
        busy = run(f"cam0={camera_h264}", port=server.port)
    for result, word in ((missing, "cannot read"), (junk, "not an Annex-B"), (busy, "cannot listen")):
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and word in lines[0], result.stderr
        assert "ready" not in result.stdout
