"""The run of `tritonctl detect`: sources -> readers -> dispatcher -> inference workers (letterbox into the request's
buffer, infer on the least-busy healthy endpoint, decode) -> one ordered emitter -> sinks.

Every queue is bounded. A reader's queue: `block` for files (every frame), `latest` for live sources (the newest frame
only; drops counted). The dispatcher batches frames across sources (a batch closes when full, when every source has a
frame in it, or after --batch-timeout-ms, as DeepStream's stream muxer does) and numbers them; at most `window` numbered
frames are out at once, so the emitter's reorder buffer is bounded too. Sources can be added and removed while the
run goes on (a reloaded pipeline file).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonctl.core.errors import BadInput, ServerError, TritonctlError
from tritonctl.inference.client import EndpointPool, InferSlot, ModelInfo, TransientError, server_stats
from tritonctl.inference.discovery import Discovery
from tritonctl.sources.video import Frame, FrameQueue, Reader, SourceSpec
from tritonctl.vision.detections import Detections
from tritonctl.vision.metrics import LatencyHistogram
from tritonctl.vision.postprocess import PostSettings, decode_one
from tritonctl.vision.preprocess import Preprocessor

if TYPE_CHECKING:
    from tritonctl.outputs.sinks import Sink
    from tritonctl.stream.detect import DetectSettings, SourceOptions
    from tritonctl.stream.tracking import Tracker, TrackSpan
    from tritonctl.stream.zones import GeometryState, SourceGeometry

STAGES = ("decode", "preprocess", "queue", "round_trip", "postprocess", "end_to_end")
LIVE_QUEUE = 1  # a live camera's `latest` queue: the newest frame, never one that waited behind others
# Requests in flight with live cameras: one computing, the next one ready. More only wait in the server's queue while
# the cameras' newer frames wait behind them (8 cameras, 2 cores: p99 77-86 ms at 2, 104-113 ms at 3-8, with every
# camera at 30 fps either way; benchmarks/streams.py).
LIVE_CONCURRENCY = 2


@dataclass
class Result:
    seq: int
    frame: Frame
    detections: Detections
    timings: dict[str, float]
    endpoint: str = ""
    ended_tracks: list[TrackSpan] = field(default_factory=list)  # tracks of this source that ended by this frame
    geometry: GeometryState | None = None  # its source's zones and lines at this frame (pipeline file)


@dataclass
class Unfinished:
    """A numbered frame that was not inferred: the run stopped while its request waited for a server."""

    seq: int
    frame: Frame


PROBLEMS_KEPT = 20  # distinct problem lines kept for the summary; later ones are only counted


@dataclass
class RunStats:
    """What the summary reports. Fixed size whatever the run's length: counters per source and per endpoint, one
    histogram per stage and one of end-to-end latency per source (see LatencyHistogram for its precision).

    Every frame read ends in exactly one count (per source): inferred; skipped by --vid-stride; dropped by a `latest`
    queue; interrupted (stopped first: still queued, in a reader's hand, or waiting for a server); failed (an image
    that cannot be decoded). The readers hold skipped and failed, the queues dropped, this object the rest."""

    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0  # the last frame was through; closing the outputs (the brokers' final flush) comes after
    closed: float = 0.0  # every output closed
    inferred: dict[int, int] = field(default_factory=dict)
    interrupted: dict[int, int] = field(default_factory=dict)
    stages: dict[str, LatencyHistogram] = field(default_factory=lambda: {k: LatencyHistogram() for k in STAGES})
    source_latency: dict[int, LatencyHistogram] = field(default_factory=dict)  # end to end, per source
    recent_latency: dict[int, LatencyHistogram] = field(default_factory=dict)  # the same since take_recent last ran
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    problems_dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: Result) -> None:
        sid = result.frame.source
        with self.lock:
            self.inferred[sid] = self.inferred.get(sid, 0) + 1
            for k, v in result.timings.items():
                self.stages[k].add(v)
            self.source_latency.setdefault(sid, LatencyHistogram()).add(result.timings["end_to_end"])
            self.recent_latency.setdefault(sid, LatencyHistogram()).add(result.timings["end_to_end"])
            self.per_endpoint[result.endpoint] = self.per_endpoint.get(result.endpoint, 0) + 1

    def take_recent(self, source: int) -> LatencyHistogram | None:
        """End-to-end latency of one source since the last call (the live view's window), and a fresh window."""
        with self.lock:
            return self.recent_latency.pop(source, None)

    def count_interrupted(self, source: int, n: int = 1) -> None:
        with self.lock:
            self.interrupted[source] = self.interrupted.get(source, 0) + n

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
    """Hands frames to workers in batches, round-robin over the sources, numbering them in the order they leave.

    A batch closes when it is full, when every source still sending has a frame in it (waiting longer would only
    wait for a camera's next frame), or `batch_timeout_s` after its first frame. Readers wake it through their queues
    (no polling). At most `window` numbered frames are out at once; when full, take() waits, the source queues fill,
    and their policy applies: a file's reader waits, a live source drops its oldest frame."""

    def __init__(self, window: int, batch_timeout_s: float = 0.0) -> None:
        self.window, self.batch_timeout_s = window, batch_timeout_s
        self.cond = threading.Condition()
        self.queues: dict[int, FrameQueue] = {}  # in round-robin order
        self._next = 0
        self._seq = 0
        self.emitted = 0  # frames the emitter has passed on, in order (see advance)
        self.keep_open = False  # sources may still be added (a watched pipeline file): none left is no end
        self._assembling = False

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def add(self, source: int, queue: FrameQueue) -> None:
        with self.cond:
            self.queues[source] = queue
            self.cond.notify_all()

    def remove(self, source: int) -> list[Frame]:
        """Stop serving a source; returns the frames still in its queue."""
        with self.cond:
            queue = self.queues.pop(source)
            self.cond.notify_all()
        return _drain(queue)

    def advance(self, emitted: int) -> None:
        with self.cond:
            self.emitted = emitted
            self.cond.notify_all()

    def take(self, n: int, stop: threading.Event) -> tuple[list[tuple[int, Frame]], bool]:
        """Up to n numbered frames and whether the run is over (every source exhausted, or stopping).

        One worker assembles a batch at a time: two assembling at once would each send half a batch."""
        with self.cond:
            while self._assembling and not stop.is_set():
                self.cond.wait(0.5)
            self._assembling = True
            try:
                return self._assemble(n, stop)
            finally:
                self._assembling = False
                self.cond.notify_all()

    def _assemble(self, n: int, stop: threading.Event) -> tuple[list[tuple[int, Frame]], bool]:
        frames: list[tuple[int, Frame]] = []
        deadline = 0.0
        while not stop.is_set():
            room = self.window - (self._seq - self.emitted)
            if room > 0 and len(frames) < n:
                frames += self._collect(min(n - len(frames), room))
            now = time.perf_counter()
            if frames:
                deadline = deadline or now + self.batch_timeout_s
                if len(frames) >= n or now >= deadline or self._all_in(frames):
                    return frames, False
                self.cond.wait(deadline - now)
            elif not self.keep_open and all(q.exhausted for q in self.queues.values()):
                return [], True
            else:
                self.cond.wait(0.5)  # woken by a frame, a closed source or the emitter; the timeout only rechecks
        return frames, True

    def _all_in(self, frames: list[tuple[int, Frame]]) -> bool:
        present = {f.source for _, f in frames}
        return all(sid in present or q.exhausted for sid, q in self.queues.items())

    def _collect(self, n: int) -> list[tuple[int, Frame]]:
        frames: list[tuple[int, Frame]] = []
        order = list(self.queues.values())
        for _ in range(len(order) * n):
            if len(frames) == n:
                break
            self._next %= len(order)
            frame = order[self._next].get_nowait()
            self._next += 1
            if frame is not None:
                frames.append((self._seq, frame))
                self._seq += 1
        return frames

    def drain(self) -> list[Frame]:
        with self.cond:
            queues = list(self.queues.values())
        return [f for q in queues for f in _drain(q)]


def _drain(queue: FrameQueue) -> list[Frame]:
    left = []
    while (f := queue.get_nowait()) is not None:
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
        self._pool_version = run.pool.version

    def run(self) -> None:
        r = self.run_
        try:
            done = False
            while not done:
                frames, done = r.dispatcher.take(r.batch, r.stop)
                if frames:
                    self._process(frames)
        except BaseException as exc:  # surfaced by Detection.run, which stops the others
            self.error = exc
            r.request_stop()
        finally:
            for problem in self.slot.close():
                r.stats.problem(problem)
            with r.stats.lock:
                r.stats.bytes_sent += self.slot.bytes_sent

    def _process(self, frames: list[tuple[int, Frame]]) -> None:
        """Infer one batch and emit its results; whatever fails (the server lost, a sink that cannot write), every
        frame of the batch is emitted, the ones without a result as unfinished, so none goes uncounted."""
        emitted = 0
        try:
            for result in self._results(frames):
                emitted += 1
                self.run_.emit(result)
        except BaseException:
            self._unfinished(frames[emitted:])
            raise

    def _results(self, frames: list[tuple[int, Frame]]) -> Iterator[Result | Unfinished]:
        r = self.run_
        t0 = time.perf_counter()
        boxes = [self.pre(frame.image, row=k) for k, (_, frame) in enumerate(frames)]
        t1 = time.perf_counter()
        output, endpoint = self._infer(len(frames))
        t2 = time.perf_counter()
        if output is None:  # the run is stopping
            yield from (Unfinished(seq, frame) for seq, frame in frames)
            return
        dets = []
        for k, ((_, frame), box) in enumerate(zip(frames, boxes, strict=True)):
            det = decode_one(output[k], r.info.layout, r.post_for(frame.source))
            box.to_source(det.boxes)
            dets.append(det)
        t3 = time.perf_counter()
        pre_s, post_s = (t1 - t0) / len(frames), (t3 - t2) / len(frames)
        for (seq, frame), det in zip(frames, dets, strict=True):
            timings = {"decode": frame.decode_s, "preprocess": pre_s, "queue": t0 - frame.read_at,
                       "round_trip": t2 - t1, "postprocess": post_s}
            yield Result(seq, frame, det, timings, endpoint)

    def _unfinished(self, frames: list[tuple[int, Frame]]) -> None:
        for seq, frame in frames:
            try:
                self.run_.emit(Unfinished(seq, frame))
            except Exception as exc:  # a sink failing again on an older result: counted, and the rest still emitted
                self.run_.stats.problem(f"{type(exc).__name__}: {exc}")

    def _infer(self, n: int) -> tuple[np.ndarray | None, str]:
        """Infer on a healthy endpoint, failing over and waiting with back-off while all are down.

        Returns (None, "") only when the run is stopping; raises ServerError once every endpoint has been
        unreachable for longer than --server-timeout."""
        r = self.run_
        down_since: float | None = None
        last_error = ""
        while not r.stop.is_set():
            if r.pool.version != self._pool_version:  # endpoints left (--discover): release what the slot held there
                self._pool_version = r.pool.version
                self.slot.forget_others(r.pool.urls())
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


@dataclass
class SourceRun:
    """One source in the run: what it is, how it is read, and what it writes of its own (the pipeline file's outputs)."""

    spec: SourceSpec
    options: SourceOptions
    queue: FrameQueue
    reader: Reader
    halt: threading.Event  # stops this reader alone (a source removed at run time)
    sinks: list[Sink] = field(default_factory=list)
    state: str = "running"  # running; then ended (its end), failed (gave up), stopped (the run was), removed
    geometry: SourceGeometry | None = None  # its zones and lines, counted in frame order
    geometry_totals: dict[str, Any] | None = None  # their totals after the last frame (read by the live view)
    added_at: float = field(default_factory=time.perf_counter)
    removed_at: float = 0.0


SinkFactory = Callable[["Detection", SourceRun], list["Sink"]]


class Detection:
    """One `detect` run: owns the threads, the queues and the sinks."""

    def __init__(self, settings: DetectSettings, info: ModelInfo) -> None:
        self.settings, self.info = settings, info
        self.sinks: list[Sink] = []
        self.stop = threading.Event()
        self.stats = RunStats()
        max_batch = info.max_batch or 1
        self.batch = min(settings.batch, max_batch) if settings.batch_auto else settings.batch
        if self.batch > max_batch:
            raise BadInput(f"--batch {settings.batch} exceeds the max batch of model {info.name!r} ({max_batch})")
        live = any(spec.live for spec in settings.sources)
        self.concurrency = settings.concurrency or (LIVE_CONCURRENCY if live else max(2, min(8, max_batch // 2)))
        self.pool = EndpointPool(settings.endpoints)
        self.discovery: Discovery | None = None
        if settings.discover is not None:  # first lookup now: the workers decide on shared memory from the endpoints
            self.discovery = Discovery(settings.discover, self.pool, on_problem=self.stats.problem,
                                       local_only=settings.shm == "system")
            self.discovery.first()
        # Two batches per worker: each can hold one while the next waits for an older one to be emitted.
        self.dispatcher = Dispatcher(window=2 * self.concurrency * self.batch, batch_timeout_s=settings.batch_timeout_s)
        self.sources: dict[int, SourceRun] = {}
        self.source_sinks: SinkFactory = lambda run, src: []
        for spec, options in zip(settings.sources, settings.source_options, strict=True):
            self._make_source(spec, options)
        self._pending: dict[int, Result | Unfinished] = {}  # at most the dispatcher's window
        self._next_seq = 0
        self._emit_lock = threading.Lock()
        self.down_s = 0.0
        self.written: list[tuple[Path, int]] = []  # (file or image folder, frames in it), once the sinks are closed
        self.error: BaseException | None = None  # what ended the run early (a worker's), once run() returns
        self.server_delta: dict[str, float] = {}
        self._cut_short: set[int] = set()
        # Sources are added and removed by the reload thread while the run starts, streams and ends: one at a time.
        self._sources_lock = threading.RLock()
        self.started = threading.Event()  # readers and workers started: sources may be added or removed from now
        self._claimed: set[Path] = set()  # per-source output files this run has opened
        self.trackers: dict[int, Tracker] = {}  # per source, made at its first result (--track)
        self.brokers: list[Any] = []  # the --sink publishers among the sinks (their figures go in the summary)
        self.track_ids: dict[int, set[int]] = {}  # per source, the tracks seen (the summary's count)

    @property
    def readers(self) -> list[Reader]:
        return [s.reader for s in self.sources.values()]

    def _make_source(self, spec: SourceSpec, options: SourceOptions) -> SourceRun:
        live = options.policy == "latest" or (options.policy == "auto" and spec.live)
        policy = "latest" if (live if self.settings.realtime is None else self.settings.realtime) else "block"
        queue = FrameQueue(LIVE_QUEUE if policy == "latest" else self.settings.queue_size, policy, self.dispatcher.wake)
        halt = threading.Event()
        reader = Reader(spec, queue, halt, options.vid_stride, self.settings.stall_timeout_s, self.settings.reconnects)
        src = SourceRun(spec, options, queue, reader, halt)
        if options.zones or options.lines:
            from tritonctl.stream.zones import SourceGeometry

            src.geometry = SourceGeometry(options.zones, options.lines)
        self.sources[spec.id] = src
        self.dispatcher.add(spec.id, queue)
        return src

    def claim_output(self, path: Path) -> Path:
        """A source's own output file, or, when this run already wrote that name (a source changed by a reload and
        started again), the next free segment of it: gate.mp4, gate.1.mp4, gate.2.mp4. Never one finished file over
        another."""
        with self._sources_lock:
            candidate, k = path, 0
            while candidate in self._claimed:
                k += 1
                candidate = path.with_name(f"{path.stem}.{k}{path.suffix}")
            self._claimed.add(candidate)
            return candidate

    def post_for(self, source: int) -> PostSettings:
        src = self.sources.get(source)
        return src.options.post if src is not None else self.settings.post

    def request_stop(self) -> None:
        """Stop reading everywhere; workers finish what is in flight; the writer finalizes the files."""
        if not self.stop.is_set():  # the sources still reading now were stopped, not ended
            self._cut_short = {sid for sid, src in list(self.sources.items()) if not src.queue.closed}
        self.stop.set()
        for src in list(self.sources.values()):
            src.halt.set()
        for broker in self.brokers:  # a `block` outbox must not hold a worker while its broker is down
            broker.stop_waiting()
        self.dispatcher.wake()

    def count(self, name: str) -> None:
        with self.stats.lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def all_down_for(self, seconds: float) -> None:
        with self._emit_lock:
            self.down_s = max(self.down_s, seconds)

    def emit(self, item: Result | Unfinished) -> None:
        """Results arrive out of order from the workers; sinks see them in sequence."""
        with self._emit_lock:
            self._pending[item.seq] = item
            try:
                while self._next_seq in self._pending:
                    ready = self._pending.pop(self._next_seq)
                    self._next_seq += 1
                    if isinstance(ready, Unfinished):
                        self.stats.count_interrupted(ready.frame.source)
                    else:
                        self._write(ready)
            finally:  # once per call, also when a sink failed: the window moves on
                self.dispatcher.advance(self._next_seq)

    def _write(self, ready: Result) -> None:
        """Tracks, zones, then every sink of the frame; counted inferred whether or not a sink could take it (a
        failing sink ends the run, said so)."""
        src = self.sources.get(ready.frame.source)
        try:
            if self.settings.track is not None:
                self._track(ready)
            if src is not None and src.geometry is not None:
                ready.geometry = src.geometry.update(ready.detections, ready.frame.index)
                src.geometry_totals = src.geometry.totals(self.info.names)
            for sink in [*self.sinks, *(src.sinks if src is not None and src.state != "removed" else [])]:
                sink.write(ready, self.info)
        finally:
            ready.timings["end_to_end"] = time.perf_counter() - ready.frame.read_at  # decoded -> written
            self.stats.add(ready)

    def geometry_totals(self, source: int) -> dict[str, Any] | None:
        """A source's zone and line counts so far, read between two frames (the view's thread asks)."""
        src = self.sources.get(source)
        if src is None or src.geometry is None:
            return None
        # The emitter's copy after each frame: the view never waits on the emit lock (held while videos encode).
        return src.geometry_totals if src.geometry_totals is not None else src.geometry.totals(self.info.names)

    def _track(self, result: Result) -> None:
        """Track ids for this frame, in frame order per source (emit's order): one tracker per source."""
        from tritonctl.stream.tracking import make_tracker

        sid = result.frame.source
        tracker = self.trackers.get(sid)
        if tracker is None:
            assert self.settings.track is not None
            src = self.sources.get(sid)
            fps = src.reader.stats.fps if src is not None else 0.0
            # A stream's guessed rate can be its 90 kHz timebase: only a plausible rate is believed. The tracker sees
            # every vid_stride-th frame, so its motion model runs at the rate it is fed.
            fps = fps if 1.0 <= fps <= 120.0 else 30.0
            stride = src.options.vid_stride if src is not None else 1
            tracker = self.trackers[sid] = make_tracker(self.settings.track, fps / stride)
        # Timestamps let the motion model span frames a live camera dropped; image sources have none (all 0).
        ts = result.frame.timestamp if result.frame.path is None else None
        result.detections = tracker.update(result.detections, timestamp=ts, frame=result.frame.index)
        result.ended_tracks = tracker.ended()
        self.track_ids.setdefault(sid, set()).update(result.detections.track_ids.tolist()
                                                     if result.detections.track_ids is not None else [])

    # ------------------------------------------------------------ sources added and removed while running

    def add_source(self, spec: SourceSpec, options: SourceOptions) -> SourceRun | None:
        """A source joins the running pipeline (a reloaded pipeline file): its reader starts at once. None when the
        run is already ending. A source that cannot start (its reader or its files) leaves no trace and raises."""
        with self._sources_lock:
            if self.stop.is_set():
                return None
            src = self._make_source(spec, options)  # a file that cannot be opened raises here, before it joins
            try:
                src.sinks = self.source_sinks(self, src)
                src.reader.start()
            except BaseException:
                self.dispatcher.remove(spec.id)
                src.reader.release()
                del self.sources[spec.id]
                raise
            return src

    def remove_source(self, source: int, timeout_s: float = 5.0) -> None:
        """A source leaves; the others go on. Its frames still queued are counted interrupted, its files finished."""
        with self._sources_lock:
            src = self.sources[source]
            if self.stop.is_set() or src.state != "running":
                return  # the run's end finishes it
            src.halt.set()
            src.reader.join(timeout=timeout_s)
            left = self.dispatcher.remove(source)
            self.stats.count_interrupted(source, len(left))
            with self._emit_lock:  # no write to its sinks can be under way while they close
                src.state, src.removed_at = "removed", time.perf_counter()
                self._close_sinks(src.sinks)

    # ------------------------------------------------------------ the run

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

    def run(self, open_sinks: Callable[[Detection], list[Sink]] = lambda run: []) -> RunStats:
        """Make the workers, then the sinks (so a failure in either leaves no file or region behind), then stream.

        A failure while streaming (the server lost, a sink that cannot write) ends the run with its files finalized and
        its statistics complete; it is kept in `error` (so the summary can still account for what was done), then
        raised like a failure before streaming."""
        workers: list[Worker] = []
        try:
            workers = self._make_workers()
            self.sinks = open_sinks(self)
            for src in self.sources.values():
                src.sinks = self.source_sinks(self, src)
        except BaseException:
            for w in workers:
                w.slot.close()
            for reader in self.readers:
                reader.release()
            for sink in [*self.sinks, *(s for src in self.sources.values() for s in src.sinks)]:
                sink.discard()  # nothing was written: no empty file replaces an existing one
            raise
        before = self._server_stats()
        try:
            with self._sources_lock:
                for src in self.sources.values():
                    src.added_at = time.perf_counter()  # a source's clock starts with its reader
                for t in [*self.readers, *workers]:
                    t.start()
                if self.discovery is not None:
                    self.discovery.start()
                self.started.set()
            for w in workers:
                while w.is_alive():
                    w.join(0.2)
        finally:
            self._finish(workers)
        self.error = next((w.error for w in workers if w.error is not None), None) or self.error
        self.stats.per_endpoint = {k: v for k, v in self.stats.per_endpoint.items() if k}
        if not isinstance(self.error, ServerError):  # a lost server has no statistics to give
            self.server_delta = self._delta(before, self._server_stats())
        if self.error is not None:
            raise self.error
        return self.stats

    def _finish(self, workers: list[Worker], readers_timeout_s: float = 5.0) -> None:
        with self._sources_lock:  # no source added or removed from here on (add/remove see `stop`)
            self.request_stop()
        if self.discovery is not None:  # the endpoints stay as they are while the last requests finish
            self.discovery.close()
        for w in workers:
            if w.is_alive():
                w.join()
        # Readers first: once stopped, none can queue a frame after the drain (each counts the frame it held). One
        # deadline for all: a reader stuck in a network call is left behind (a daemon thread), not waited on in turn.
        deadline = time.monotonic() + readers_timeout_s
        for reader in self.readers:
            if reader.is_alive():
                reader.join(timeout=max(0.0, deadline - time.monotonic()))
        for frame in self.dispatcher.drain():
            self.stats.count_interrupted(frame.source)
        for item in self._pending.values():  # numbered, never emitted: an older one's sink failed
            self.stats.count_interrupted(item.frame.source)
        self._pending.clear()
        self.stats.finished = time.perf_counter()  # the fps ends here: the flush below is the brokers' wait, not ours
        for broker in self.brokers:  # every flush deadline starts now: they run side by side, not one after another
            with contextlib.suppress(Exception):  # its close() below fails the same way, and is reported there
                broker.begin_close()
        for sid, src in self.sources.items():
            if src.state == "running":
                src.state = "stopped" if sid in self._cut_short else ("failed" if src.reader.stats.error else "ended")
                self._close_sinks(src.sinks)
        self._close_sinks(self.sinks)
        self.stats.closed = time.perf_counter()

    def _close_sinks(self, sinks: list[Sink]) -> None:
        """Finish every file, even when one sink fails to (the first failure is raised after the others closed)."""
        failure: BaseException | None = None
        for sink in sinks:
            try:
                sink.close()
                self.written += sink.written()
            except Exception as exc:
                failure = failure or exc
                self.stats.problem(f"closing {type(sink).__name__}: {exc}")
        if failure is not None and self.error is None:
            self.error = failure

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
