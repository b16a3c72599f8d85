"""The bounded outbox between the pipeline and a sink's publisher thread: what does not fit is dropped (oldest or
newest) or waited for (block), and a message leaves only when the broker has acknowledged it."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from tritonctl.core.errors import BadInput
from tritonctl.outputs.brokers.spec import POLICIES


@dataclass
class Message:
    body: dict[str, Any]
    queued_at: float  # perf_counter when it entered the outbox
    payload: bytes = b""  # the JSON, encoded once on the publisher thread (kept for retries)
    msg_id: str = ""  # run:seq, unique per message: JetStream deduplicates on it, consumers can too


class Outbox:
    """A bounded FIFO between the pipeline thread and one publisher thread.

    It holds up to `capacity` waiting messages, plus the batch being published: those stay owned by the outbox until
    acknowledged (done()) or put back at the front (retry()). When a put finds it full: `drop-oldest` drops the oldest
    waiting message, `drop-newest` the one being put, `block` waits for room. Every drop is counted."""

    def __init__(self, capacity: int, policy: str = "drop-oldest") -> None:
        if capacity < 1:
            raise BadInput(f"outbox capacity {capacity}: it must hold at least 1 message")
        if policy not in POLICIES:
            raise BadInput(f"outbox policy {policy!r}: use one of {', '.join(POLICIES)}")
        self.capacity, self.policy = capacity, policy
        self._waiting: deque[Message] = deque()
        self._in_flight: list[Message] = []
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False  # no more waiting for room: close() wakes a blocked put

    def put(self, msg: Message) -> bool:
        """False when the message was dropped (drop-newest, or block on a closed outbox)."""
        with self._cond:
            while self.policy == "block" and len(self._waiting) >= self.capacity and not self.closed:
                self._cond.wait(0.1)
            if len(self._waiting) >= self.capacity:
                self.dropped += 1
                if self.policy != "drop-oldest":
                    return False
                self._waiting.popleft()
            self._waiting.append(msg)
            self._cond.notify_all()
            return True

    def take(self, n: int, timeout: float) -> list[Message]:
        """Up to n waiting messages, now in flight; [] after `timeout` with nothing to take."""
        with self._cond:
            assert not self._in_flight, "acknowledge or retry the batch in flight first"
            if not self._waiting:
                self._cond.wait(timeout)
            k = min(n, len(self._waiting))
            self._in_flight = [self._waiting.popleft() for _ in range(k)]
            self._cond.notify_all()  # room for a blocked put
            return list(self._in_flight)

    def done(self, n: int) -> None:
        """The first n in flight are acknowledged: gone for good."""
        with self._cond:
            del self._in_flight[:n]

    def retry(self) -> None:
        """What is still in flight goes back to the front, in order; the policy trims any excess over capacity."""
        with self._cond:
            self._waiting.extendleft(reversed(self._in_flight))
            self._in_flight = []
            excess = len(self._waiting) - self.capacity
            if excess > 0 and self.policy != "block":
                self.dropped += excess
                for _ in range(excess):
                    (self._waiting.popleft if self.policy == "drop-oldest" else self._waiting.pop)()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting) + len(self._in_flight)
