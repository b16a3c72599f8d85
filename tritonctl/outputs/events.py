"""Results published to message brokers: `--sink mqtt://host:port/topic`, `redis://host:port/stream` (Redis Streams),
`nats://host:port/subject` (NATS JetStream). docs/events.md is the contract; tritonctl/outputs/events_schema.json its schema.

Two message kinds, JSON, each with "schema": "tritonctl.events/1": one `frame` message per inferred frame, and, when
the detections carry track ids, Frigate-style `object` events (new / update / end) per tracked object.

Delivery is at least once, off the inference path:

    pipeline thread: BrokerSink.write() -> builds the messages -> Outbox (bounded; drop-oldest / drop-newest / block)
    publisher thread (one per sink): takes a batch -> publishes it -> waits for the broker's acknowledgement
        (MQTT QoS 1 PUBACK, Redis XADD's id, JetStream PubAck) -> only then removes it from the outbox.

A failed publish puts the batch back at the front of the outbox, closes the connection, and reconnects with back-off
(0.5 s doubling to 5 s), so a broker that goes away loses nothing while the outbox has room; every message it has no
room for is counted as dropped, and what is still there when close() gives up (after `flush_timeout_s`) as lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonctl.core.errors import BadInput
from tritonctl.outputs.brokers.messages import ObjectEvents, frame_message
from tritonctl.outputs.brokers.outbox import Message, Outbox
from tritonctl.outputs.brokers.publisher import Publisher, make_publisher
from tritonctl.outputs.brokers.spec import POLICIES, SinkSpec, parse_sink_url
from tritonctl.vision.metrics import LatencyHistogram

if TYPE_CHECKING:
    from tritonctl.inference.client import ModelInfo
    from tritonctl.vision.detections import Detections
    from tritonctl.vision.frames import Result

__all__ = ["POLICIES", "BrokerSink", "SinkSpec", "SinkStats", "parse_sink_url"]  # the run checks --sink through here
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 5.0


@dataclass
class SinkStats:
    produced: int = 0  # messages built by write() and offered to the outbox
    sent: int = 0  # acknowledged by the broker
    dropped: int = 0  # no room in the outbox
    failed: int = 0  # publish or connect attempts that failed (each retried)
    reconnects: int = 0  # connections made after the first
    lost: int = 0  # still in the outbox when close() gave up, or at discard()
    last_error: str | None = None
    flush_s: float = 0.0  # from the start of the final flush to the end of close()
    publish: LatencyHistogram = field(default_factory=LatencyHistogram)  # taken from the outbox -> acknowledged
    delivery: LatencyHistogram = field(default_factory=LatencyHistogram)  # write() -> acknowledged


class BrokerSink:
    """The `Sink` that publishes. write() only builds messages and queues them (microseconds); one thread per sink
    connects at once and publishes. close() flushes for up to `flush_timeout_s` from begin_close() (so several sinks
    flush side by side), then counts what is left as lost; discard() stops at once.

    `on_problem(line)`: told in one line when a connection attempt fails (once per outage: the first failure) and
    when one succeeds after that, so a broker that is not there is said as the run starts, not only in the summary.

    `source_name(id)`/`source_uri(id)`: asked per frame (sources can join a running pipeline). `zones_of(source,
    detections)`: the zone names each detection is in (object events report them; none: always []).
    """

    def __init__(self, spec: SinkSpec, *, source_name: Callable[[int], str] = lambda s: f"cam{s}",
                 source_uri: Callable[[int], str] = lambda s: "", model_version: str | None = None,
                 capacity: int = 10_000, policy: str = "drop-oldest", batch: int = 100, flush_timeout_s: float = 5.0,
                 ack_timeout_s: float = 5.0, objects: ObjectEvents | None = None,
                 zones_of: Callable[[int, Detections], Sequence[Sequence[str]]] | None = None,
                 publisher: Publisher | None = None, on_problem: Callable[[str], None] | None = None) -> None:
        if batch < 1 or flush_timeout_s < 0 or ack_timeout_s <= 0:
            raise BadInput(f"sink {spec.url}: batch must be at least 1, timeouts positive")
        self.spec = spec
        self.source_name, self.source_uri, self.model_version = source_name, source_uri, model_version
        self.outbox = Outbox(capacity, policy)
        self.batch, self.flush_timeout_s, self.ack_timeout_s = batch, flush_timeout_s, ack_timeout_s
        self.objects = objects if objects is not None else ObjectEvents()
        self.zones_of = zones_of
        self.publisher = publisher if publisher is not None else make_publisher(spec, ack_timeout_s, batch)
        self.run_id = uuid.uuid4().hex[:16]
        self._seq = 0
        self._names: dict[int, str] = {}
        self._stats = SinkStats()
        self._last_exception: BaseException | None = None
        self._lock = threading.Lock()  # the publisher thread's counters, read by stats()
        self._closing, self._abort = threading.Event(), threading.Event()
        self.on_problem = on_problem
        self._failing_since: float | None = None  # the first connection failed then: said, and said when it connects
        self._flush_started = 0.0  # perf_counter at begin_close()
        self._deadline: float | None = None  # monotonic: the publisher stops trying then
        self._thread = threading.Thread(target=self._publish_loop, name=f"sink-{spec.kind}", daemon=True)
        self._thread.start()

    # -- the pipeline thread

    def write(self, result: Result, info: ModelInfo) -> None:
        self._names = info.names
        sid = result.frame.source
        if "frame" in self.spec.kinds:
            self._queue(frame_message(result, info, self.source_name(sid), self.source_uri(sid), self.model_version))
        if "object" in self.spec.kinds and result.detections.track_ids is not None:
            zones = self._zones(result)
            for event in self.objects.observe(sid, result.frame.index, result.detections, info.names, zones):
                event["name"] = self.source_name(sid)
                self._queue(event)

    def _zones(self, result: Result) -> Sequence[Sequence[str]] | None:
        """The zones each detection is in: from the run's zones (the pipeline file), else from the `zones_of` hook."""
        if result.geometry is not None:
            return [result.geometry.zones_of(i) for i in range(len(result.detections))]
        return self.zones_of(result.frame.source, result.detections) if self.zones_of is not None else None

    def _queue(self, body: dict[str, Any]) -> None:
        # run + seq: gapless per sink, so a consumer sees drops as gaps and at-least-once repeats as duplicates.
        body["run"], body["seq"], body["time"] = self.run_id, self._seq, round(time.time(), 3)
        self._seq += 1
        self._stats.produced += 1
        self.outbox.put(Message(body, time.perf_counter(), msg_id=f"{self.run_id}:{body['seq']}"))

    def written(self) -> list[tuple[Path, int]]:
        return []  # no files

    def stop_waiting(self) -> None:
        """The run is stopping: a `block` outbox stops waiting for room (a put that finds it full drops, counted), so
        no pipeline thread stays blocked on a broker that is down. Publishing and the flush at close go on."""
        self.outbox.close()

    def begin_close(self) -> None:
        """End events for open tracks, and the final flush starts: its deadline runs from now, whenever close() is
        called, so the run begins every sink's flush before it waits on the first."""
        if self._deadline is not None:
            return
        self.stop_waiting()  # the end events below must never wait for room
        if "object" in self.spec.kinds:
            for event in self.objects.finish(self._names):
                event["name"] = self.source_name(event["source"])
                self._queue(event)
        self._flush_started = time.perf_counter()
        self._deadline = time.monotonic() + self.flush_timeout_s
        self._closing.set()

    def close(self) -> None:
        """begin_close() if not yet, then wait for the flush until its deadline; the rest is counted as lost."""
        self.begin_close()
        assert self._deadline is not None
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        self._stop()
        with self._lock:
            self._stats.flush_s = time.perf_counter() - self._flush_started

    def discard(self) -> None:
        """Stop now, without flushing: whatever is queued is counted as lost."""
        self._stop()

    def _stop(self) -> None:
        self._abort.set()
        self.outbox.close()
        self._thread.join(self.ack_timeout_s + 1.0)  # a publish under way ends within its ack timeout
        with self._lock:
            self._stats.lost = len(self.outbox)

    # -- the publisher thread

    def _publish_loop(self) -> None:
        # Connects before the first message: a broker that is not there is known (and said) as the run starts.
        connected, ever_connected, backoff = False, False, BACKOFF_MIN_S
        try:
            while not self._abort.is_set() and not self._past_deadline():
                if self._closing.is_set() and not len(self.outbox):
                    return  # flushed
                if not connected:
                    if not self._connect():
                        backoff = self._back_off(backoff)
                        continue
                    connected, backoff = True, BACKOFF_MIN_S
                    with self._lock:
                        self._stats.reconnects += ever_connected
                    ever_connected = True
                batch = self.outbox.take(self.batch, timeout=0.1)
                if batch and not self._send(batch):
                    connected = False
                    self._try(self.publisher.close)
                    backoff = self._back_off(backoff)
        finally:
            self.outbox.retry()  # anything in flight is not acknowledged: still ours, counted as lost
            self._try(self.publisher.close)

    def _connect(self) -> bool:
        """One connection attempt; an outage's first failure is said at once (one line), and its end too."""
        if self._try(self.publisher.connect):
            if self._failing_since is not None:
                self._say(f"sink {self.spec.url}: connected after {time.monotonic() - self._failing_since:.1f} s")
            self._failing_since = None
            return True
        if self._failing_since is None:  # once per outage: the first run's start, or a broker gone mid-run
            self._failing_since = time.monotonic()
            self._say(f"sink {self.spec.url}: cannot connect ({self._reason}); retrying, events are kept in its "
                      f"outbox (up to {self.outbox.capacity:,}, then {self.outbox.policy})")
        return False

    def _say(self, line: str) -> None:
        if self.on_problem is not None:
            with contextlib.suppress(Exception):  # a closed stderr must not end the publisher (and lose the events)
                self.on_problem(line)

    @property
    def _reason(self) -> str:
        with self._lock:
            return _short_reason(self._last_exception)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _send(self, batch: list[Message]) -> bool:
        started = time.perf_counter()
        try:
            for m in batch:
                if not m.payload:
                    m.payload = json.dumps(m.body, separators=(",", ":")).encode()
            acked, error = self.publisher.publish(batch)
        except Exception as e:  # a client library's surprise must not end the thread: retried like any failure
            acked, error = 0, e
        now = time.perf_counter()
        self.outbox.done(acked)
        with self._lock:
            self._stats.sent += acked
            for m in batch[:acked]:
                self._stats.publish.add(now - started)
                self._stats.delivery.add(now - m.queued_at)
            if error is not None:
                self._last_exception = error
                self._stats.failed += 1
                self._stats.last_error = f"{type(error).__name__}: {error}"[:200]
        return error is None

    def _try(self, action: Callable[[], None]) -> bool:
        try:
            action()
            return True
        except Exception as e:  # a broker that is down or refuses: counted, retried after back-off
            with self._lock:
                self._last_exception = e
                self._stats.failed += 1
                self._stats.last_error = f"{type(e).__name__}: {e}"[:200]
            return False

    def _back_off(self, backoff: float) -> float:
        """The unacknowledged batch goes back to the outbox's front; wait (Ctrl-C or discard cuts it short)."""
        self.outbox.retry()
        wait = backoff if self._deadline is None else min(backoff, max(0.0, self._deadline - time.monotonic()))
        self._abort.wait(wait)
        return min(backoff * 2, BACKOFF_MAX_S)

    # -- the summary

    def stats(self) -> dict[str, Any]:
        """The counters for the run summary. produced = sent + dropped + lost + (queued), duplicates aside."""
        with self._lock:
            s = self._stats
            return {"sink": self.spec.url, "policy": self.outbox.policy, "capacity": self.outbox.capacity,
                    "produced": s.produced, "sent": s.sent, "dropped": self.outbox.dropped, "failed": s.failed,
                    "reconnects": s.reconnects, "lost": s.lost, "queued": len(self.outbox),
                    "publish_p99_ms": round(s.publish.percentile(99) * 1e3, 3),
                    "delivery_p99_ms": round(s.delivery.percentile(99) * 1e3, 3), "last_error": s.last_error,
                    "reason": _short_reason(self._last_exception) if s.last_error else None,
                    "flush_s": round(s.flush_s, 3)}


def _short_reason(error: BaseException | None) -> str:
    """What a user can act on, from a client library's error: the socket's own words ("Connection refused") where
    there are some, else the message (redis-py wraps the OSError, asyncio rewords it: the errno says it plainly)."""
    for e in (error, getattr(error, "__cause__", None), getattr(error, "__context__", None)):
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno)
    if error is None:
        return "no error"
    return (str(error) or type(error).__name__)[:120]
