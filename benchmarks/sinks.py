#!/usr/bin/env python3
"""What `--sink` costs: per broker, the latency write() adds to the pipeline thread, and the messages/s it sustains.

Issue 13: "benchmarks/sinks.py: added p99 latency per frame with each sink on (target <= 2 ms), messages/s each sink
sustains". What runs, per broker (Mosquitto, Redis Streams, NATS JetStream), each started here on a free loopback port
as the tests start them (Redis without persistence, JetStream on a file store in a temporary folder):

- added latency: --frames frames of --boxes tracked detections (moving, so object events come too), written to a
  BrokerSink at --fps, the way the pipeline's emitter calls it, while the sink's publisher thread sends them; each
  write() is timed on the calling thread (perf_counter), so GIL contention with the publisher thread is included.
  Reported: p50, p99, max per frame; the target is p99 <= 2 ms;
- sustained messages/s: --messages frame messages written as fast as possible into an outbox that holds them all,
  then close() flushes; messages/s = messages acknowledged / (first write -> last acknowledgement);
- the sink's own counters (sent, dropped, failed, both runs) and, in the latency run, its p99 from write() to the
  broker's acknowledgement.

Run: .venv/bin/python benchmarks/sinks.py [--frames 3000] [--fps 300] [--boxes 20] [--messages 20000] [--json out.json]
About 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonctl.inference.client import ModelInfo  # noqa: E402
from tritonctl.outputs.events import BrokerSink, parse_sink_url  # noqa: E402
from tritonctl.vision.detections import Detections  # noqa: E402
from tritonctl.vision.frames import Frame, Result  # noqa: E402
from tritonctl.vision.metrics import LatencyHistogram  # noqa: E402

INFO = ModelInfo(name="shapes", input_name="images", input_dtype="FP32", height=640, width=640, output_name="output0",
                 output_shape=(7, 8400), output_dtype="FP32", max_batch=8, names={0: "circle", 1: "square", 2: "triangle"},
                 layout="NCHW")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(kind: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    if kind == "mqtt":
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
        argv = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
    elif kind == "redis":
        argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(folder)]
    else:
        argv = [str(Path(sys.executable).parent / "nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port),
                "-sd", str(folder)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    stop_broker(proc)
    raise SystemExit(f"{argv[0]} did not start on port {port}")


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def tracked(n: int, frame: int) -> Detections:
    x = np.arange(n, dtype=np.float32) * 60 + frame % 600
    boxes = np.stack([x, x * 0 + 100, x + 50, x * 0 + 180], 1)
    return Detections(boxes, np.full(n, 0.87, np.float32), np.arange(n, dtype=np.int64) % 3, np.arange(n, dtype=np.int64))


def result(index: int, det: Detections) -> Result:
    frame = Frame(source=0, index=index, image=np.zeros((1, 1, 3), np.uint8), timestamp=index / 30,
                  read_at=time.perf_counter(), decode_s=0.0)
    return Result(seq=index, frame=frame, detections=det, timings={})


def write_latency(url: str, frames: int, fps: float, boxes: int) -> tuple[LatencyHistogram, dict[str, Any]]:
    sink = BrokerSink(parse_sink_url(url), capacity=100_000, flush_timeout_s=30)
    hist = LatencyHistogram()
    period = 1.0 / fps
    next_at = time.perf_counter()
    for i in range(frames):
        r = result(i, tracked(boxes, i))  # built before the clock: the pipeline hands the sink a finished Result
        started = time.perf_counter()
        sink.write(r, INFO)
        hist.add(time.perf_counter() - started)
        next_at += period
        time.sleep(max(0.0, next_at - time.perf_counter()))
    sink.close()
    return hist, sink.stats()


def throughput(url: str, messages: int) -> tuple[float, dict[str, Any]]:
    sink = BrokerSink(parse_sink_url(url + "?kinds=frame"), capacity=messages, flush_timeout_s=120)
    det = tracked(5, 0)
    started = time.perf_counter()
    for i in range(messages):
        sink.write(result(i, det), INFO)
    sink.close()
    elapsed = time.perf_counter() - started
    stats = sink.stats()
    return stats["sent"] / elapsed, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--fps", type=float, default=300.0, help="frames/s written in the latency run (10 cameras at 30)")
    ap.add_argument("--boxes", type=int, default=20, help="tracked detections per frame")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--kinds", default="mqtt,redis,nats")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = start_broker(kind, Path(tmp))
            try:
                target = "tritonctl.bench" if kind == "nats" else "tritonctl/bench" if kind == "mqtt" else "bench"
                hist, lat_stats = write_latency(f"{kind}://127.0.0.1:{port}/{target}", args.frames, args.fps, args.boxes)
                rate, tp_stats = throughput(f"{kind}://127.0.0.1:{port}/{target}2", args.messages)
            finally:
                stop_broker(proc)
        rows.append({"sink": kind, "write_p50_ms": hist.percentile(50) * 1e3, "write_p99_ms": hist.percentile(99) * 1e3,
                     "write_max_ms": hist.max * 1e3, "frames": hist.count, "messages_latency_run": lat_stats["produced"],
                     "msgs_per_s": rate, "latency_run": lat_stats, "throughput_run": tp_stats})
    print(f"\n{args.frames} frames of {args.boxes} tracked boxes at {args.fps:g} fps; {args.messages} messages for "
          f"throughput; {os.cpu_count()} CPUs\n")
    print(f"{'sink':<7}{'write p50 ms':>13}{'write p99 ms':>13}{'write max ms':>13}{'ack p99 ms':>12}"
          f"{'msgs/s':>10}{'sent':>8}{'dropped':>9}{'failed':>8}")
    for r in rows:
        lat, tp = r["latency_run"], r["throughput_run"]
        print(f"{r['sink']:<7}{r['write_p50_ms']:>13.3f}{r['write_p99_ms']:>13.3f}{r['write_max_ms']:>13.3f}"
              f"{lat['delivery_p99_ms']:>12.2f}{r['msgs_per_s']:>10.0f}{lat['sent'] + tp['sent']:>8}"
              f"{lat['dropped'] + tp['dropped']:>9}{lat['failed'] + tp['failed']:>8}")
    print("\nwrite: time on the pipeline thread per frame; ack p99: write() -> broker acknowledgement at --fps; "
          "msgs/s: sustained, write -> last ack")
    verdict = all(r["write_p99_ms"] <= 2.0 for r in rows)
    print(f"\nadded p99 per frame <= 2 ms: {'yes' if verdict else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
