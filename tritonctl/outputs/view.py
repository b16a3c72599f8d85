"""`tritonctl detect --view HOST:PORT`: a live page in the browser, every stream annotated and its figures.

Three parts:
- `ViewSink`, called by the pipeline like its other sinks, draws and JPEG-encodes a source's frame only while a browser
  watches that source, at most `max_fps` a second, downscaled to `max_width`; the latest JPEG goes into a slot.
- `FrameBoard`, that slot per source, shared by the pipeline thread (writes) and the server's event loop (reads); a
  stream handler registers a wake-up callback, so it sleeps until a new frame, never polls.
- `ViewServer`, uvicorn running a starlette app in a background thread: `/` the page, `/stream/<id>.mjpg` a
  multipart/x-mixed-replace JPEG stream, `/api/sources` the figures as JSON.

`figures()` (given by detect) returns one dict per source the page shows; the page reads these keys, any may be missing:
  {"source": 0, "name": "gate", "uri": "rtsp://cam/1", "state": "streaming", "fps": 29.8, "latency_p50_ms": 41.0,
   "latency_p99_ms": 88.5, "dropped": 3, "stalls": 0, "reconnects": 1}
It is called from the server thread, once a second per open page: it must be thread-safe and quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from tritonctl.core.errors import BadInput, ServerError
from tritonctl.outputs.sinks import draw
from tritonctl.vision.detections import Detections

BOUNDARY = "tritonctl-frame"

# ---------------------------------------------------------------- the address


def parse_view_address(text: str) -> tuple[str, int]:
    """`--view` HOST:PORT -> (host, port). ":8080" binds 127.0.0.1: the page is only for this machine unless the user
    names an address (0.0.0.0 for every interface). IPv6 goes in brackets: [::1]:8080."""
    host, sep, port_text = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = (host[1:-1] if bracketed else host) or "127.0.0.1"
    ambiguous = ":" in host and not bracketed  # ::1:8080: is 8080 the port or part of the address?
    if not sep or ambiguous or not _valid_host(host) or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadInput(f"--view {text}: expected HOST:PORT with a port 1-65535, e.g. --view 127.0.0.1:8080, "
                       f"--view :8080 (this machine only) or --view 0.0.0.0:8080 (every interface)")
    return host, int(port_text)


def _valid_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- the latest frame per source


class FrameBoard:
    """The latest JPEG per source (a slot, not a queue: a slow reader only misses frames) and who watches it.

    Thread-safe: the pipeline thread publishes, the server's event loop reads. A watcher gives a `wake` callback that
    publish calls from the pipeline thread; the server's is `loop.call_soon_threadsafe(event.set)`, so the stream
    handler awaits an asyncio.Event instead of polling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[int, tuple[int, bytes]] = {}  # source -> (sequence number, JPEG)
        self._watchers: dict[int, dict[int, Callable[[], None]]] = {}  # source -> token -> wake
        self._seen: set[int] = set()  # sources the sink wrote, watched or not
        self._tokens = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def watching(self, source: int) -> bool:
        """Is any browser streaming this source? Also marks the source as known (for the stream route's 404)."""
        with self._lock:
            self._seen.add(source)
            return not self._closed and bool(self._watchers.get(source))

    def known(self) -> set[int]:
        with self._lock:
            return set(self._seen)

    def publish(self, source: int, jpeg: bytes) -> None:
        with self._lock:
            seq = self._slots.get(source, (0, b""))[0] + 1
            self._slots[source] = (seq, jpeg)
            wakes = list(self._watchers.get(source, {}).values())
        for wake in wakes:  # outside the lock: a wake-up never holds up the other watchers or the pipeline
            wake()

    def latest(self, source: int, after: int) -> tuple[int, bytes] | None:
        """The newest frame if it is newer than sequence number `after`, else None."""
        with self._lock:
            slot = self._slots.get(source)
        return slot if slot is not None and slot[0] > after else None

    def watch(self, source: int, wake: Callable[[], None]) -> int:
        with self._lock:
            self._tokens += 1
            self._watchers.setdefault(source, {})[self._tokens] = wake
            return self._tokens

    def unwatch(self, source: int, token: int) -> None:
        with self._lock:
            self._watchers.get(source, {}).pop(token, None)

    def close(self) -> None:
        """Streams end: every watcher is woken and finds the board closed."""
        with self._lock:
            self._closed = True
            wakes = [w for ws in self._watchers.values() for w in ws.values()]
        for wake in wakes:
            wake()


# ---------------------------------------------------------------- the sink on the pipeline's hot path


class ViewSink:
    """Annotated JPEGs for the page. Costs one lock and a dict lookup per frame while nobody watches a source."""

    def __init__(self, board: FrameBoard, max_fps: float = 15.0, max_width: int = 960, quality: int = 75,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.board, self.max_width, self.quality, self.clock = board, max_width, quality, clock
        self.interval = 1.0 / max_fps
        self.due: dict[int, float] = {}  # source -> when its next frame may be encoded
        self.encoded: dict[int, int] = {}  # source -> JPEGs made (what the page cost)

    def write(self, result: Any, info: Any) -> None:
        sid = result.frame.source
        if not self.board.watching(sid) or not self._due(sid):
            return
        image = annotate(result.frame.image, result.detections, info.names, self.max_width)
        self.board.publish(sid, encode_jpeg(image, self.quality))
        self.encoded[sid] = self.encoded.get(sid, 0) + 1

    def _due(self, sid: int) -> bool:
        """At most max_fps per source. A fifth of an interval of slack, so a 30 fps source gives a steady 15 fps
        instead of every third frame when arrivals jitter around the deadline; the deadline advances by whole
        intervals, so the slack never adds up to a higher rate."""
        now = self.clock()
        due = self.due.get(sid, now)
        if now < due - 0.2 * self.interval:
            return False
        self.due[sid] = max(due + self.interval, now - self.interval)  # after a pause: no burst to catch up
        return True

    def written(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass  # the server owns the board: the page keeps the last frames until it stops

    def discard(self) -> None:
        pass


def annotate(image: np.ndarray, det: Detections, names: dict[int, str], max_width: int) -> np.ndarray:
    """The frame with its boxes, at most max_width wide. Never changes `image` (the other sinks draw on it too).
    Shrinks first (the copy comes free with it), then draws scaled boxes: labels stay legible, fewer pixels drawn."""
    import cv2

    h, w = image.shape[:2]
    if w <= max_width:
        return draw(image.copy(), det, names)
    scale = max_width / w
    # INTER_LINEAR: INTER_AREA looks better below half size but costs 3-8 ms a frame at ratios other than 2:1
    # (1280 or 2560 px wide) against under 1.2 ms, and this is the pipeline's thread.
    small = cv2.resize(image, (max_width, max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)
    return draw(small, dataclasses.replace(det, boxes=det.boxes * np.float32(scale)), names)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {image.shape} frame as JPEG")
    return buf.tobytes()


# ---------------------------------------------------------------- the server


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: detect owns SIGINT/SIGTERM and stops the server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ViewServer:
    def __init__(self, host: str, port: int, figures: Callable[[], list[dict[str, Any]]],
                 board: FrameBoard | None = None) -> None:
        self.host, self.port, self.figures = host, port, figures
        self.board = board or FrameBoard()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Where to point a browser: a wildcard address (0.0.0.0, ::) is reached through this machine's loopback."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{_display(host, self.port)}/"

    def start(self, timeout_s: float = 10.0) -> None:
        """Listen, serve in a background thread, return once requests are answered. The socket is bound here, not by
        uvicorn, so a port in use is a BadInput now instead of a log line and a dead thread."""
        sock = self._bind()
        self.port = sock.getsockname()[1]  # the real port when 0 was asked for
        config = uvicorn.Config(self.app(), loop="asyncio", http="h11", lifespan="off", log_config=None,
                                log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="tritonctl-view", daemon=True)
        self._thread.start()
        self._wait_started(timeout_s)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait out TIME_WAIT
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise BadInput(self._bind_problem(exc)) from None
        return sock

    def _bind_problem(self, exc: OSError) -> str:
        where = f"--view {_display(self.host, self.port)}"
        if exc.errno == errno.EADDRINUSE:
            return f"{where}: port in use (another --view or server listens there); choose another, e.g. " \
                   f"--view {_display(self.host, self.port + 1 if self.port < 65535 else 8080)}"
        return f"{where}: cannot listen there ({exc.strerror}); use an address of this machine, e.g. --view 127.0.0.1:8080"

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:  # uvicorn exits with SystemExit on startup failures: start() reports it
            self._error = exc
        finally:
            sock.close()

    def _wait_started(self, timeout_s: float) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"--view {_display(self.host, self.port)}: the page server did not start "
                                  f"({self._error or 'timed out'})")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Within about half a second, MJPEG clients or not: closing the board ends every stream at once (they would
        otherwise hold uvicorn's graceful shutdown open forever); uvicorn's own 1 s grace period is the backstop."""
        if self._server is None or self._thread is None:
            return
        self.board.close()
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(1.0)
        self._server = self._thread = None

    # ------------------------------------------------ the app

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/", self._page),
            Route("/api/sources", self._sources),
            Route("/stream/{sid:int}.mjpg", self._stream),
        ])

    async def _page(self, request: Request) -> Response:
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def _sources(self, request: Request) -> Response:
        body = json.dumps(self.figures(), default=_jsonable)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    def _known(self) -> set[int]:
        """Sources the page may stream: those in figures() (a tile shows before the first frame) or written."""
        listed = {int(f["source"]) for f in self.figures() if "source" in f}
        return listed | self.board.known()

    async def _stream(self, request: Request) -> Response:
        sid: int = request.path_params["sid"]
        if sid not in self._known():
            return Response(f"no source {sid}\n", status_code=404, media_type="text/plain")
        return StreamingResponse(mjpeg_parts(self.board, sid), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _jsonable(value: Any) -> Any:
    """numpy numbers in figures() (np.int64 counters, np.float32 rates) as plain JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def mjpeg_parts(board: FrameBoard, sid: int) -> AsyncIterator[bytes]:
    """The source's frames as multipart parts, each new frame once, until the board closes or the client leaves
    (starlette then cancels this generator; `finally` unregisters it, so the sink stops encoding for it).

    Each part ends with the next boundary: browsers show a part once they see the boundary after it, so sending
    it right away shows the frame now instead of one frame late."""
    loop, event = asyncio.get_running_loop(), asyncio.Event()
    token = board.watch(sid, lambda: _wake(loop, event))
    try:
        yield f"--{BOUNDARY}\r\n".encode()
        seq = 0
        while not board.closed:
            event.clear()  # before looking: a frame published after the look sets it again, none is missed
            frame = board.latest(sid, seq)
            if frame is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), 1.0)  # the timeout only bounds a lost wake-up
                continue
            seq, jpeg = frame
            yield _part(jpeg)
    finally:
        board.unwatch(sid, token)


def _wake(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    """Called from the pipeline thread: asyncio.Event is not thread-safe, so set it on its own loop."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone, nobody waits
        loop.call_soon_threadsafe(event.set)


def _part(jpeg: bytes) -> bytes:
    head = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return head + jpeg + f"\r\n--{BOUNDARY}\r\n".encode()


# ---------------------------------------------------------------- the page (no external assets: it works offline)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tritonctl detect: live view</title>
<style>
  :root { color-scheme: dark; }
  body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #14161a; color: #e6e6e6; }
  header { display: flex; align-items: baseline; gap: 1em; padding: 10px 16px; background: #1d2026;
           border-bottom: 1px solid #2c3038; }
  header h1 { font-size: 16px; margin: 0; font-weight: 600; }
  #status { color: #8a919c; font-size: 12px; }
  #status.lost { color: #ff6b6b; }
  main { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 14px; padding: 14px; }
  .tile { background: #1d2026; border: 1px solid #2c3038; border-radius: 6px; overflow: hidden; }
  .tile h2 { display: flex; justify-content: space-between; gap: 8px; margin: 0; padding: 6px 10px;
             font-size: 13px; font-weight: 600; }
  .tile h2 .uri { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .state { font-weight: 500; padding: 0 6px; border-radius: 3px; background: #3a3f48; }
  .state.streaming, .state.running, .state.live { background: #1f6f3f; }
  .state.reconnecting, .state.stalled { background: #8a6d1f; }
  .state.down, .state.failed, .state.ended { background: #7a2a2a; }
  .tile img { display: block; width: 100%; aspect-ratio: 16 / 9; object-fit: contain; background: #000; }
  .figures { display: grid; grid-template-columns: repeat(6, 1fr); padding: 6px 10px; gap: 4px;
             font-variant-numeric: tabular-nums; }
  .figures div { display: flex; flex-direction: column; }
  .figures span { color: #8a919c; font-size: 11px; }
  .figures b { font-weight: 600; }
  #empty { padding: 40px; color: #8a919c; }
</style>
</head>
<body>
<header><h1>tritonctl detect &middot; live view</h1><span id="status">connecting&hellip;</span></header>
<main id="tiles"></main>
<div id="empty" hidden>No sources yet.</div>
<script>
"use strict";
const FIELDS = [["fps", "fps", 1], ["latency_p50_ms", "p50 ms", 1], ["latency_p99_ms", "p99 ms", 1],
                ["dropped", "dropped", 0], ["stalls", "stalls", 0], ["reconnects", "reconnects", 0]];
const tiles = new Map();  // source id -> {el, img, uri, state, values}

function fmt(v, digits) {
  return typeof v === "number" ? v.toFixed(digits) : (v === undefined || v === null ? "\\u2013" : String(v));
}

function streamUrl(id) { return "/stream/" + id + ".mjpg?t=" + Date.now(); }

function makeTile(id) {
  const el = document.createElement("section");
  el.className = "tile";
  el.dataset.source = id;
  const h2 = document.createElement("h2");
  const uri = document.createElement("span");
  uri.className = "uri";
  const state = document.createElement("span");
  state.className = "state";
  h2.append(uri, state);
  const img = document.createElement("img");
  img.alt = "source " + id;
  // A stream that fails (the source not known yet, the server restarting) is retried while the tile exists.
  img.onerror = () => setTimeout(() => { if (tiles.has(id)) img.src = streamUrl(id); }, 2000);
  img.src = streamUrl(id);
  const figures = document.createElement("div");
  figures.className = "figures";
  const values = {};
  for (const [key, label] of FIELDS) {
    const cell = document.createElement("div");
    const name = document.createElement("span");
    name.textContent = label;
    values[key] = document.createElement("b");
    cell.append(name, values[key]);
    figures.append(cell);
  }
  el.append(h2, img, figures);
  document.getElementById("tiles").append(el);
  const counts = document.createElement("div");
  counts.className = "counts";  // zones and lines of the pipeline file, when the source has any
  figures.append(counts);
  const tile = {el, img, uri, state, values, counts};
  tiles.set(id, tile);
  return tile;
}

function update(tile, src) {
  tile.uri.textContent = "#" + src.source + " " + (src.name ? src.name + " " : "") + (src.uri || "");
  tile.uri.title = src.uri || "";
  tile.state.textContent = src.state || "";
  tile.state.className = "state " + (src.state || "");
  for (const [key, , digits] of FIELDS) tile.values[key].textContent = fmt(src[key], digits);
  tile.counts.textContent = src.counts || "";
}

function drop(id) {
  const tile = tiles.get(id);
  tiles.delete(id);
  tile.img.onerror = null;
  tile.img.removeAttribute("src");  // closes the stream: the server stops encoding for it
  tile.el.remove();
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/api/sources", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const sources = await response.json();
    const seen = new Set();
    for (const src of sources) {
      seen.add(src.source);
      update(tiles.get(src.source) || makeTile(src.source), src);
    }
    for (const id of [...tiles.keys()]) if (!seen.has(id)) drop(id);
    document.getElementById("empty").hidden = sources.length > 0;
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "";
  } catch (err) {
    status.textContent = "connection lost (" + err.message + "), retrying";
    status.className = "lost";
  } finally {
    setTimeout(poll, 1000);
  }
}
poll();
</script>
</body>
</html>
"""
