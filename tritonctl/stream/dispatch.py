"""The dispatcher: frames of every source, batched and numbered, handed to the inference workers.

Its window bounds the frames numbered but not yet emitted, so the emitter's queue and reorder buffer are bounded too.
"""

from __future__ import annotations

import threading
import time

from tritonctl.sources.video import FrameQueue
from tritonctl.vision.frames import Frame


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
