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

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from tritonctl.core.errors import BadInput
from tritonctl.vision.metrics import LatencyHistogram

if TYPE_CHECKING:
    from tritonctl.inference.client import ModelInfo
    from tritonctl.stream.streaming import Result
    from tritonctl.vision.detections import Detections

SCHEMA = "tritonctl.events/1"
SCHEMA_FILE = Path(__file__).with_name("events_schema.json")
DEFAULT_PORTS = {"mqtt": 1883, "redis": 6379, "nats": 4222}
POLICIES = ("drop-oldest", "drop-newest", "block")
KINDS = ("frame", "object")
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 5.0
EXAMPLES = "mqtt://127.0.0.1:1883/tritonctl/detections, redis://127.0.0.1:6379/detections, nats://127.0.0.1:4222/detections"


# ---------------------------------------------------------------- the URL


@dataclass(frozen=True)
class SinkSpec:
    kind: str  # mqtt, redis, nats
    host: str
    port: int
    target: str  # MQTT topic, Redis stream key, NATS subject
    kinds: tuple[str, ...] = KINDS  # message kinds sent (`?kinds=object`: object events only)
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed

    @property
    def url(self) -> str:
        """The URL without credentials: what logs and the summary show."""
        query = "" if self.kinds == KINDS else "?kinds=" + ",".join(self.kinds)
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"{self.kind}://{host}:{self.port}/{self.target}{query}"


def parse_sink_url(text: str) -> SinkSpec:
    """`mqtt://host[:1883]/topic`, `redis://host[:6379]/stream`, `nats://host[:4222]/subject`, optionally
    `user:password@host` and `?kinds=frame,object`. Anything else: BadInput, one line saying what to write."""
    parts = urlsplit(text.strip())
    kind = parts.scheme.lower()
    if kind not in DEFAULT_PORTS:
        raise BadInput(f"--sink {text!r}: unknown broker {parts.scheme or '(none)'!r}; use one of {EXAMPLES}")
    _check_fragment(text, kind)
    if not parts.hostname:
        raise BadInput(f"--sink {text!r}: no host; write it as {kind}://HOST:PORT/{_target_word(kind)}")
    try:
        port = DEFAULT_PORTS[kind] if parts.port is None else parts.port
    except ValueError:  # urlsplit refuses ports that are not 0..65535 integers
        port = 0
    if not 1 <= port <= 65535:
        raise BadInput(f"--sink {text!r}: the port is not a number 1..65535")
    target = unquote(parts.path.lstrip("/"))
    _check_target(text, kind, target)
    return SinkSpec(kind, parts.hostname, port, target, _parse_kinds(text, parts.query),
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password else None)


def _target_word(kind: str) -> str:
    return {"mqtt": "TOPIC", "redis": "STREAM", "nats": "SUBJECT"}[kind]


def _check_fragment(text: str, kind: str) -> None:
    """A '#' starts a URL fragment, which urlsplit cuts off without a word: `mqtt://h/a/#` would publish to `a/`."""
    if "#" not in text:
        return
    rest = text.split("://", 1)[-1]
    if kind == "mqtt" and "/" in rest and rest.index("#") > rest.index("/"):  # in the topic: the wildcard
        raise BadInput(f"--sink {text!r}: MQTT wildcards (+, #) are for subscribing; publish to a plain topic")
    raise BadInput(f"--sink {text!r}: '#' starts a URL fragment, which would be dropped; write a '#' in a "
                   f"{_target_word(kind).lower()}, user or password as %23")


def _check_target(text: str, kind: str, target: str) -> None:
    # Each broker's own rules, checked before the run starts rather than failing on the first publish.
    word = _target_word(kind).lower()
    if not target:
        raise BadInput(f"--sink {text!r}: no {word}; write it as {kind}://HOST:PORT/{_target_word(kind)}")
    if kind == "mqtt" and ("+" in target or "#" in target):
        raise BadInput(f"--sink {text!r}: MQTT wildcards (+, #) are for subscribing; publish to a plain topic")
    if kind == "nats":
        tokens = target.split(".")
        if any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens) or "/" in target:
            raise BadInput(f"--sink {text!r}: {target!r} is not a NATS subject: dot-separated tokens without "
                           f"spaces, wildcards or slashes, e.g. tritonctl.detections")


def _parse_kinds(text: str, query: str) -> tuple[str, ...]:
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - {"kinds"})
    if unknown:
        raise BadInput(f"--sink {text!r}: unknown option {unknown[0]!r}; the only option is ?kinds=frame,object")
    if "kinds" not in options:
        return KINDS
    kinds = tuple(k.strip() for v in options["kinds"] for k in v.split(",") if k.strip())
    if not kinds or any(k not in KINDS for k in kinds):
        raise BadInput(f"--sink {text!r}: kinds must be frame, object or frame,object")
    return tuple(k for k in KINDS if k in kinds)


# ---------------------------------------------------------------- the messages


def frame_message(result: Result, info: ModelInfo, name: str, uri: str, model_version: str | None) -> dict[str, Any]:
    """The `frame` message: every inferred frame, detections in the JSON Lines form (track ids when tracked)."""
    frame = result.frame
    msg: dict[str, Any] = {"schema": SCHEMA, "kind": "frame", "source": frame.source, "name": name, "uri": uri,
                           "frame": frame.index, "pts": round(frame.timestamp, 4), "model": info.name}
    if model_version is not None:
        msg["model_version"] = model_version
    msg["detections"] = result.detections.to_json(info.names)
    return msg


@dataclass
class _Track:
    track_id: int
    class_id: int
    first_frame: int
    last_frame: int
    box: list[float]
    score: float
    zones: tuple[str, ...]
    reported: int  # the frame of its last new/update event


class ObjectEvents:
    """Frigate-style object events from tracked detections, state per source, bounded.

    `new` when a track id is first seen; `update` while it is seen, at most every `update_every` frames, or at once
    when the zones it is in change; `end` once it has not been seen for `lost_frames` frames of its source (frame
    numbers, so --vid-stride and dropped live frames count as time passing) and, for every track left, at finish().
    A source keeps at most `max_tracks` open: beyond that its longest-unseen track ends early."""

    def __init__(self, update_every: int = 30, lost_frames: int = 30, max_tracks: int = 1000) -> None:
        self.update_every, self.lost_frames, self.max_tracks = update_every, lost_frames, max_tracks
        self.tracks: dict[int, dict[int, _Track]] = {}  # source -> track id -> track
        self.last_frame: dict[int, int] = {}  # source -> the last frame seen

    def observe(self, source: int, frame: int, det: Detections, names: dict[int, str],
                zones: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
        """The events of one frame of one source: new/update for the tracks in it, end for the ones lost."""
        if det.track_ids is None:
            return []
        tracks = self.tracks.setdefault(source, {})
        self.last_frame[source] = frame
        boxes = det.boxes.tolist()
        out = []
        for i, (tid, cls, score) in enumerate(zip(det.track_ids.tolist(), det.classes.tolist(), det.scores.tolist(),
                                                  strict=True)):
            box = [round(v, 2) for v in boxes[i]]
            inside = tuple(sorted(zones[i])) if zones is not None else ()
            out += self._seen(source, tracks, frame, tid, cls, box, round(score, 4), inside, names)
        out += self._expire(source, tracks, frame, names)
        return out

    def _seen(self, source: int, tracks: dict[int, _Track], frame: int, tid: int, cls: int, box: list[float],
              score: float, zones: tuple[str, ...], names: dict[int, str]) -> list[dict[str, Any]]:
        track = tracks.get(tid)
        if track is None:
            tracks[tid] = _Track(tid, cls, frame, frame, box, score, zones, frame)
            return [self._event("new", source, tracks[tid], frame, names)]
        moved_zone = zones != track.zones
        track.class_id, track.last_frame, track.box, track.score, track.zones = cls, frame, box, score, zones
        if moved_zone or frame - track.reported >= self.update_every:
            track.reported = frame
            return [self._event("update", source, track, frame, names)]
        return []

    def _expire(self, source: int, tracks: dict[int, _Track], frame: int, names: dict[int, str]) -> list[dict[str, Any]]:
        gone = [t for t in tracks.values() if frame - t.last_frame >= self.lost_frames]
        if len(tracks) - len(gone) > self.max_tracks:  # bounded: the longest unseen go first
            alive = sorted((t for t in tracks.values() if t not in gone), key=lambda t: t.last_frame)
            gone += alive[:len(tracks) - len(gone) - self.max_tracks]
        for t in gone:
            del tracks[t.track_id]
        return [self._event("end", source, t, frame, names) for t in gone]

    def finish(self, names: dict[int, str]) -> list[dict[str, Any]]:
        """`end` for every track still open (the run is over)."""
        out = []
        for source, tracks in self.tracks.items():
            out += [self._event("end", source, t, self.last_frame[source], names) for t in tracks.values()]
            tracks.clear()
        return out

    @staticmethod
    def _event(event: str, source: int, t: _Track, frame: int, names: dict[int, str]) -> dict[str, Any]:
        x1, y1, x2, y2 = t.box
        return {"schema": SCHEMA, "kind": "object", "event": event, "source": source, "frame": frame,
                "track_id": t.track_id, "class_id": t.class_id, "class": names.get(t.class_id, str(t.class_id)),
                "first_frame": t.first_frame, "last_frame": t.last_frame,
                "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "score": t.score, "zones": list(t.zones)}


# ---------------------------------------------------------------- the outbox


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


# ---------------------------------------------------------------- the brokers


class Publisher(Protocol):
    """One broker connection, used from the publisher thread only."""

    def connect(self) -> None: ...

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]: ...  # (acked prefix, error)

    def close(self) -> None: ...


class MqttPublisher:
    """QoS 1, waiting for each PUBACK. A fresh paho client per connection, so paho never resends on its own: the
    outbox is the only retry path (and the only place a message can be counted)."""

    def __init__(self, spec: SinkSpec, timeout_s: float, batch: int) -> None:
        self.spec, self.timeout_s, self.batch = spec, timeout_s, batch
        self.client: Any = None
        self.lost = threading.Event()  # the connection dropped: stop waiting for acks that cannot come

    def connect(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tritonctl-{uuid.uuid4().hex[:12]}",
                             reconnect_on_failure=False)
        client.max_inflight_messages_set(self.batch)  # a whole batch on the wire before the first PUBACK
        if self.spec.username:
            client.username_pw_set(self.spec.username, self.spec.password)
        connected, lost = threading.Event(), threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else lost.set()
        client.on_disconnect = lambda c, u, f, rc, p: lost.set()
        client.connect(self.spec.host, self.spec.port, keepalive=10)
        client.loop_start()
        self.client, self.lost = client, lost
        deadline = time.monotonic() + self.timeout_s
        while not connected.is_set():
            if lost.is_set() or time.monotonic() > deadline:
                self.close()
                raise ConnectionError(f"MQTT broker {self.spec.host}:{self.spec.port} refused or did not answer")
            connected.wait(0.05)

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]:
        infos = [self.client.publish(self.spec.target, m.payload, qos=1) for m in batch]
        deadline = time.monotonic() + self.timeout_s
        for i, info in enumerate(infos):
            try:
                while not info.is_published():
                    if self.lost.is_set() or time.monotonic() > deadline:
                        return i, ConnectionError("MQTT connection lost before PUBACK" if self.lost.is_set()
                                                  else f"no PUBACK within {self.timeout_s:g} s")
                    self._quick_ack()
                    info.wait_for_publish(0.002)
            except (RuntimeError, ValueError) as e:  # not queued: the connection is gone
                return i, e
        return len(batch), None

    def _quick_ack(self) -> None:
        """Acknowledge the broker's TCP segments at once. Mosquitto's default (set_tcp_nodelay false) holds the last
        PUBACK of a burst back (Nagle) until our kernel's delayed ACK, 40 ms later: 2,200 messages/s instead of
        26,000 here. Linux leaves quick-ack mode on its own, hence once per wait."""
        sock = self.client.socket() if self.client is not None else None
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


class RedisPublisher:
    """XADD to a stream, the batch in one pipeline; each returned entry id is the acknowledgement. redis-py's own
    retries are off: the outbox retries, and counts."""

    def __init__(self, spec: SinkSpec, timeout_s: float) -> None:
        self.spec, self.timeout_s = spec, timeout_s
        self.client: Any = None

    def connect(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(host=self.spec.host, port=self.spec.port, username=self.spec.username,
                             password=self.spec.password, socket_timeout=self.timeout_s,
                             socket_connect_timeout=min(self.timeout_s, 2.0), retry=Retry(NoBackoff(), 0))
        client.ping()
        self.client = client

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]:
        pipe = self.client.pipeline(transaction=False)
        for m in batch:
            pipe.xadd(self.spec.target, {"data": m.payload, "id": m.msg_id})
        try:
            ids = pipe.execute(raise_on_error=False)
        except Exception as e:  # the connection went: nothing in this batch is known to be stored
            return 0, e
        for i, entry in enumerate(ids):
            if isinstance(entry, Exception) or not entry:
                return i, entry if isinstance(entry, Exception) else RuntimeError("XADD returned no id")
        return len(batch), None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class NatsPublisher:
    """JetStream publish_async with a Nats-Msg-Id header (JetStream drops a retried duplicate within its window),
    then every PubAck awaited. nats-py is asyncio: this thread runs its own event loop. When no stream captures the
    subject, one is created (TRITONCTL_<subject>, file storage, the server's default limits)."""

    def __init__(self, spec: SinkSpec, timeout_s: float) -> None:
        self.spec, self.timeout_s = spec, timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.js: Any = None

    def _run(self, coro: Any) -> Any:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(asyncio.wait_for(coro, self.timeout_s + 1.0))

    def connect(self) -> None:
        self._run(self._connect())

    async def _connect(self) -> None:
        import nats
        from nats.errors import NoServersError
        from nats.js.errors import NotFoundError

        errors: list[Exception] = []

        async def keep(error: Exception) -> None:  # nats-py logs every error by default; the sink counts them instead
            errors.append(error)

        async def quiet(*_: Any) -> None:
            return None

        # max_reconnect_attempts=0 would make nats-py retry a refused first connection for ever (until our timeout,
        # 6 s later, with no reason given); 1 without a wait: two quick tries, then the socket's own error.
        try:
            self.nc = await nats.connect(f"nats://{self.spec.host}:{self.spec.port}", user=self.spec.username,
                                         password=self.spec.password, connect_timeout=min(self.timeout_s, 2.0),
                                         allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
                                         error_cb=keep, disconnected_cb=quiet, closed_cb=quiet)
        except NoServersError:
            if errors:
                raise errors[-1] from None
            raise
        self.js = self.nc.jetstream(timeout=self.timeout_s)
        try:
            try:
                await self.js.find_stream_name_by_subject(self.spec.target)
            except NotFoundError:
                name = "TRITONCTL_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in self.spec.target)
                await self.js.add_stream(name=name, subjects=[self.spec.target])
        except BaseException:  # no JetStream (a server without -js), or it timed out: no connection left behind
            await self.nc.close()
            self.nc = None
            raise

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]:
        try:
            results = self._run(self._publish(batch))
        except Exception as e:  # a timeout or a dropped connection: nothing in the batch is known to be stored
            return 0, e
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                return i, r if isinstance(r, Exception) else RuntimeError(str(r))
        return len(batch), None

    async def _publish(self, batch: list[Message]) -> list[Any]:
        futures = [await self.js.publish_async(self.spec.target, m.payload, headers={"Nats-Msg-Id": m.msg_id})
                   for m in batch]
        # Without reconnects a dropped connection never answers the futures: stop waiting as soon as it is closed.
        deadline = time.monotonic() + self.timeout_s
        while not all(f.done() for f in futures) and not self.nc.is_closed and time.monotonic() < deadline:
            await asyncio.wait(futures, timeout=0.05)
        return [(f.exception() or f.result()) if f.done() and not f.cancelled()
                else ConnectionError("no JetStream PubAck") for f in futures]

    def close(self) -> None:
        if self.nc is not None:
            nc, self.nc, self.js = self.nc, None, None
            with contextlib.suppress(Exception):  # already gone: closing is best effort
                self._run(nc.close())
        if self.loop is not None:
            self.loop.close()
            self.loop = None


def make_publisher(spec: SinkSpec, timeout_s: float, batch: int) -> Publisher:
    if spec.kind == "mqtt":
        return MqttPublisher(spec, timeout_s, batch)
    if spec.kind == "redis":
        return RedisPublisher(spec, timeout_s)
    return NatsPublisher(spec, timeout_s)


# ---------------------------------------------------------------- the sink


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
