"""The run: cross-stream batching in the dispatcher, and live cameras from a real RTSP server (GStreamer's, started
by the tests) through the local Triton: 30 fps, stalls, servers that go and come back, Ctrl-C, reloads, the view."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TRITONCTL, Triton, free_ports
from rtsp import RtspServer

from tritonctl.sources.video import FrameQueue
from tritonctl.stream.dispatch import Dispatcher
from tritonctl.stream.summary import FRAME_COUNTS
from tritonctl.vision.frames import Frame


def _frame(source: int, index: int = 0) -> Frame:
    return Frame(source, index, np.zeros((1, 1, 3), np.uint8), 0.0, time.perf_counter(), 0.0)


def _dispatcher(n_sources: int, timeout_s: float, policy: str = "latest") -> tuple[Dispatcher, list[FrameQueue]]:
    d = Dispatcher(window=64, batch_timeout_s=timeout_s)
    queues = [FrameQueue(1, policy, d.wake) for _ in range(n_sources)]
    for sid, q in enumerate(queues):
        d.add(sid, q)
    return d, queues


def test_a_batch_carries_frames_of_several_streams_round_robin() -> None:
    d, queues = _dispatcher(4, timeout_s=1.0, policy="block")
    stop = threading.Event()
    for sid, q in enumerate(queues):
        q.put(_frame(sid), stop)
    t0 = time.perf_counter()
    frames, done = d.take(4, stop)
    assert sorted(f.source for _, f in frames) == [0, 1, 2, 3] and not done
    assert [seq for seq, _ in frames] == [0, 1, 2, 3]
    assert time.perf_counter() - t0 < 0.1  # full: no waiting for the timeout


def test_a_batch_closes_once_every_camera_is_in_it() -> None:
    """Two cameras, batch 8: waiting past one frame of each would only wait for their next frames."""
    d, queues = _dispatcher(2, timeout_s=1.0)
    stop = threading.Event()
    queues[0].put(_frame(0), stop)
    threading.Timer(0.05, lambda: queues[1].put(_frame(1), stop)).start()
    t0 = time.perf_counter()
    frames, _ = d.take(8, stop)
    assert sorted(f.source for _, f in frames) == [0, 1]
    assert 0.04 < time.perf_counter() - t0 < 0.5  # woken by the second camera's frame, not the 1 s timeout


def test_the_default_batch_shares_the_cameras_over_the_requests_in_flight() -> None:
    from tritonctl.stream.detect import auto_batch

    assert [auto_batch(n, None) for n in (0, 1, 2, 3, 4, 8, 16, 40)] == [1, 1, 1, 2, 2, 4, 8, 8]
    assert auto_batch(8, 1) == 8 and auto_batch(8, 4) == 2


def test_a_partial_batch_goes_after_the_timeout() -> None:
    d, queues = _dispatcher(3, timeout_s=0.08)
    stop = threading.Event()
    queues[0].put(_frame(0), stop)
    t0 = time.perf_counter()
    frames, done = d.take(8, stop)
    waited = time.perf_counter() - t0
    assert [f.source for _, f in frames] == [0] and not done
    assert 0.07 < waited < 0.5


def test_one_worker_assembles_at_a_time() -> None:
    """Two workers waiting on the same cameras get one batch of both frames, not two halves."""
    d, queues = _dispatcher(2, timeout_s=0.5)
    stop = threading.Event()
    got: list[list[int]] = []

    def worker() -> None:
        frames, _ = d.take(2, stop)
        got.append([f.source for _, f in frames])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    queues[0].put(_frame(0), stop)
    time.sleep(0.02)
    queues[1].put(_frame(1), stop)
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(2)
    assert sorted(got[0]) == [0, 1] and got[1:] == [[]]


def test_removed_sources_hand_back_their_frames_and_the_rest_go_on() -> None:
    d, queues = _dispatcher(2, timeout_s=0.0, policy="block")
    stop = threading.Event()
    queues[0].put(_frame(0), stop)
    queues[1].put(_frame(1), stop)
    left = d.remove(0)
    assert [f.source for f in left] == [0]
    frames, _ = d.take(4, stop)
    assert [f.source for _, f in frames] == [1]


def test_stopping_returns_the_frames_in_hand() -> None:
    d, queues = _dispatcher(2, timeout_s=5.0)
    stop = threading.Event()
    queues[0].put(_frame(0), stop)
    threading.Timer(0.05, lambda: (stop.set(), d.wake())).start()
    frames, done = d.take(8, stop)
    assert [f.source for _, f in frames] == [0] and done  # counted by the caller (interrupted), never lost


# ---------------------------------------------------------------- live cameras from a real RTSP server

_live = pytest.mark.server


class _Detect:
    """`tritonctl detect` as a user runs it, stopped with Ctrl-C (SIGINT) when the test has seen enough."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        self.summary_path = tmp / "summary.json"
        self.proc = subprocess.Popen([*TRITONCTL, "detect", *args, "--summary-json", str(self.summary_path)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "COLUMNS": "250"})

    def stop(self, timeout: float = 30) -> tuple[int, dict, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, json.loads(self.summary_path.read_text()), stderr


def _by_name(summary: dict) -> dict[str, dict]:
    return {s["name"] or s["uri"].rsplit("/", 1)[-1]: s for s in summary["sources"]}


def _accounted(src: dict) -> bool:
    return src["read"] == sum(src[k] for k in FRAME_COUNTS[1:])


@_live
def test_two_rtsp_cameras_stream_at_30_fps_batched_together(demo_triton: Triton, rtsp_server: RtspServer,
                                                            tmp_path: Path) -> None:
    run = _Detect([rtsp_server.url("cam0"), rtsp_server.url("cam1"), "-m", "shapes", "--url", demo_triton.url,
                   "--batch", "2"], tmp_path)
    time.sleep(6)
    code, summary, stderr = run.stop()
    assert code == 130 and "Traceback" not in stderr, stderr
    assert summary["batch"] == 2 and summary["concurrency"] == 2 and summary["ended_by"] == "interrupted: SIGINT"
    for src in summary["sources"]:
        assert src["policy"] == "latest" and src["error"] == "" and _accounted(src)
        assert src["fps"] >= 27, src  # 30 fps cameras, kept up with
        assert src["latency_ms"]["p99"] < 1000 and src["latency_ms"]["p50"] > 0
    # cross-stream batching: most requests carry a frame of each camera
    assert summary["requests"] < 0.75 * summary["frames"]["inferred"], summary


@_live
def test_a_paused_camera_stalls_reconnects_and_comes_back(demo_triton: Triton, rtsp_server: RtspServer,
                                                          tmp_path: Path) -> None:
    run = _Detect([rtsp_server.url("cam0"), rtsp_server.url("cam1"), "-m", "shapes", "--url", demo_triton.url,
                   "--stall-timeout", "1", "--reconnects", "8"], tmp_path)
    time.sleep(3)
    rtsp_server.pause("cam0")
    time.sleep(2.5)
    rtsp_server.resume("cam0")
    time.sleep(4)
    code, summary, stderr = run.stop()
    cam0, cam1 = summary["sources"]
    assert code == 130, stderr
    assert cam0["stalls"] >= 1 and cam0["reconnects"] >= 1 and cam0["error"] == "", cam0
    assert cam0["inferred"] > 5 * 30  # frames before the pause and after the camera came back
    assert cam1["stalls"] == 0 and cam1["inferred"] > 8 * 27  # the other camera never stopped
    assert _accounted(cam0) and _accounted(cam1)


@_live
def test_a_server_that_goes_away_is_given_up_and_the_others_go_on(demo_triton: Triton, camera_h264: Path,
                                                                  tmp_path: Path) -> None:
    with RtspServer.start({"cam0": camera_h264}) as gone, RtspServer.start({"cam1": camera_h264}) as stays:
        run = _Detect([gone.url("cam0"), stays.url("cam1"), "-m", "shapes", "--url", demo_triton.url,
                       "--stall-timeout", "1", "--reconnects", "2"], tmp_path)
        time.sleep(3)
        gone.stop()
        time.sleep(7)  # 1 s stall + back-off 0.5 + 1 s + retries: given up well within this
        code, summary, stderr = run.stop()
    cam0, cam1 = summary["sources"]
    assert code == 1 and "stalled: no frame after 2 reconnects" in stderr, stderr  # a camera given up fails the run
    assert "stalled: no frame after 2 reconnects" in cam0["error"], cam0
    assert cam1["error"] == "" and cam1["inferred"] > 9 * 27, cam1
    assert _accounted(cam0) and _accounted(cam1)


@_live
def test_a_server_that_comes_back_is_reconnected(demo_triton: Triton, camera_h264: Path, tmp_path: Path) -> None:
    with RtspServer.start({"cam0": camera_h264}) as server:
        run = _Detect([server.url("cam0"), "-m", "shapes", "--url", demo_triton.url, "--stall-timeout", "1",
                       "--reconnects", "10"], tmp_path)
        time.sleep(3)
        server.stop()
        time.sleep(1.5)
        server.restart()
        time.sleep(5)
        code, summary, stderr = run.stop()
    [cam0] = summary["sources"]
    assert code == 130, stderr
    assert cam0["error"] == "" and cam0["reconnects"] >= 1, cam0
    assert cam0["inferred"] > 5 * 30  # streaming again after the server's return


@_live
def test_ctrl_c_while_cameras_connect_still_writes_the_summary(demo_triton: Triton, tmp_path: Path) -> None:
    """A Ctrl-C 20 s into a run whose cameras were still opening printed "interrupted" and wrote no summary."""
    import socket

    silent = socket.socket()  # accepts the connection and never answers: an open that hangs
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam"
        run = _Detect([url, "-m", "shapes", "--url", demo_triton.url, "--stall-timeout", "5"], tmp_path)
        time.sleep(2)
        t0 = time.monotonic()
        code, summary, stderr = run.stop()
    finally:
        silent.close()
    assert code == 130 and "Traceback" not in stderr, stderr
    assert time.monotonic() - t0 < 10
    assert summary["ended_by"] == "interrupted: SIGINT" and summary["sources"][0]["inferred"] == 0


def _pipeline(path: Path, triton: Triton, sources: str) -> Path:
    path.write_text(f"model: shapes\nurls: ['{triton.url}']\nrun: {{stall_timeout: 2, json: {path.parent / 'all.jsonl'}}}\n"
                    f"sources:\n{sources}")
    return path


@_live
def test_a_reloaded_pipeline_file_adds_removes_and_restarts_sources(demo_triton: Triton, camera_h264: Path,
                                                                    tmp_path: Path) -> None:
    """Reload: `a` changed (restarted; its JSON Lines go on in a.1.jsonl, a.jsonl is kept), `b` removed, `c` added
    (and written to the run-wide JSON Lines, which once knew only the sources it started with)."""
    with RtspServer.start({f"cam{i}": camera_h264 for i in range(3)}) as cams:
        def source(name: str, cam: int, conf: float = 0.25) -> str:
            return (f"  - {{name: {name}, uri: '{cams.url(f'cam{cam}')}', conf: {conf}, "
                    f"outputs: {{json: {tmp_path / name}.jsonl}}}}\n")

        config = _pipeline(tmp_path / "cameras.yaml", demo_triton, source("a", 0) + source("b", 1))
        run = _Detect(["--config", str(config)], tmp_path)
        time.sleep(4)
        _pipeline(config, demo_triton, source("a", 0, conf=0.5) + source("c", 2))
        time.sleep(1)
        run.proc.send_signal(signal.SIGHUP)  # a file change is also seen within a second; SIGHUP is at once
        time.sleep(5)
        code, summary, stderr = run.stop()
    assert code == 130, stderr
    rows = summary["sources"]
    assert sorted((s["name"], s["state"]) for s in rows) == [("a", "removed"), ("a", "stopped"), ("b", "removed"),
                                                              ("c", "stopped")], rows
    assert all(s["inferred"] > 30 and s["error"] == "" and _accounted(s) for s in rows), rows
    assert summary["reloads"] >= 1  # the edit, seen by the watcher; SIGHUP may make a second (no change)
    written = {Path(w["path"]).name: w["frames"] for w in summary["written"]}
    assert {"a.jsonl", "a.1.jsonl", "b.jsonl", "c.jsonl", "all.jsonl"} <= set(written), written
    restarted = [json.loads(x) for x in (tmp_path / "a.1.jsonl").read_text().splitlines()]
    assert restarted and all(d["score"] >= 0.5 for line in restarted for d in line["detections"])  # the new conf
    everything = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert {line["uri"].rsplit("/", 1)[1] for line in everything} == {"cam0", "cam1", "cam2"}
    assert len(everything) == sum(s["inferred"] for s in rows)


@_live
def test_the_shipped_pipeline_example_runs(demo_triton: Triton, camera_h264: Path, demo_video: Path,
                                          tmp_path: Path) -> None:
    """configs/cameras.yaml, pointed at this test's cameras, server and video, runs as it is."""
    with RtspServer.start({f"cam{i}": camera_h264 for i in range(3)}) as cameras:
        text = (ROOT / "configs" / "cameras.yaml").read_text()
        host = cameras.url("cam0").split("//")[1].split("/")[0]
        text = text.replace("127.0.0.1:8554", host).replace("127.0.0.1:8000", demo_triton.url.removeprefix("http://"))
        (tmp_path / "out").mkdir()
        (tmp_path / "cameras.yaml").write_text(text.replace("videos/sample.mp4", str(demo_video)))
        proc = subprocess.Popen([*TRITONCTL, "detect", "--config", "cameras.yaml", "--summary-json", "s.json"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        time.sleep(6)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    gate = _by_name(summary)["gate"]
    assert gate["skipped_stride"] > 0 and gate["error"] == ""  # vid_stride 2
    lines = [json.loads(x) for x in (tmp_path / "out" / "gate.jsonl").read_text().splitlines()]
    dets = [d for line in lines for d in line["detections"]]
    assert lines and all(line["frame"] % 2 == 0 for line in lines)
    assert all(d["class_id"] == 0 and d["score"] >= 0.4 for d in dets)  # its own classes and conf
    assert (tmp_path / "out" / "gate.mp4").stat().st_size > 0
    recording = _by_name(summary)["recording"]
    assert recording["policy"] == "block" and recording["inferred"] == 60 and recording["state"] == "ended"


@_live
def test_the_live_view_serves_figures_and_frames(demo_triton: Triton, rtsp_server: RtspServer, tmp_path: Path) -> None:
    [port] = free_ports(1)
    run = _Detect([rtsp_server.url("cam0"), rtsp_server.url("cam1"), "-m", "shapes", "--url", demo_triton.url,
                   "--view", f"127.0.0.1:{port}"], tmp_path)
    try:
        figures: list[dict] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sources", timeout=2) as r:
                    figures = json.loads(r.read())
            except OSError:
                figures = []
            if len(figures) == 2 and all(f["fps"] > 20 for f in figures):
                break
            time.sleep(0.5)
        assert len(figures) == 2 and all(f["state"] == "streaming" and f["fps"] > 20 for f in figures), figures
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream/0.mjpg", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            assert b"\xff\xd8" in r.read(64 * 1024)  # a JPEG arrived
    finally:
        code, summary, stderr = run.stop()
    assert code == 130, stderr
    assert {s["state"] for s in summary["sources"]} == {"stopped"}  # by Ctrl-C, while streaming


@_live
def test_sixteen_cameras_stream_within_three_seconds(demo_triton: Triton, camera_h264: Path, tmp_path: Path) -> None:
    """OpenCV's FFmpeg opened RTSP cameras one after another, ~5 s each: 16 would have started after 80 s."""
    with RtspServer.start({f"cam{i}": camera_h264 for i in range(16)}) as cameras:
        time.sleep(1)  # the server's mounts are playing, as cameras are
        run = _Detect([cameras.url(f"cam{i}") for i in range(16)] + ["-m", "shapes", "--url", demo_triton.url], tmp_path)
        time.sleep(6)
        code, summary, stderr = run.stop()
    assert code == 130, stderr
    started = [s["first_frame_s"] for s in summary["sources"]]
    assert all(s is not None and s < 3.0 for s in started), started
