"""`tritonctl detect`: sources -> readers -> inference workers (letterbox into the request's buffer, infer on the
least-busy healthy endpoint, decode) -> one writer (in order: annotated video, JSON Lines) -> a summary.

Every queue is bounded. Readers: `block` for files (every frame), `latest` for live sources (newest frame; drops
counted). Workers take frames round-robin from the sources, so one busy source cannot starve the others.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.client import EndpointPool, InferSlot, ModelInfo, TransientError, fetch_model_info, server_stats
from tritonctl.endpoint import Endpoint, parse_endpoints
from tritonctl.errors import BadInput, ServerError, TritonctlError
from tritonctl.metrics import LatencyHistogram
from tritonctl.postprocess import PostSettings, decode
from tritonctl.preprocess import Preprocessor
from tritonctl.sinks import image_names, output_targets, partial_path
from tritonctl.video import Frame, FrameQueue, Reader, SourceSpec, parse_sources

STAGES = ("decode", "preprocess", "queue", "round_trip", "postprocess", "end_to_end")


@dataclass(frozen=True)
class DetectSettings:
    sources: list[SourceSpec]
    endpoints: list[Endpoint]
    model: str
    protocol: str = "http"
    shm: str = "auto"
    concurrency: int | None = None
    batch: int = 1
    realtime: bool | None = None
    vid_stride: int = 1
    post: PostSettings = field(default_factory=PostSettings)
    output: Path | None = None
    json_path: Path | None = None
    summary_json: Path | None = None
    show: bool = False
    server_timeout_s: float = 30.0
    queue_size: int = 8
    stall_timeout_s: float = 5.0
    reconnects: int = 5

    @classmethod
    def create(cls, *, sources: list[str], urls: list[str], **kw: Any) -> DetectSettings:
        endpoints = parse_endpoints(urls, kw.get("protocol", "http"))
        s = cls(sources=parse_sources(sources), endpoints=endpoints, **kw)
        if s.shm not in ("auto", "system", "none"):
            raise BadInput(f"--shm {s.shm!r}: choose auto, system or none")
        if s.concurrency is not None and s.concurrency < 1:
            raise BadInput("--concurrency must be at least 1")
        if s.stall_timeout_s <= 0 or s.reconnects < 0:
            raise BadInput("--stall-timeout must be positive and --reconnects at least 0")
        if s.batch < 1 or s.vid_stride < 1 or s.queue_size < 1:
            raise BadInput("--batch, --vid-stride and the queue size must be at least 1")
        if s.shm == "system" and not all(e.local for e in s.endpoints):
            raise BadInput("--shm system needs the server on this host (127.0.0.1/localhost): use --shm none for remote ones")
        check_outputs(s)
        return s

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def output_targets(self) -> dict[int, Path]:
        """Per source, the video file or the image folder `--output` writes (see sinks.output_targets)."""
        return output_targets(self.output, self.sources) if self.output is not None else {}

    def output_files(self) -> list[tuple[str, Path]]:
        """(flag, path) of every file the run writes; an image source's folder stands for the images in it."""
        files = [("--output", p) for p in self.output_targets().values()]
        files += [(flag, p) for flag, p in (("--json", self.json_path), ("--summary-json", self.summary_json)) if p]
        return files


_EXAMPLE_NAMES = {"--output": "out.mp4", "--json": "detections.jsonl", "--summary-json": "summary.json"}


def check_outputs(s: DetectSettings) -> None:
    """Refuse, before anything runs, an output that would replace a source or another output, that is a folder where
    a file goes (or a file where a folder goes), or that OpenCV could not write: a user's input is never overwritten."""
    inputs = {key: uri for src in s.sources for path, uri in _source_files(src) for key in _file_keys(path)}
    taken: dict[object, str] = {}
    for flag, path, folder in _planned_files(s):
        if folder is None:
            _check_writable(flag, path)
        keys = _file_keys(path) | _file_keys(partial_path(path))
        if clash := next((inputs[k] for k in keys if k in inputs), None):
            if folder is not None:
                raise BadInput(f"--output {folder} holds source images ({clash}): the annotated images would replace "
                               "your inputs; choose another folder")
            raise BadInput(f"{flag} {path} is a source ({clash}): writing it would replace your input; "
                           "choose another file name")
        if other := next((taken[k] for k in keys if k in taken), None):
            raise BadInput(f"{flag} {path} is also written by {other}: give each output its own file name")
        taken.update(dict.fromkeys(keys, f"{flag} {folder or path}"))
    _check_outside_inputs(s)


def _check_outside_inputs(s: DetectSettings) -> None:
    """Annotated images never go into an input folder (a source folder or a glob's folders, itself or below: the next
    run over it, or a `**` glob, would read them as inputs), nor straight into the folder of a single source image;
    a subfolder next to a single image (`photo.jpg --output annotated/`) is fine."""
    below: dict[Path, Path] = {}
    at: dict[Path, Path] = {}
    for src in s.sources:
        if src.kind != "images":
            continue
        uri = Path(src.uri)
        if uri.is_file():
            at[uri.resolve().parent] = uri.parent
        else:  # a folder, or a glob
            below.update({f.resolve(): f for f in [*([uri] if uri.is_dir() else []), *(p.parent for p in src.paths)]})
    specs = {src.id: src for src in s.sources}
    for sid, target in s.output_targets().items():
        if specs[sid].kind != "images":
            continue
        where = target.resolve()
        named = s.output.resolve() if s.output is not None else where  # several sources: <named>/<id>/ per source
        inside = next((shown for folder, shown in below.items() if where.is_relative_to(folder)), None)
        inside = inside if inside is not None else at.get(where, at.get(named))
        if inside is not None:
            raise BadInput(f"--output {s.output} is inside the input folder {inside or '.'}: the annotated images would "
                           "mix with your inputs; choose a folder outside it, e.g. a sibling")


def _planned_files(s: DetectSettings) -> list[tuple[str, Path, Path | None]]:
    """(flag, file, its image folder or None) of every file the run may write, image folders checked on the way."""
    files: list[tuple[str, Path, Path | None]] = []
    specs = {src.id: src for src in s.sources}
    for sid, target in s.output_targets().items():
        if specs[sid].kind != "images":
            files.append(("--output", target, None))
            continue
        _check_folder(s.output if s.output is not None and target.parent == s.output else target, target)
        files += [("--output", target / name, target) for name in image_names(specs[sid]).values()]
    files += [(flag, p, None) for flag, p in (("--json", s.json_path), ("--summary-json", s.summary_json)) if p]
    return files


def _check_folder(top: Path, folder: Path) -> None:
    """An image folder (`folder`, inside or equal to `top`, the one --output names): never a file; `top`, or the
    folder it goes in, exists and is writable (we create at most `top` and `folder`)."""
    for path in dict.fromkeys((top, folder)):
        if path.exists() and not path.is_dir():
            raise BadInput(f"--output {path} is a file: annotated images go into a folder; name a folder, e.g. annotated/")
    home = top if top.is_dir() else top.parent
    if not home.is_dir():
        raise BadInput(f"cannot write {top}: folder {home} does not exist")
    if not os.access(home, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {top}: folder {home} is not writable")


def _source_files(src: SourceSpec) -> list[tuple[Path, str]]:
    if src.kind == "images":
        return [(p, str(p)) for p in src.paths]
    return [(Path(src.uri), src.uri)] if src.kind == "video" else []


def _file_keys(path: Path) -> set[object]:
    """Ways the same file can be named twice: its resolved path (symlinks, `..`) and, when it exists, its inode."""
    keys: set[object] = {path.resolve()}
    try:
        st = path.stat()
        keys.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    return keys


def _check_writable(flag: str, path: Path) -> None:
    if path.is_dir():
        raise BadInput(f"{flag} {path} is a folder: give a file name, e.g. {path / _EXAMPLE_NAMES[flag]}")
    if not path.parent.is_dir():
        raise BadInput(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {path}: folder {path.parent} is not writable")


# ---------------------------------------------------------------- results and statistics


@dataclass
class Result:
    seq: int
    frame: Frame
    detections: np.ndarray | None  # None: not inferred, the run stopped while its request waited for a server
    timings: dict[str, float]
    endpoint: str = ""


PROBLEMS_KEPT = 20  # distinct problem lines kept for the summary; later ones are only counted


@dataclass
class RunStats:
    """What the summary reports. Fixed size whatever the run's length: counters per source and per endpoint, and one
    histogram per stage (see LatencyHistogram for its precision).

    Every frame read ends in exactly one count (per source): inferred; skipped by --vid-stride; dropped by a `latest`
    queue; interrupted (Ctrl-C/SIGTERM came first: still queued, in a reader's hand, or waiting for a server); failed
    (an image that cannot be decoded). The readers hold their share, this object the rest; summarize adds them up."""

    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0
    inferred: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    interrupted: dict[int, int] = field(default_factory=dict)
    stages: dict[str, LatencyHistogram] = field(default_factory=lambda: {k: LatencyHistogram() for k in STAGES})
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    problems_dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: Result) -> None:
        with self.lock:
            target = self.interrupted if result.detections is None else self.inferred
            target[result.frame.source] = target.get(result.frame.source, 0) + 1
            if result.detections is not None:
                for k, v in result.timings.items():
                    self.stages[k].add(v)
                self.per_endpoint[result.endpoint] = self.per_endpoint.get(result.endpoint, 0) + 1

    def problem(self, text: str) -> None:
        """Each distinct problem once, the first PROBLEMS_KEPT of them; when full, later reports are only counted."""
        with self.lock:
            if text in self.problems:
                return
            if len(self.problems) < PROBLEMS_KEPT:
                self.problems.append(text)
            else:
                self.problems_dropped += 1


class Dispatcher:
    """Hands frames to workers round-robin over the sources, numbering them in the order they leave.

    At most `window` numbered frames are out at once (in a worker, or in the ordered emitter waiting for an older one).
    When the window is full take() waits, the source queues fill, and their policy applies: a file's reader waits, a
    live source drops its oldest frame. So one slow request cannot make the emitter's reorder buffer grow."""

    def __init__(self, queues: list[FrameQueue], window: int) -> None:
        self.queues, self.window = queues, window
        self._lock = threading.Lock()
        self._next_source = 0
        self._seq = 0
        self.emitted = 0  # frames the emitter has passed on, in order; advanced by Detection.emit

    def take(self, n: int, stop: threading.Event) -> tuple[list[tuple[int, Frame]], bool]:
        """Up to n frames; (frames, done) where done means every source is exhausted."""
        while not stop.is_set():
            with self._lock:
                room = self.window - (self._seq - self.emitted)
                frames = self._collect(min(n, room)) if room > 0 else []
                if frames:
                    return frames, False
                if room > 0 and all(q.exhausted for q in self.queues):
                    return [], True
            time.sleep(0.001)
        return [], True

    def _collect(self, n: int) -> list[tuple[int, Frame]]:
        frames: list[tuple[int, Frame]] = []
        for _ in range(len(self.queues) * n):
            if len(frames) == n:
                break
            q = self.queues[self._next_source]
            self._next_source = (self._next_source + 1) % len(self.queues)
            frame = q.get_nowait()
            if frame is not None:
                frames.append((self._seq, frame))
                self._seq += 1
        return frames

    def drain(self) -> list[Frame]:
        left = []
        for q in self.queues:
            while (f := q.get_nowait()) is not None:
                left.append(f)
        return left


class Worker(threading.Thread):
    def __init__(self, wid: int, run: Detection) -> None:
        super().__init__(name=f"infer-{wid}", daemon=True)
        self.run_ = run
        s, info = run.settings, run.info
        use_shm = s.shm == "system" or (s.shm == "auto" and any(e.local for e in run.pool.endpoints))
        self.slot = InferSlot(info, run.batch, s.protocol, use_shm, shm_required=s.shm == "system")
        try:
            self.pre = Preprocessor(info.height, info.width, info.input_np, run.batch, out=self.slot.inputs)
        except BaseException:
            self.slot.close()
            raise
        self.error: BaseException | None = None

    def run(self) -> None:
        r = self.run_
        try:
            while True:
                frames, done = r.dispatcher.take(r.batch, r.stop)
                if done:
                    break
                self._process(frames)
        except BaseException as exc:  # surfaced by Detection.run, which stops the others
            self.error = exc
            r.stop.set()
        finally:
            for problem in self.slot.close():
                r.stats.problem(problem)
            with r.stats.lock:
                r.stats.bytes_sent += self.slot.bytes_sent

    def _process(self, frames: list[tuple[int, Frame]]) -> None:
        r = self.run_
        t0 = time.perf_counter()
        boxes = [self.pre(frame.image, row=k) for k, (_, frame) in enumerate(frames)]
        t1 = time.perf_counter()
        try:
            output, endpoint = self._infer(len(frames))
        except BaseException:  # the server lost: these frames are accounted for, and the ones after them emitted
            self._interrupted(frames)
            raise
        t2 = time.perf_counter()
        if output is None:
            self._interrupted(frames)
            return
        dets = decode(output, r.info.layout, r.settings.post)
        for det, box in zip(dets, boxes, strict=True):
            box.to_source(det)
        t3 = time.perf_counter()
        for (seq, frame), det in zip(frames, dets, strict=True):
            timings = {"decode": frame.decode_s, "preprocess": (t1 - t0) / len(frames), "queue": t0 - frame.read_at,
                       "round_trip": t2 - t1, "postprocess": (t3 - t2) / len(frames)}
            r.emit(Result(seq, frame, det, timings, endpoint))

    def _interrupted(self, frames: list[tuple[int, Frame]]) -> None:
        for seq, frame in frames:
            self.run_.emit(Result(seq, frame, None, {}))

    def _infer(self, n: int) -> tuple[np.ndarray | None, str]:
        """Infer on a healthy endpoint, failing over and waiting with back-off while all are down.

        Returns (None, "") only when the run is stopping; raises ServerError once every endpoint has been
        unreachable for longer than --server-timeout."""
        r = self.run_
        down_since: float | None = None
        last_error = ""
        while not r.stop.is_set():
            ep = r.pool.acquire()
            if ep is not None:
                ok = False
                try:
                    output = self.slot.infer(ep, n)
                    ok = True
                    r.count("requests")
                    return output, ep.url
                except TransientError as exc:
                    last_error = f"{ep.url}: {exc}"
                    r.count("retries")
                finally:
                    r.pool.release(ep, ok)
                continue
            now = time.monotonic()
            down_since = down_since or now
            r.all_down_for(now - down_since)
            if now - down_since > r.settings.server_timeout_s:
                raise ServerError(f"no Triton endpoint answered for {now - down_since:.0f} s (last error {last_error}); "
                                  "raise --server-timeout or restart the server")
            r.stop.wait(min(0.5, r.pool.next_retry_s() + 0.01))
        return None, ""


class Detection:
    """One `detect` run: owns the threads, the queues and the sinks."""

    def __init__(self, settings: DetectSettings, info: ModelInfo) -> None:
        self.settings, self.info = settings, info
        self.sinks: list[Any] = []
        self.stop = threading.Event()
        self.stats = RunStats()
        max_batch = info.max_batch or 1
        if settings.batch > max_batch:
            raise BadInput(f"--batch {settings.batch} exceeds the max batch of model {info.name!r} ({max_batch})")
        self.batch = settings.batch
        self.concurrency = settings.concurrency or max(2, min(8, max_batch // 2))
        self.pool = EndpointPool(settings.endpoints)
        self.queues = [FrameQueue(settings.queue_size, self._policy(s)) for s in settings.sources]
        self.readers = [Reader(s, q, self.stop, settings.vid_stride, settings.stall_timeout_s, settings.reconnects)
                        for s, q in zip(settings.sources, self.queues, strict=True)]
        # Two batches per worker: each can hold one while the next waits for an older one to be emitted.
        self.dispatcher = Dispatcher(self.queues, window=2 * self.concurrency * self.batch)
        self._pending: dict[int, Result] = {}  # at most the dispatcher's window
        self._next_seq = 0
        self._emit_lock = threading.Lock()
        self.down_s = 0.0
        self.written: list[tuple[Path, int]] = []  # (file or image folder, frames in it), once the sinks are closed
        self.error: BaseException | None = None  # what ended the run early (a worker's), once run() returns
        self.server_delta: dict[str, float] = {}

    def _policy(self, spec: SourceSpec) -> str:
        realtime = self.settings.realtime if self.settings.realtime is not None else spec.live
        return "latest" if realtime else "block"

    def count(self, name: str) -> None:
        with self.stats.lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def all_down_for(self, seconds: float) -> None:
        with self._emit_lock:
            self.down_s = max(self.down_s, seconds)

    def emit(self, result: Result) -> None:
        """Results arrive out of order from the workers; sinks see them in sequence."""
        with self._emit_lock:
            self._pending[result.seq] = result
            while self._next_seq in self._pending:
                ready = self._pending.pop(self._next_seq)
                self._next_seq += 1
                ready.timings["end_to_end"] = time.perf_counter() - ready.frame.read_at
                self.stats.add(ready)
                if ready.detections is not None:
                    for sink in self.sinks:
                        sink.write(ready, self.info)
            self.dispatcher.emitted = self._next_seq

    def _make_workers(self) -> list[Worker]:
        """All workers (each with its shared-memory slot) or none: a failure releases the slots made before it."""
        workers: list[Worker] = []
        try:
            for i in range(self.concurrency):
                workers.append(Worker(i, self))
        except BaseException:
            for w in workers:
                w.slot.close()
            raise
        return workers

    def run(self, open_sinks: Callable[[Detection], list[Any]] = lambda run: []) -> RunStats:
        """Make the workers, then the sinks (so a failure in either leaves no file or region behind), then stream.

        A failure while streaming (the server lost, a sink that cannot write) ends the run with its files finalized and
        its statistics complete; it is kept in `error` (so the summary can still account for what was done), then
        raised like a failure before streaming."""
        workers: list[Worker] = []
        try:
            workers = self._make_workers()
            self.sinks = open_sinks(self)
        except BaseException:
            for w in workers:
                w.slot.close()
            for reader in self.readers:
                reader.release()
            raise
        before = self._server_stats()
        for t in [*self.readers, *workers]:
            t.start()
        try:
            for w in workers:
                while w.is_alive():
                    w.join(0.2)
        finally:
            self._finish(workers)
        self.error = next((w.error for w in workers if w.error is not None), None)
        self.stats.per_endpoint = {k: v for k, v in self.stats.per_endpoint.items() if k}
        if not isinstance(self.error, ServerError):  # a lost server has no statistics to give
            self.server_delta = self._delta(before, self._server_stats())
        if self.error is not None:
            raise self.error
        return self.stats

    def _finish(self, workers: list[Worker]) -> None:
        self.stop.set()
        for w in workers:
            w.join()
        # Readers first: once stopped, none can queue a frame after the drain (each counts the frame it held).
        for reader in self.readers:
            reader.join(timeout=5)
        for frame in self.dispatcher.drain():
            self.stats.interrupted[frame.source] = self.stats.interrupted.get(frame.source, 0) + 1
        for sink in self.sinks:
            sink.close()
        self.written = [(path, n) for sink in self.sinks for path, n in sink.written()]
        self.stats.finished = time.perf_counter()

    def _server_stats(self) -> dict[str, dict[str, float]]:
        out = {}
        for ep in self.pool.endpoints:
            try:
                out[ep.url] = server_stats(self.settings.protocol, ep.endpoint, self.info.name)
            except TritonctlError as exc:  # an endpoint that is down has no statistics to give
                self.stats.problem(f"statistics from {ep.url}: {exc}")
        return out

    @staticmethod
    def _delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
        keys = ("count", "queue_ns", "compute_ns", "executions")
        total = {k: sum(after[u][k] - before[u][k] for u in after if u in before) for k in keys}
        count = total["count"]
        return {"inferences": count, "executions": total["executions"],
                "queue_ms": total["queue_ns"] / count / 1e6 if count else 0.0,
                "compute_ms": total["compute_ns"] / count / 1e6 if count else 0.0}


def check_server(settings: DetectSettings) -> ModelInfo:
    """The model's signature from the first endpoint that answers."""
    errors = []
    for endpoint in settings.endpoints:
        try:
            return fetch_model_info(settings.protocol, endpoint, settings.model)
        except ServerError as exc:
            if wrong := wrong_protocol_port(settings.protocol, endpoint, settings.model, exc):
                raise wrong from exc
            errors.append(str(exc))
    raise ServerError(errors[0] if len(errors) == 1 else f"no endpoint answers: {'; '.join(errors)}")


_PROTOCOLS = {"http": ("HTTP", 8000), "grpc": ("gRPC", 8001)}
_NOBODY_THERE = ("refused", "timed out", "timeout", "deadline")  # nothing listens, or nothing answers at all


def wrong_protocol_port(protocol: str, endpoint: Endpoint, model: str, exc: ServerError) -> BadInput | None:
    """The error to give when `endpoint` is Triton's port of the other protocol (--protocol grpc with the HTTP port, or
    http with the gRPC port), which otherwise reads as "no server". Asked only when something at that port closed
    the connection: a refused or silent one cannot be the other protocol either, and a down server costs no second wait."""
    if any(marker in str(exc).lower() for marker in _NOBODY_THERE):
        return None
    from tritonctl.client import served_model
    from tritonctl.errors import ModelError

    other = "http" if protocol == "grpc" else "grpc"
    try:
        served_model(other, endpoint, model)
    except ModelError:
        pass  # a Triton answered, only without this model: still the other protocol's port
    except Exception:  # a probe: whatever else fails, no Triton speaks the other protocol there
        return None
    (name, _), (wanted, port) = _PROTOCOLS[other], _PROTOCOLS[protocol]
    return BadInput(f"{endpoint.url} is Triton's {name} port; --protocol {protocol} needs the {wanted} port "
                    f"(default {port}), or use --protocol {other} with this one")


# ---------------------------------------------------------------- summary


def _percentiles(hist: LatencyHistogram) -> dict[str, float]:
    if not hist.count:
        return {}
    p50, p95, p99 = (hist.percentile(q) * 1000 for q in (50, 95, 99))
    return {"p50": p50, "p95": p95, "p99": p99, "mean": hist.mean * 1000}


# read = inferred + skipped_stride + dropped + interrupted + failed, per source (see RunStats)
FRAME_COUNTS = ("read", "inferred", "skipped_stride", "dropped", "interrupted", "failed")
FRAME_COUNTS_NOTE = ("read = inferred + skipped (--vid-stride) + dropped (live `latest` queue: the newest frame is kept) "
                     "+ interrupted (stopped before inference) + failed (could not be decoded)")


def _unreadable(spec: SourceSpec, failed: int, names: list[Path]) -> str:
    """One problem line per source naming the images that could not be decoded (the first few; the rest counted)."""
    listed = ", ".join(str(p) for p in names)
    more = f" and {failed - len(names)} more" if failed > len(names) else ""
    what = "image" if failed == 1 else f"{failed} images"
    return f"source {spec.id} ({spec.uri}): cannot read {what} {listed}{more} (counted failed)"


def ended_by(run: Detection, signal_name: str | None) -> str:
    """Why the run stopped, for the summary: every ending writes one."""
    if run.error is not None:
        what = "server lost" if isinstance(run.error, ServerError) else "error"
        ours = isinstance(run.error, TritonctlError)  # our messages stand alone; anything else is named by its type
        return f"{what}: {run.error if ours else f'{type(run.error).__name__}: {run.error}'}"
    return f"interrupted: {signal_name}" if signal_name else "end of sources"


def summarize(run: Detection) -> dict[str, Any]:
    st = run.stats
    wall = max(st.finished - st.started, 1e-9)
    sources = []
    unreadable = []
    for spec, reader, q in zip(run.settings.sources, run.readers, run.queues, strict=True):
        rs = reader.stats
        if rs.unreadable:
            unreadable.append(_unreadable(spec, rs.failed, rs.unreadable))
        sources.append({
            "id": spec.id, "uri": spec.uri, "kind": spec.kind, "policy": q.policy, "read": rs.read,
            "inferred": st.inferred.get(spec.id, 0), "skipped_stride": rs.skipped_stride, "dropped": q.dropped,
            "interrupted": st.interrupted.get(spec.id, 0) + rs.interrupted, "failed": st.failed.get(spec.id, 0) + rs.failed,
            "stalls": rs.stalls, "reconnects": rs.reconnects, "error": rs.error, "fps": st.inferred.get(spec.id, 0) / wall,
        })
    inferred = sum(st.inferred.values())
    return {
        "model": run.info.name, "endpoints": run.settings.urls, "protocol": run.settings.protocol,
        "shared_memory": run.settings.shm != "none" and any(e.local for e in run.pool.endpoints),
        "concurrency": run.concurrency, "batch": run.batch, "wall_s": wall, "fps": inferred / wall,
        "frames": {k: sum(s[k] for s in sources) for k in FRAME_COUNTS},
        "sources": sources,
        "latency_ms": {k: _percentiles(v) for k, v in st.stages.items()},
        "server": run.server_delta,
        "requests": st.requests, "retries": st.retries, "all_down_s": run.down_s,
        "bytes_sent": st.bytes_sent, "bytes_sent_per_frame": st.bytes_sent / inferred if inferred else 0.0,
        "per_endpoint": st.per_endpoint,
        "problems": unreadable + st.problems + ([f"{st.problems_dropped} more problem reports"] if st.problems_dropped else []),
        "written": [{"path": str(path), "frames": n} for path, n in run.written],
    }


def render_summary(summary: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tritonctl.ui import console

    con = console()
    src = Table("source", "policy", *(k.removesuffix("_stride") for k in FRAME_COUNTS), "fps", "stalls", "error",
                title=f"{summary['model']}: {summary['frames']['inferred']} frames in {summary['wall_s']:.1f} s = "
                      f"{summary['fps']:.1f} fps (concurrency {summary['concurrency']}, batch {summary['batch']}, "
                      f"{summary['protocol']}{', shared memory' if summary['shared_memory'] else ''})",
                caption=FRAME_COUNTS_NOTE)
    for s in summary["sources"]:
        src.add_row(f"{s['id']}: {s['uri']}", s["policy"], *(str(s[k]) for k in FRAME_COUNTS), f"{s['fps']:.1f}",
                    str(s["stalls"]), s["error"] or "")
    con.print(src)
    lat = Table("stage (ms)", "p50", "p95", "p99", "mean")
    for stage, p in summary["latency_ms"].items():
        if p:
            lat.add_row(stage, *(f"{p[k]:.2f}" for k in ("p50", "p95", "p99", "mean")))
    server = summary.get("server") or {}
    if server.get("inferences"):
        lat.add_row("server queue (avg)", "", "", "", f"{server['queue_ms']:.2f}")
        lat.add_row("server compute (avg)", "", "", "", f"{server['compute_ms']:.2f}")
    con.print(lat)
    warnings = [f"retries {summary['retries']}, endpoints down up to {summary['all_down_s']:.1f} s"] \
        if summary["retries"] else []
    warnings += summary["problems"]
    if summary.get("ended_by", "end of sources") != "end of sources":
        warnings.append(f"ended by {summary['ended_by']}")
    if warnings:
        con.print(f"[yellow]{escape('; '.join(warnings))}[/]", soft_wrap=True)


# ---------------------------------------------------------------- one run, end to end


def open_sinks(settings: DetectSettings, run: Detection) -> list[Any]:
    from tritonctl.sinks import ImageSink, JsonlSink, ShowSink, VideoSink

    if settings.show and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise BadInput("--show needs a display (no DISPLAY set): use --output to write a video instead")
    sinks: list[Any] = []
    if settings.json_path is not None:
        sinks.append(JsonlSink(settings.json_path, settings.sources))
    targets = settings.output_targets()
    kinds = {src.id: src.kind for src in settings.sources}
    images = {sid: p for sid, p in targets.items() if kinds[sid] == "images"}
    if images:
        sinks.append(ImageSink(images, settings.sources))
    if len(images) < len(targets):
        fps = {r.spec.id: r.stats.fps for r in run.readers}
        sinks.append(VideoSink({sid: p for sid, p in targets.items() if sid not in images}, fps, settings.vid_stride))
    if settings.show:
        sinks.append(ShowSink())
    return sinks


@dataclass
class DetectOutcome:
    summary: dict[str, Any]  # written to --summary-json whatever ended the run; `ended_by` says what did
    error: BaseException | None  # what ended the run early (the server lost, a sink that cannot write), or None


def run_detect(settings: DetectSettings, progress: Any = None) -> dict[str, Any]:
    """execute(), raising what ended the run early once its summary is written."""
    outcome = execute(settings, progress)
    if outcome.error is not None:
        raise outcome.error
    return outcome.summary


def execute(settings: DetectSettings, progress: Any = None) -> DetectOutcome:
    """Check the server and model, start everything, stop cleanly on Ctrl-C/SIGTERM or a lost server, and return the
    summary (also written to --summary-json) with what ended the run. A failure before streaming starts is raised."""
    import signal

    info = check_server(settings)
    run = Detection(settings, info)
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        run.stop.set()  # stop reading; workers finish what is in flight; the writer finalizes the files

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        with _live_progress(run, progress):
            run.run(lambda r: open_sinks(settings, r))
    except BaseException as exc:
        if exc is not run.error:
            raise  # before streaming started (workers, sinks): nothing ran, nothing to summarize
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = summarize(run)
    signal_name = signal.Signals(interrupted[0]).name if interrupted else None
    if signal_name:
        summary["interrupted_by"] = signal_name
    summary["ended_by"] = ended_by(run, signal_name)
    if settings.summary_json is not None:
        import json

        tmp = partial_path(settings.summary_json)
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, settings.summary_json)
    return DetectOutcome(summary, run.error)


class _live_progress:
    """A Rich progress bar per source (files: out of their frame count; live: a running count), on a terminal only."""

    def __init__(self, run: Detection, console: Any) -> None:
        self.run, self.console = run, console
        self.progress: Any = None
        self._stop = threading.Event()

    def __enter__(self) -> _live_progress:
        if self.console is None or not self.console.is_terminal:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[fps]}"), TimeElapsedColumn(), console=self.console, transient=True)
        self.tasks = {r.spec.id: self.progress.add_task(r.spec.uri[-40:], total=r.stats.total, fps="")
                      for r in self.run.readers}
        self.progress.start()
        threading.Thread(target=self._update, daemon=True).start()
        return self

    def _update(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(0.25):
            for sid, task in self.tasks.items():
                done = self.run.stats.inferred.get(sid, 0)
                self.progress.update(task, completed=done, fps=f"{done / (time.perf_counter() - t0):.1f} fps")

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.progress is not None:
            self.progress.stop()
