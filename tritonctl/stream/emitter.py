"""The emitter: the run's one ordered thread. Results arrive from the inference workers out of order, through a
bounded queue; each, in sequence, goes through the ordered stages, then its sinks.

On its own thread, a slow sink (a 4K video, a broker's `block` outbox) holds only the emitter: the workers go on
inferring until the dispatcher's window is full, then wait there (and the readers' queues apply their policy).

The queue is bounded by the window: every numbered frame ends as exactly one item (a result, or unfinished), and the
dispatcher numbers at most `window` frames past the last one emitted, so a put does not wait in practice. Were the
queue full, a put would block: a result is never dropped, and memory stays bounded either way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence

from tritonctl.stream.stats import RunStats
from tritonctl.vision.frames import FrameStage, Labels, Result, Sink, Unfinished


class Emitter(threading.Thread):
    def __init__(self, window: int, stages: Sequence[FrameStage], sinks_of: Callable[[int], list[Sink]],
                 info: Labels, stats: RunStats, advance: Callable[[int], None],
                 on_failure: Callable[[BaseException], None]) -> None:
        """`sinks_of(source)`: where a source's results go now; `advance(n)`: the first n frames are through (the
        dispatcher's window moves); `on_failure`: the first stage or sink that fails (the run stops)."""
        super().__init__(name="emitter", daemon=True)
        self.stages, self.sinks_of, self.info, self.stats = stages, sinks_of, info, stats
        self.advance, self.on_failure = advance, on_failure
        self._queue: queue.Queue[Result | Unfinished | None] = queue.Queue(maxsize=window)
        self.lock = threading.Lock()  # held while frames go through stages and sinks (a source's sinks close under it)
        self._pending: dict[int, Result | Unfinished] = {}  # at most the dispatcher's window
        self._next_seq = 0
        self.failure: BaseException | None = None  # the first failure of a stage or a sink

    def put(self, item: Result | Unfinished) -> None:
        """From a worker: blocks while the queue is full (it never drops)."""
        self._queue.put(item)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # not a sink's failure (those are caught per frame): the run must not wait on us
            self.failure = self.failure or exc
            self.on_failure(exc)
            raise

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            self._pending[item.seq] = item
            with self.lock:
                while self._next_seq in self._pending:
                    ready = self._pending.pop(self._next_seq)
                    self._next_seq += 1
                    if isinstance(ready, Unfinished):
                        self.stats.count_interrupted(ready.frame.source)
                    else:
                        self._write(ready)
            self.advance(self._next_seq)  # once per item: the window moves on

    def _write(self, ready: Result) -> None:
        """Each stage, then every sink of the frame; counted inferred whether or not a sink could take it (a failing
        stage or sink ends the run, said so; the frames after it are still written and counted)."""
        try:
            for stage in self.stages:
                stage.process(ready)
            for sink in self.sinks_of(ready.frame.source):
                sink.write(ready, self.info)
        except Exception as exc:
            self._failed(exc)
        finally:
            ready.timings["end_to_end"] = time.perf_counter() - ready.frame.read_at  # decoded -> written
            self.stats.add(ready)

    def _failed(self, exc: Exception) -> None:
        if self.failure is None:
            self.failure = exc
            self.on_failure(exc)
        else:  # failing again (a sink that cannot write fails on every frame): counted, once per distinct problem
            self.stats.problem(f"{type(exc).__name__}: {exc}")

    def close(self) -> list[Result | Unfinished]:
        """After the last worker: emit what is queued, end the thread; returns what never came in order (numbered
        frames whose predecessor never arrived), for the caller to count."""
        if self.is_alive():
            self._queue.put(None)
            self.join()
        while True:  # a thread that never started: what the workers queued
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._pending[item.seq] = item
        left = list(self._pending.values())
        self._pending.clear()
        return left
