"""What a run counts while it streams: frames per source, latency per stage, requests, problems."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from tritonctl.vision.frames import Result
from tritonctl.vision.metrics import LatencyHistogram

STAGES = ("decode", "preprocess", "queue", "round_trip", "postprocess", "end_to_end")

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
