"""Sources and readers: recognising sources, queue policies, stride, and a live stream that stalls and goes away."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import Triton, assert_one_line_error, free_ports, run_cli
from rtsp import RtspServer

from tritonctl.core.errors import BadInput
from tritonctl.sources.video import FrameQueue, parse_sources
from tritonctl.vision.frames import Frame


class CameraServer:
    """An IP camera on loopback: MJPEG over HTTP (multipart/x-mixed-replace), `per_connection` frames at `fps`, then
    silence for `silence_s` (a stall) and a closed connection; after `connections` clients it answers 503 (gone), and
    404 to any other path."""

    def __init__(self, frames: list[bytes], fps: float = 30, per_connection: int = 30, silence_s: float = 2.0,
                 connections: int = 2) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                server.served += 1
                if server.served > connections:
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i in range(per_connection):
                        jpeg = frames[i % len(frames)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " +
                                         str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(1 / fps)
                    time.sleep(silence_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up first: what a camera sees when a viewer leaves

            def log_message(self, *args: object) -> None:
                pass

        self.served = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def camera() -> Iterator[CameraServer]:
    import cv2

    from tritonctl.vision.synthetic import video_frames

    frames = [cv2.imencode(".jpg", f)[1].tobytes() for f, _ in video_frames(30, 640, 360, seed=9)]
    server = CameraServer(frames)
    yield server
    server.close()


@pytest.mark.server
@pytest.mark.slow
def test_stalled_stream_is_reported_retried_and_the_run_goes_on(demo_triton: Triton, demo_video: Path,
                                                                 camera: CameraServer) -> None:
    from tritonctl.stream.detect import DetectSettings, run_detect

    settings = DetectSettings.create(sources=[camera.url, str(demo_video)], urls=[demo_triton.url], model="shapes",
                                     stall_timeout_s=1.0, reconnects=2)
    summary = run_detect(settings).to_json()
    stream, video = summary["sources"]
    assert stream["policy"] == "latest" and video["policy"] == "block"
    assert stream["stalls"] >= 2 and stream["reconnects"] >= 2 and camera.served >= 3
    assert "stalled" in stream["error"]
    assert 40 <= stream["read"] <= 60  # two connections of 30 frames (FFmpeg may lose one at a boundary)
    assert stream["read"] == stream["inferred"] + stream["dropped"] + stream["interrupted"]
    assert video["inferred"] == 60 and video["error"] == ""  # the file finished while the stream stalled


@pytest.mark.server
@pytest.mark.slow
def test_an_unreachable_stream_is_retried_while_the_video_runs(triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    """The README's own `detect video.mp4 rtsp://cam/stream …` exited 2 in 0.36 s with nothing processed when the
    camera was down, after OpenCV's own "[ WARN:0@0.010] global cap.cpp:215 open VIDEOIO(FFMPEG) …" line."""
    import json

    port = free_ports(1)[0]
    stream = f"rtsp://127.0.0.1:{port}/stream"
    result = run_cli("detect", str(demo_video), stream, "-m", "tiny", "--url", triton.url, "--output",
                     str(tmp_path / "out.mp4"), "--json", str(tmp_path / "out.jsonl"), "--summary-json",
                     str(tmp_path / "s.json"), "--reconnects", "1", "--stall-timeout", "0.5")
    assert_one_line_error(result, 1, f"source 1 ({stream})", "cannot open stream", "after 1 reconnect",
                          f"connection refused: nothing listens at 127.0.0.1:{port}")
    assert "[ WARN" not in result.stderr
    video, live = json.loads((tmp_path / "s.json").read_text())["sources"]
    assert video["inferred"] == 60 and video["error"] == ""  # the file ran to its end while the stream was retried
    assert live["read"] == 0 and live["stalls"] == 2 and live["reconnects"] == 1  # the same back-off as a stall
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(60)) and {x["source"] for x in lines} == {0}
    assert (tmp_path / "out_0.mp4").is_file() and not (tmp_path / "out_1.mp4").exists()


def test_double_star_globs_recurse(tmp_path: Path) -> None:
    """`detect 'g/**/*.jpg'` read g/a/x.jpg and g/b/x.jpg only, not g/top.jpg nor g/a/deep/y.jpg."""
    import cv2

    names = ["top.jpg", "a/x.jpg", "b/x.jpg", "a/deep/y.jpg"]
    for name in names:
        (tmp_path / "g" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "g" / name), np.zeros((8, 8, 3), np.uint8))
    [spec] = parse_sources([str(tmp_path / "g" / "**" / "*.jpg")])
    assert sorted(spec.paths) == sorted(tmp_path / "g" / n for n in names)
    [folder] = parse_sources([str(tmp_path / "g")])
    assert folder.paths == [tmp_path / "g" / "top.jpg"]  # a folder source stays non-recursive


def test_synthetic_writers_take_a_str(tmp_path: Path) -> None:
    """write_video('video.mp4', …) raised AttributeError: 'str' object has no attribute 'parent'."""
    from tritonctl.vision.synthetic import write_video, write_yolo_dataset

    gt = write_video(str(tmp_path / "v.mp4"), n_frames=2, width=64, height=48)
    assert (tmp_path / "v.mp4").is_file() and gt == tmp_path / "v.mp4.gt.json"
    assert write_yolo_dataset(str(tmp_path / "data"), 1, 1, imgsz=64).is_file()


def test_parse_sources(tmp_path: Path, demo_video: Path) -> None:
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    specs = parse_sources([str(demo_video), str(tmp_path), str(tmp_path / "*.png"), "rtsp://cam/1", "0",
                           str(tmp_path / "1.png")])
    assert [s.kind for s in specs] == ["video", "images", "images", "stream", "webcam", "images"]
    assert [s.id for s in specs] == list(range(6)) and len(specs[1].paths) == 3 and specs[3].live
    for bad, words in [([], "no source"), ([str(tmp_path / "nope.mp4")], "does not exist"),
                       ([str(tmp_path / "*.jpg")], "no images match"), ([str(tmp_path / "empty")], "does not exist")]:
        with pytest.raises(BadInput, match=words):
            parse_sources(bad)


def _frame(i: int) -> Frame:
    return Frame(0, i, np.zeros((1, 1, 3), np.uint8), 0.0, time.perf_counter(), 0.0)


def test_latest_policy_drops_oldest_and_counts() -> None:
    q, stop = FrameQueue(2, "latest"), threading.Event()
    for i in range(5):
        assert q.put(_frame(i), stop)
    assert q.dropped == 3
    assert [q.get_nowait().index, q.get_nowait().index] == [3, 4]  # type: ignore[union-attr]


def test_block_policy_waits_and_loses_nothing() -> None:
    q, stop = FrameQueue(1, "block"), threading.Event()
    q.put(_frame(0), stop)
    writer = threading.Thread(target=q.put, args=(_frame(1), stop))
    writer.start()
    time.sleep(0.2)
    assert writer.is_alive()  # the reader waits while the queue is full
    assert q.get_nowait().index == 0  # type: ignore[union-attr]
    writer.join(2)
    assert q.get_nowait().index == 1 and q.dropped == 0  # type: ignore[union-attr]
    q.close()
    assert q.exhausted


def test_reader_stride_on_a_video(demo_video: Path) -> None:
    from tritonctl.sources.video import Reader

    [spec] = parse_sources([str(demo_video)])
    q, stop = FrameQueue(100, "block"), threading.Event()
    reader = Reader(spec, q, stop, vid_stride=3)
    assert reader.stats.total == 60 and reader.stats.size == (640, 360)
    reader.start()
    reader.join(30)
    frames = []
    while (f := q.get_nowait()) is not None:
        frames.append(f.index)
    assert frames == list(range(0, 60, 3)) and reader.stats.read == 60 and reader.stats.skipped_stride == 40


def test_image_frames_carry_their_file(tmp_path: Path) -> None:
    import cv2

    from tritonctl.sources.video import Reader

    for name in ("b.png", "a.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    [spec] = parse_sources([str(tmp_path)])
    q, stop = FrameQueue(10, "block"), threading.Event()
    reader = Reader(spec, q, stop)
    reader.start()
    reader.join(10)
    frames = [q.get_nowait() for _ in range(2)]
    assert [(f.index, f.path) for f in frames] == [(0, tmp_path / "a.png"), (1, tmp_path / "b.png")]  # type: ignore[union-attr]


@pytest.mark.server
def test_a_missing_webcam_is_our_one_line_only(triton: Triton) -> None:
    """OpenCV printed its own two warning lines (V4L2, obsensor) before ours. A webcam is live: it is retried like a
    stalled one, and one that never opens is a failed source (exit 1). Its progress row said `0/? 0.0 fps` while it
    was retried, and the end did not say that no such device exists."""
    index = next(i for i in range(7, 64) if not Path(f"/dev/video{i}").exists())
    result = run_cli("detect", str(index), "-m", "tiny", "--url", triton.url, "--reconnects", "1", "--stall-timeout",
                     "0.5", env=TERMINAL)
    assert_one_line_error(result, 1, f"cannot open webcam {index}", f"no camera at index {index}",
                          f"/dev/video{index} does not exist", "after 1 reconnect")
    assert f"cannot open (no /dev/video{index}), retrying 1/1" in _shown(result.stdout)


TERMINAL = {"TTY_COMPATIBLE": "1"}  # Rich draws its live progress as on a terminal: the test reads the rows it draws


def _shown(text: str) -> str:
    """What a terminal shows of `text`, near enough: the escape sequences taken out."""
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.mark.server
def test_a_wrong_rtsp_path_says_404_while_retrying_and_at_the_end(triton: Triton, rtsp_server: RtspServer) -> None:
    """`detect rtsp://host:port/wrongpath` showed 13 s of `0/? 0.0 fps` with no word of retrying, then ended with
    "unreachable, or not a stream FFmpeg can read" although the server had answered 404; that error wrapped over six
    lines of the summary table."""
    url = f"rtsp://{rtsp_server.host}:{rtsp_server.port}/wrongpath"
    result = run_cli("detect", url, "-m", "tiny", "--url", triton.url, "--reconnects", "2", "--stall-timeout", "0.5",
                     env=TERMINAL)
    assert_one_line_error(result, 1, f"source 0 ({url})", "RTSP 404 Not Found: the path is wrong", "after 2 reconnects")
    shown = _shown(result.stdout)
    assert "cannot open (RTSP 404 Not Found), retrying" in shown  # while it retried, in its progress row
    table = shown.splitlines()
    [row] = [i for i, line in enumerate(table) if line.endswith("│") and "RTSP 404 Not Found" in line]
    assert table[row].split("│")[-2].strip() == "RTSP 404 Not Found"  # the error cell: the reason alone
    following = table[row + 1]  # the row's next line (a long source name wraps) or the table's bottom border
    assert following.startswith("└") or following.split("│")[-2].strip() == "", following  # the error did not wrap


def test_a_stream_that_cannot_open_says_why_in_the_protocols_words(camera: CameraServer) -> None:
    """Every stream that did not open was "unreachable, or not a stream FFmpeg can read", whatever FFmpeg had said."""
    import socket

    from tritonctl.sources.captures import AvCapture, CannotOpen

    def failure(uri: str) -> str:
        with pytest.raises(CannotOpen) as info:
            AvCapture(uri, timeout_s=0.5)
        return str(info.value.failure)

    port = free_ports(1)[0]
    assert failure(f"rtsp://127.0.0.1:{port}/cam") == f"connection refused: nothing listens at 127.0.0.1:{port}"
    assert failure(camera.url.replace("stream.mjpg", "nope")) == "HTTP 404 Not Found: the path is wrong"
    assert failure("rtsp://no-such-camera.invalid/cam") == "host not found: no-such-camera.invalid does not resolve"
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        for scheme in ("rtsp", "http"):
            assert failure(f"{scheme}://{where}/cam") == f"timed out: no answer from {where} within 0.5 s"


def test_reader_accounts_for_every_frame_it_read(demo_video: Path, tmp_path: Path) -> None:
    """Stopped while waiting for room, the reader held a frame it had counted as read: it was lost from the summary's
    sum. It is counted interrupted now; an image that cannot be decoded is read and failed."""
    from tritonctl.sources.video import Reader

    [spec] = parse_sources([str(demo_video)])
    q, stop = FrameQueue(1, "block"), threading.Event()
    reader = Reader(spec, q, stop)
    reader.start()
    deadline = time.monotonic() + 10
    while reader.stats.read < 2 and time.monotonic() < deadline:  # frame 0 queued, frame 1 waits for room
        time.sleep(0.01)
    stop.set()
    reader.join(10)
    queued = 0
    while q.get_nowait() is not None:
        queued += 1
    assert (reader.stats.read, queued, reader.stats.interrupted) == (2, 1, 1)

    (tmp_path / "a.png").write_bytes(b"not a png")
    [images] = parse_sources([str(tmp_path)])
    reader = Reader(images, FrameQueue(4, "block"), threading.Event())
    reader.start()
    reader.join(10)
    assert (reader.stats.read, reader.stats.failed, reader.stats.error) == (1, 1, "")  # a failed frame, not source
    assert reader.stats.unreadable == [tmp_path / "a.png"]
