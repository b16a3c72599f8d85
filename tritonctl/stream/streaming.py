"""The run of `tritonctl detect`: sources -> readers -> dispatcher -> inference workers (letterbox into the request's
buffer, infer on the least-busy healthy endpoint, decode, the worker-side stages) -> the emitter on its own thread
(back in order, the ordered stages: tracking, zones) -> sinks.

Every queue is bounded. A reader's queue: `block` for files (every frame), `latest` for live sources (the newest frame
only; drops counted). The dispatcher batches frames across sources (a batch closes when full, when every source has a
frame in it, or after --batch-timeout-ms, as DeepStream's stream muxer does) and numbers them; at most `window` numbered
frames are out at once, so the emitter's queue and reorder buffer are bounded too. Sources can be added and removed
while the run goes on (a reloaded pipeline file).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonctl.core.errors import BadInput, ServerError, TritonctlError
from tritonctl.inference.client import ModelInfo, server_stats
from tritonctl.inference.fleet import Fleet
from tritonctl.sources.video import FrameQueue, Reader, SourceSpec
from tritonctl.stream.dispatch import Dispatcher
from tritonctl.stream.emitter import Emitter
from tritonctl.stream.run_settings import RunSettings, SourceSettings
from tritonctl.stream.stages import ordered_stages
from tritonctl.stream.stats import RunStats
from tritonctl.vision.frames import Frame, FrameStage, Result, Sink, StageFigures, TrackSpan, Unfinished
from tritonctl.vision.postprocess import PostSettings, decode_one
from tritonctl.vision.preprocess import Preprocessor

if TYPE_CHECKING:
    from tritonctl.stream.zones import Line, Zone

LIVE_QUEUE = 1  # a live camera's `latest` queue: the newest frame, never one that waited behind others
# Requests in flight with live cameras: one computing, the next one ready. More only wait in the server's queue while
# the cameras' newer frames wait behind them (8 cameras, 2 cores: p99 77-86 ms at 2, 104-113 ms at 3-8, with every
# camera at 30 fps either way; benchmarks/streams.py).
LIVE_CONCURRENCY = 2


class Worker(threading.Thread):
    def __init__(self, wid: int, run: Detection) -> None:
        super().__init__(name=f"infer-{wid}", daemon=True)
        self.run_ = run
        info = run.info
        self.slot = run.fleet.slot(info, run.batch)
        try:
            self.pre = Preprocessor(info.height, info.width, info.input_np, run.batch, out=self.slot.inputs)
        except BaseException:
            self.slot.close()
            raise
        self.error: BaseException | None = None

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
            result = Result(seq, frame, det, timings, endpoint)
            for stage in r.worker_stages:  # here, in parallel: what needs no order (a crop embedder)
                stage.process(result)
            yield result

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
        answer = None
        try:
            answer = r.fleet.infer(self.slot, n, r.stop)
        finally:
            if answer is None or answer.retries or answer.down_s:  # a failover on the way: the fleet's figures, read
                with r.stats.lock:  # under the stats lock, so that the last copy is the latest
                    figures = r.fleet.figures
                    r.stats.retries = figures.retries
                r.all_down_for(figures.all_down_s)
        if answer is None:
            return None, ""
        r.count("requests")
        return answer.outputs[r.info.output_name], answer.url


@dataclass
class SourceRun:
    """One source in the run: what it is, how it is read, and what it writes of its own (the pipeline file's outputs)."""

    spec: SourceSpec
    options: SourceSettings
    queue: FrameQueue
    reader: Reader
    halt: threading.Event  # stops this reader alone (a source removed at run time)
    sinks: list[Sink] = field(default_factory=list)
    state: str = "running"  # running; then ended (its end), failed (gave up), stopped (the run was), removed
    ended_tracks: list[TrackSpan] = field(default_factory=list)  # the stages' tracks still alive at its end
    added_at: float = field(default_factory=time.perf_counter)
    removed_at: float = 0.0


SinkFactory = Callable[["Detection", SourceRun], list["Sink"]]


class Detection:
    """One `detect` run: owns the threads, the queues and the sinks.

    Two lists of stages: `worker_stages` run in the inference workers, in parallel, on each result before ordering
    (none by default: where a crop embedder goes); `stages` run on the emitter, in order, before the sinks (by default
    tracking with --track, then zones and lines). Each keeps its own per-source state."""

    def __init__(self, settings: RunSettings, info: ModelInfo, worker_stages: Sequence[FrameStage] = (),
                 stages: Sequence[FrameStage] | None = None) -> None:
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
        # The first --discover lookup happens now: the workers decide on shared memory from the endpoints found.
        self.fleet = Fleet(settings.endpoints, protocol=settings.protocol, shm=settings.shm, discover=settings.discover,
                           server_timeout_s=settings.server_timeout_s, on_problem=self.stats.problem)
        self.pool, self.discovery = self.fleet.pool, self.fleet.discovery
        # Two batches per worker: each can hold one while the next waits for an older one to be emitted.
        self.dispatcher = Dispatcher(window=2 * self.concurrency * self.batch, batch_timeout_s=settings.batch_timeout_s)
        self.sources: dict[int, SourceRun] = {}
        self.source_sinks: SinkFactory = lambda run, src: []
        self.worker_stages = list(worker_stages)
        self.stages = list(stages) if stages is not None else ordered_stages(settings, self._rate_of,
                                                                           self._geometry_of, info.names)
        self.emitter = Emitter(self.dispatcher.window, self.stages, self._sinks_of, info, self.stats,
                               self.dispatcher.advance, lambda _exc: self.request_stop())
        for spec, options in zip(settings.sources, settings.source_options, strict=True):
            self._make_source(spec, options)
        self.down_s = 0.0
        self.written: list[tuple[Path, int]] = []  # (file or image folder, frames in it), once the sinks are closed
        self.error: BaseException | None = None  # what ended the run early (a worker's), once run() returns
        self.server_delta: dict[str, float] = {}
        self._cut_short: set[int] = set()
        # Sources are added and removed by the reload thread while the run starts, streams and ends: one at a time.
        self._sources_lock = threading.RLock()
        self.started = threading.Event()  # readers and workers started: sources may be added or removed from now
        self._claimed: set[Path] = set()  # per-source output files this run has opened
        self.brokers: list[Any] = []  # the --sink publishers among the sinks (their figures go in the summary)

    @property
    def readers(self) -> list[Reader]:
        return [s.reader for s in self.sources.values()]

    def _make_source(self, spec: SourceSpec, options: SourceSettings) -> SourceRun:
        live = options.policy == "latest" or (options.policy == "auto" and spec.live)
        policy = "latest" if (live if self.settings.realtime is None else self.settings.realtime) else "block"
        queue = FrameQueue(LIVE_QUEUE if policy == "latest" else self.settings.queue_size, policy, self.dispatcher.wake)
        halt = threading.Event()
        reader = Reader(spec, queue, halt, options.vid_stride, self.settings.stall_timeout_s, self.settings.reconnects)
        src = self.sources[spec.id] = SourceRun(spec, options, queue, reader, halt)
        try:
            for stage in self._all_stages:  # a source whose zones cannot be counted fails here, before it joins
                stage.source_added(spec.id)
        except BaseException:
            del self.sources[spec.id]
            raise
        self.dispatcher.add(spec.id, queue)
        return src

    @property
    def _all_stages(self) -> list[FrameStage]:
        return [*self.worker_stages, *self.stages]

    def _end_source(self, src: SourceRun) -> None:
        """Its last frame went through: the stages let go of it (under the emitter's lock, or after the emitter)."""
        for stage in self._all_stages:
            src.ended_tracks += stage.source_ended(src.spec.id)

    def _rate_of(self, source: int) -> tuple[float, int]:
        src = self.sources.get(source)
        return (src.reader.stats.fps, src.options.vid_stride) if src is not None else (0.0, 1)

    def _geometry_of(self, source: int) -> tuple[Sequence[Zone], Sequence[Line]]:
        src = self.sources.get(source)
        return (src.options.zones, src.options.lines) if src is not None else ((), ())

    def _sinks_of(self, source: int) -> list[Sink]:
        src = self.sources.get(source)
        return [*self.sinks, *(src.sinks if src is not None and src.state != "removed" else [])]

    def figures(self) -> list[StageFigures]:
        """Every stage's figures so far (safe from another thread: the live view's)."""
        return [stage.figures() for stage in self._all_stages]

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
        with self.stats.lock:
            self.down_s = max(self.down_s, seconds)

    def emit(self, item: Result | Unfinished) -> None:
        """From a worker: results arrive out of order; the emitter's thread puts them in sequence for the sinks."""
        self.emitter.put(item)

    # ------------------------------------------------------------ sources added and removed while running

    def add_source(self, spec: SourceSpec, options: SourceSettings) -> SourceRun | None:
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
                self._end_source(src)
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
            with self.emitter.lock:  # no write to its sinks can be under way while they close
                src.state, src.removed_at = "removed", time.perf_counter()
                self._close_sinks(src.sinks)
                self._end_source(src)

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
                for t in [*self.readers, self.emitter, *workers]:
                    t.start()
                if self.discovery is not None:
                    self.discovery.start()
                self.started.set()
            for w in workers:
                while w.is_alive():
                    w.join(0.2)
        finally:
            self._finish(workers)
        failures = [*(w.error for w in workers), self.emitter.failure]
        self.error = next((e for e in failures if e is not None), None) or self.error
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
        left = self.emitter.close()  # what the workers handed over goes through the stages and sinks first
        # Readers first: once stopped, none can queue a frame after the drain (each counts the frame it held). One
        # deadline for all: a reader stuck in a network call is left behind (a daemon thread), not waited on in turn.
        deadline = time.monotonic() + readers_timeout_s
        for reader in self.readers:
            if reader.is_alive():
                reader.join(timeout=max(0.0, deadline - time.monotonic()))
        for frame in self.dispatcher.drain():
            self.stats.count_interrupted(frame.source)
        for item in left:  # numbered, never emitted: an older one never came back
            self.stats.count_interrupted(item.frame.source)
        self.stats.finished = time.perf_counter()  # the fps ends here: the flush below is the brokers' wait, not ours
        for broker in self.brokers:  # every flush deadline starts now: they run side by side, not one after another
            with contextlib.suppress(Exception):  # its close() below fails the same way, and is reported there
                broker.begin_close()
        for sid, src in self.sources.items():
            if src.state == "running":
                src.state = "stopped" if sid in self._cut_short else ("failed" if src.reader.stats.error else "ended")
                self._close_sinks(src.sinks)
                self._end_source(src)
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
