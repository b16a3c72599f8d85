"""`--view`: the live page, checked in a real headless Chromium fed by a ViewSink with moving synthetic frames."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import free_ports

from tritonctl.core.errors import BadInput
from tritonctl.outputs.view import FrameBoard, ViewServer, ViewSink, parse_view_address
from tritonctl.vision.detections import Detections
from tritonctl.vision.synthetic import CLASS_NAMES, video_frames

pytestmark = pytest.mark.server

NAMES = dict(enumerate(CLASS_NAMES))
INFO = SimpleNamespace(names=NAMES)


def clip(source: int, n: int = 60, width: int = 640, height: int = 360) -> list[tuple[np.ndarray, Detections]]:
    """Frames of drifting shapes with their true boxes as detections."""
    out = []
    for image, boxes in video_frames(n, width, height, seed=source):
        rows = np.array([[b.x1, b.y1, b.x2, b.y2, 0.9, b.cls] for b in boxes], np.float32).reshape(-1, 6)
        out.append((image, Detections.from_rows(rows)))
    return out


def result(source: int, image: np.ndarray, det: Detections) -> SimpleNamespace:
    return SimpleNamespace(frame=SimpleNamespace(source=source, image=image), detections=det)


class Feed:
    """The pipeline stand-in: writes each active source's frames to the sink at ~30 fps, and the figures the page shows
    (counters that advance with the frames)."""

    def __init__(self, sink: ViewSink, sources: list[int]) -> None:
        self.sink, self.active = sink, list(sources)
        self.clips = {sid: clip(sid) for sid in range(4)}
        self.frames = dict.fromkeys(range(4), 0)
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1 / 30):
            with self.lock:
                active = list(self.active)
            for sid in active:
                image, det = self.clips[sid][self.frames[sid] % len(self.clips[sid])]
                self.sink.write(result(sid, image, det), INFO)
                self.frames[sid] += 1

    def figures(self) -> list[dict[str, Any]]:
        with self.lock:
            active = list(self.active)
        return [{"source": sid, "uri": f"synthetic://{sid}", "state": "streaming", "fps": np.float32(30.0),
                 "latency_p50_ms": 40 + self.frames[sid] % 7, "latency_p99_ms": 80.5, "dropped": np.int64(self.frames[sid] // 10),
                 "stalls": 0, "reconnects": 0} for sid in active]

    def set_sources(self, sources: list[int]) -> None:
        with self.lock:
            self.active = list(sources)


@pytest.fixture
def live() -> Iterator[tuple[ViewServer, Feed]]:
    board = FrameBoard()
    feed = Feed(ViewSink(board), [0, 1])
    server = ViewServer("127.0.0.1", free_ports(1)[0], feed.figures, board)
    server.start()
    feed.thread.start()
    try:
        yield server, feed
    finally:
        feed.stop.set()
        feed.thread.join()
        server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Any, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- the address


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    (":8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ("[::1]:8080", ("::1", 8080)),
    ("localhost:9000", ("localhost", 9000)),
])
def test_parse_view_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_view_address(text) == expected


@pytest.mark.parametrize("text", ["8080", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "host:80",
                                  "::1:8080", "[::1]", "1.2.3:80", ":http", ""])
def test_parse_view_address_refuses(text: str) -> None:
    with pytest.raises(BadInput) as err:
        parse_view_address(text)
    message = str(err.value)
    assert "\n" not in message and f"--view {text}" in message and "e.g. --view 127.0.0.1:8080" in message


# ---------------------------------------------------------------- the server without a browser


def test_port_in_use_is_bad_input() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(BadInput) as err:
            ViewServer("127.0.0.1", port, list).start()
    finally:
        taken.close()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--view 127.0.0.1:{port}: port in use"), message


def test_unknown_stream_is_404_and_sources_json(live: tuple[ViewServer, Feed]) -> None:
    server, _ = live
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "stream/7.mjpg", timeout=5)
    assert err.value.code == 404
    with urllib.request.urlopen(server.url + "api/sources", timeout=5) as response:
        sources = json.load(response)
    assert [s["source"] for s in sources] == [0, 1] and sources[0]["fps"] == 30.0  # numpy numbers as JSON numbers
    with urllib.request.urlopen(server.url, timeout=5) as response:
        page = response.read().decode()
    assert "/api/sources" in page and "<script src" not in page and "<link" not in page  # self-contained


def read_part(stream: Any) -> bytes:
    """One JPEG from a multipart/x-mixed-replace body: headers, Content-Length bytes, then the next boundary."""
    length = 0
    while (line := stream.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    jpeg = stream.read(length)
    assert stream.readline() == b"\r\n" and stream.readline().startswith(b"--")
    return jpeg


def test_mjpeg_stream_and_stop_with_client_connected(live: tuple[ViewServer, Feed]) -> None:
    server, _ = live
    response = urllib.request.urlopen(server.url + "stream/0.mjpg", timeout=5)
    assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
    assert response.readline().startswith(b"--")
    first, second = read_part(response), read_part(response)
    image = cv2.imdecode(np.frombuffer(second, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3) and first != second  # moving content: each part a new frame
    started = time.monotonic()
    server.stop()  # a client is still reading the stream
    assert time.monotonic() - started < 2.0
    response.close()


def test_downscale_and_rate_limit() -> None:
    """A 1920 px source at 60 fps, one watcher: JPEGs at most 960 px wide, about max_fps of them a second."""
    board = FrameBoard()
    sink = ViewSink(board, max_fps=15)
    wakes: list[int] = []
    board.watch(0, lambda: wakes.append(1))
    (image, det), = clip(0, n=1, width=1920, height=1080)
    before = image.copy()
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        sink.write(result(0, image, det), INFO)
        time.sleep(1 / 60)
    assert np.array_equal(image, before)  # the other sinks' frame is untouched
    assert 12 <= sink.encoded[0] <= 17 and len(wakes) == sink.encoded[0], sink.encoded
    latest = board.latest(0, 0)
    assert latest is not None
    jpeg = cv2.imdecode(np.frombuffer(latest[1], np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (540, 960, 3)


def test_write_costs_nothing_when_nobody_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_encoding(*args: Any) -> Any:
        raise AssertionError("a JPEG was encoded with nobody watching")

    (image, det), = clip(0, n=1, width=1920, height=1080)
    monkeypatch.setattr(cv2, "imencode", no_encoding)
    monkeypatch.setattr(cv2, "resize", no_encoding)
    board = FrameBoard()
    sink = ViewSink(board)
    frame = result(0, image, det)
    n = 20000
    started = time.process_time()
    for _ in range(n):
        sink.write(frame, INFO)
    per_write = (time.process_time() - started) / n
    assert sink.encoded == {} and board.latest(0, 0) is None
    assert per_write < 50e-6, f"{per_write * 1e6:.1f} µs per write"


# ---------------------------------------------------------------- the page in a real browser


def tile_ids(driver: Any) -> list[str]:
    """Read in one script: a tile the page removes between finding it and reading it would be a stale element."""
    return list(driver.execute_script("return [...document.querySelectorAll('.tile')].map(t => t.dataset.source);"))


def frames_arrived(driver: Any) -> bool:
    return bool(driver.execute_script(
        "const imgs = [...document.querySelectorAll('.tile img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete !== undefined && i.naturalWidth > 0);"))


def figures_text(driver: Any, sid: int) -> str:
    """In one script, as tile_ids: the page rewrites the figures twice a second."""
    return str(driver.execute_script(
        f"const e = document.querySelector('.tile[data-source=\"{sid}\"] .figures'); return e ? e.innerText : '';"))


def test_page_in_headless_chromium(live: tuple[ViewServer, Feed], browser: Any) -> None:
    server, feed = live
    browser.get(server.url)
    wait_for(lambda: tile_ids(browser) == ["0", "1"], what="a tile per source")
    wait_for(lambda: frames_arrived(browser), what="a frame in every tile")
    assert all(feed.sink.encoded.get(sid, 0) > 0 for sid in (0, 1))

    before = figures_text(browser, 0)
    time.sleep(2.2)
    after = figures_text(browser, 0)
    assert before != after and "dropped" in after, (before, after)

    feed.set_sources([0, 1, 2])  # a source appears at run time
    wait_for(lambda: tile_ids(browser) == ["0", "1", "2"], what="the new source's tile")
    wait_for(lambda: frames_arrived(browser), what="the new source's frames")
    browser.save_screenshot("/tmp/view.png")

    feed.set_sources([0, 2])  # and one goes away: its tile, and its stream, with it
    wait_for(lambda: tile_ids(browser) == ["0", "2"], what="the gone source's tile removed")
    encoded = wait_for(lambda: _settled(feed.sink, 1), what="source 1 no longer encoded")
    time.sleep(0.5)
    assert feed.sink.encoded[1] == encoded  # nobody watches it now: no more JPEGs

    started = time.monotonic()
    server.stop()  # the browser still streams 0 and 2
    assert time.monotonic() - started < 2.0


def _settled(sink: ViewSink, sid: int) -> int | None:
    """The source's JPEG count once it stopped changing for 0.3 s (the browser closes a dropped stream promptly)."""
    first = sink.encoded.get(sid, 0)
    time.sleep(0.3)
    return first if sink.encoded.get(sid, 0) == first else None
