"""`tritonctl detect`: sources -> readers -> inference workers (letterbox into the request's buffer, infer on the
least-busy healthy endpoint, decode) -> one writer (in order: annotated video, JSON Lines) -> a summary.

Every queue is bounded. Readers: `block` for files (every frame), `latest` for live sources (newest frame; drops
counted). Workers take frames round-robin from the sources, so one busy source cannot starve the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.client import EndpointPool, InferSlot, ModelInfo, TransientError, fetch_model_info, server_stats
from tritonctl.errors import BadInput, ServerError
from tritonctl.postprocess import PostSettings, decode
from tritonctl.preprocess import Preprocessor
from tritonctl.video import Frame, FrameQueue, Reader, SourceSpec, parse_sources

STAGES = ("decode", "preprocess", "queue", "round_trip", "postprocess", "end_to_end")


@dataclass(frozen=True)
class DetectSettings:
    sources: list[SourceSpec]
    urls: list[str]
    model: str
    protocol: str = "http"
    shm: str = "auto"
    concurrency: int | None = None
    batch: int = 1
    realtime: bool | None = None
    vid_stride: int = 1
    post: PostSettings = field(default_factory=PostSettings)
    output: Path | None = None
    json_path: Path | None = None
    summary_json: Path | None = None
    show: bool = False
    server_timeout_s: float = 30.0
    queue_size: int = 8
    stall_timeout_s: float = 5.0
    reconnects: int = 5

    @classmethod
    def create(cls, *, sources: list[str], urls: list[str], **kw: Any) -> DetectSettings:
        s = cls(sources=parse_sources(sources), urls=urls or ["127.0.0.1:8000"], **kw)
        if s.protocol not in ("http", "grpc"):
            raise BadInput(f"--protocol {s.protocol!r}: choose http or grpc")
        if s.shm not in ("auto", "system", "none"):
            raise BadInput(f"--shm {s.shm!r}: choose auto, system or none")
        if s.concurrency is not None and s.concurrency < 1:
            raise BadInput("--concurrency must be at least 1")
        if s.stall_timeout_s <= 0 or s.reconnects < 0:
            raise BadInput("--stall-timeout must be positive and --reconnects at least 0")
        if s.batch < 1 or s.vid_stride < 1 or s.queue_size < 1:
            raise BadInput("--batch, --vid-stride and the queue size must be at least 1")
        if not 0 <= s.post.conf <= 1 or not 0 <= s.post.iou <= 1:
            raise BadInput("--conf and --iou lie in 0..1")
        if s.shm == "system" and not all(u.rsplit(":", 1)[0] in ("127.0.0.1", "localhost") for u in s.urls):
            raise BadInput("--shm system needs the server on this host (127.0.0.1/localhost): use --shm none for remote ones")
        for path in (s.output, s.json_path, s.summary_json):
            if path is not None and not path.parent.exists():
                raise BadInput(f"cannot write {path}: folder {path.parent} does not exist")
        return s


# ---------------------------------------------------------------- results and statistics


@dataclass
class Result:
    seq: int
    frame: Frame
    detections: np.ndarray | None  # None: dropped (no server answered)
    timings: dict[str, float]
    endpoint: str = ""


@dataclass
class RunStats:
    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0
    inferred: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    interrupted: dict[int, int] = field(default_factory=dict)
    stages: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in STAGES})
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: Result) -> None:
        with self.lock:
            target = self.failed if result.detections is None else self.inferred
            target[result.frame.source] = target.get(result.frame.source, 0) + 1
            if result.detections is not None:
                for k, v in result.timings.items():
                    self.stages[k].append(v)
                self.per_endpoint[result.endpoint] = self.per_endpoint.get(result.endpoint, 0) + 1


class Dispatcher:
    """Hands frames to workers round-robin over the sources, numbering them in the order they leave."""

    def __init__(self, queues: list[FrameQueue]) -> None:
        self.queues = queues
        self._lock = threading.Lock()
        self._next_source = 0
        self._seq = 0

    def take(self, n: int, stop: threading.Event) -> tuple[list[tuple[int, Frame]], bool]:
        """Up to n frames; (frames, done) where done means every source is exhausted."""
        while not stop.is_set():
            with self._lock:
                frames: list[tuple[int, Frame]] = []
                for _ in range(len(self.queues) * n):
                    if len(frames) == n:
                        break
                    q = self.queues[self._next_source]
                    self._next_source = (self._next_source + 1) % len(self.queues)
                    frame = q.get_nowait()
                    if frame is not None:
                        frames.append((self._seq, frame))
                        self._seq += 1
                if frames:
                    return frames, False
                if all(q.exhausted for q in self.queues):
                    return [], True
            time.sleep(0.001)
        return [], True

    def drain(self) -> list[Frame]:
        left = []
        for q in self.queues:
            while (f := q.get_nowait()) is not None:
                left.append(f)
        return left


class Worker(threading.Thread):
    def __init__(self, wid: int, run: Detection) -> None:
        super().__init__(name=f"infer-{wid}", daemon=True)
        self.run_ = run
        s, info = run.settings, run.info
        use_shm = s.shm == "system" or (s.shm == "auto" and any(e.local for e in run.pool.endpoints))
        self.slot = InferSlot(info, run.batch, s.protocol, use_shm)
        self.pre = Preprocessor(info.height, info.width, info.input_np, run.batch, out=self.slot.inputs)
        self.error: BaseException | None = None

    def run(self) -> None:
        r = self.run_
        try:
            while True:
                frames, done = r.dispatcher.take(r.batch, r.stop)
                if done:
                    break
                self._process(frames)
        except BaseException as exc:  # surfaced by Detection.run, which stops the others
            self.error = exc
            r.stop.set()
        finally:
            problems = self.slot.close()
            with r.stats.lock:
                r.stats.bytes_sent += self.slot.bytes_sent
                r.stats.problems.extend(problems)

    def _process(self, frames: list[tuple[int, Frame]]) -> None:
        r = self.run_
        t0 = time.perf_counter()
        boxes = [self.pre(frame.image, row=k) for k, (_, frame) in enumerate(frames)]
        t1 = time.perf_counter()
        output, endpoint = self._infer(len(frames))
        t2 = time.perf_counter()
        if output is None:
            for seq, frame in frames:
                r.emit(Result(seq, frame, None, {}))
            return
        dets = decode(output, r.info.layout, r.settings.post)
        for det, box in zip(dets, boxes, strict=True):
            box.to_source(det)
        t3 = time.perf_counter()
        for (seq, frame), det in zip(frames, dets, strict=True):
            timings = {"decode": frame.decode_s, "preprocess": (t1 - t0) / len(frames), "queue": t0 - frame.read_at,
                       "round_trip": t2 - t1, "postprocess": (t3 - t2) / len(frames)}
            r.emit(Result(seq, frame, det, timings, endpoint))

    def _infer(self, n: int) -> tuple[np.ndarray | None, str]:
        """Infer on a healthy endpoint, failing over and waiting with back-off while all are down.

        Returns (None, "") only when the run is stopping; raises ServerError once every endpoint has been
        unreachable for longer than --server-timeout."""
        r = self.run_
        down_since: float | None = None
        while not r.stop.is_set():
            ep = r.pool.acquire()
            if ep is not None:
                ok = False
                try:
                    output = self.slot.infer(ep, n)
                    ok = True
                    r.count("requests")
                    return output, ep.url
                except TransientError:
                    r.count("retries")
                finally:
                    r.pool.release(ep, ok)
                continue
            now = time.monotonic()
            down_since = down_since or now
            r.all_down_for(now - down_since)
            if now - down_since > r.settings.server_timeout_s:
                urls = ", ".join(e.url for e in r.pool.endpoints)
                raise ServerError(f"no Triton endpoint answered for {now - down_since:.0f} s ({urls}); "
                                  "raise --server-timeout or restart the server")
            r.stop.wait(min(0.5, r.pool.next_retry_s() + 0.01))
        return None, ""


class Detection:
    """One `detect` run: owns the threads, the queues and the sinks."""

    def __init__(self, settings: DetectSettings, info: ModelInfo, sinks: list[Any],
                 on_result: Callable[[Result], None] | None = None) -> None:
        self.settings, self.info, self.sinks = settings, info, sinks
        self.stop = threading.Event()
        self.stats = RunStats()
        max_batch = info.max_batch or 1
        if settings.batch > max_batch:
            raise BadInput(f"--batch {settings.batch} exceeds model {info.name!r}'s max batch {max_batch}")
        self.batch = settings.batch
        self.concurrency = settings.concurrency or max(2, min(8, max_batch // 2))
        self.pool = EndpointPool(settings.urls)
        self.queues = [FrameQueue(settings.queue_size, self._policy(s)) for s in settings.sources]
        self.readers = [Reader(s, q, self.stop, settings.vid_stride, settings.stall_timeout_s, settings.reconnects)
                        for s, q in zip(settings.sources, self.queues, strict=True)]
        self.dispatcher = Dispatcher(self.queues)
        self.on_result = on_result
        self._pending: dict[int, Result] = {}
        self._next_seq = 0
        self._emit_lock = threading.Lock()
        self.down_s = 0.0
        self.fatal: BaseException | None = None

    def _policy(self, spec: SourceSpec) -> str:
        realtime = self.settings.realtime if self.settings.realtime is not None else spec.live
        return "latest" if realtime else "block"

    def count(self, name: str) -> None:
        with self.stats.lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def all_down_for(self, seconds: float) -> None:
        with self._emit_lock:
            self.down_s = max(self.down_s, seconds)

    def emit(self, result: Result) -> None:
        """Results arrive out of order from the workers; sinks see them in sequence."""
        with self._emit_lock:
            self._pending[result.seq] = result
            while self._next_seq in self._pending:
                ready = self._pending.pop(self._next_seq)
                self._next_seq += 1
                ready.timings["end_to_end"] = time.perf_counter() - ready.frame.read_at
                self.stats.add(ready)
                if ready.detections is not None:
                    for sink in self.sinks:
                        sink.write(ready, self.info)
                if self.on_result:
                    self.on_result(ready)

    def run(self) -> RunStats:
        workers = [Worker(i, self) for i in range(self.concurrency)]
        before = self._server_stats()
        for t in [*self.readers, *workers]:
            t.start()
        try:
            for w in workers:
                while w.is_alive():
                    w.join(0.2)
        finally:
            self.stop.set()
            for w in workers:
                w.join()
            for frame in self.dispatcher.drain():
                self.stats.interrupted[frame.source] = self.stats.interrupted.get(frame.source, 0) + 1
            for reader in self.readers:
                reader.join(timeout=5)
            for sink in self.sinks:
                sink.close()
            self.stats.finished = time.perf_counter()
        errors = [w.error for w in workers if w.error is not None]
        if errors:
            raise errors[0]
        self.stats.per_endpoint = {k: v for k, v in self.stats.per_endpoint.items() if k}
        self.server_delta = self._delta(before, self._server_stats())
        return self.stats

    def _server_stats(self) -> dict[str, dict[str, float]]:
        out = {}
        for ep in self.pool.endpoints:
            try:
                out[ep.url] = server_stats(self.settings.protocol, ep.url, self.info.name)
            except Exception as exc:  # an endpoint that is down has no statistics to give
                self.stats.problems.append(f"statistics from {ep.url}: {type(exc).__name__}")
        return out

    @staticmethod
    def _delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
        keys = ("count", "queue_ns", "compute_ns", "executions")
        total = {k: sum(after[u][k] - before[u][k] for u in after if u in before) for k in keys}
        count = total["count"]
        return {"inferences": count, "executions": total["executions"],
                "queue_ms": total["queue_ns"] / count / 1e6 if count else 0.0,
                "compute_ms": total["compute_ns"] / count / 1e6 if count else 0.0}


def check_server(settings: DetectSettings) -> ModelInfo:
    """The model's signature from the first endpoint that answers."""
    errors = []
    for url in settings.urls:
        try:
            return fetch_model_info(settings.protocol, url, settings.model)
        except ServerError as exc:
            errors.append(str(exc))
    raise ServerError(errors[0] if len(errors) == 1 else f"no endpoint answers: {'; '.join(errors)}")


# ---------------------------------------------------------------- summary


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = np.asarray(values) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(ms.mean())}


def summarize(run: Detection) -> dict[str, Any]:
    st = run.stats
    wall = max(st.finished - st.started, 1e-9)
    sources = []
    for spec, reader, q in zip(run.settings.sources, run.readers, run.queues, strict=True):
        rs = reader.stats
        sources.append({
            "id": spec.id, "uri": spec.uri, "kind": spec.kind, "policy": q.policy, "read": rs.read,
            "inferred": st.inferred.get(spec.id, 0), "dropped": q.dropped + st.failed.get(spec.id, 0),
            "interrupted": st.interrupted.get(spec.id, 0), "skipped_stride": rs.skipped_stride, "stalls": rs.stalls,
            "reconnects": rs.reconnects, "error": rs.error, "fps": st.inferred.get(spec.id, 0) / wall,
        })
    inferred = sum(st.inferred.values())
    return {
        "model": run.info.name, "endpoints": run.settings.urls, "protocol": run.settings.protocol,
        "shared_memory": run.settings.shm != "none" and any(e.local for e in run.pool.endpoints),
        "concurrency": run.concurrency, "batch": run.batch, "wall_s": wall, "fps": inferred / wall,
        "frames": {"read": sum(s["read"] for s in sources), "inferred": inferred,
                   "dropped": sum(s["dropped"] for s in sources), "interrupted": sum(s["interrupted"] for s in sources)},
        "sources": sources,
        "latency_ms": {k: _percentiles(v) for k, v in st.stages.items()},
        "server": getattr(run, "server_delta", {}),
        "requests": st.requests, "retries": st.retries, "all_down_s": run.down_s,
        "bytes_sent": st.bytes_sent, "bytes_sent_per_frame": st.bytes_sent / inferred if inferred else 0.0,
        "per_endpoint": st.per_endpoint, "problems": st.problems,
    }


def render_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from tritonctl.ui import console

    con = console()
    src = Table("source", "policy", "read", "inferred", "dropped", "fps", "stalls", "error",
                title=f"{summary['model']}: {summary['frames']['inferred']} frames in {summary['wall_s']:.1f} s = "
                      f"{summary['fps']:.1f} fps (concurrency {summary['concurrency']}, batch {summary['batch']}, "
                      f"{summary['protocol']}{', shared memory' if summary['shared_memory'] else ''})")
    for s in summary["sources"]:
        src.add_row(f"{s['id']}: {s['uri']}", s["policy"], str(s["read"]), str(s["inferred"]),
                    str(s["dropped"] + s["interrupted"]), f"{s['fps']:.1f}", str(s["stalls"]), s["error"] or "")
    con.print(src)
    lat = Table("stage (ms)", "p50", "p95", "p99", "mean")
    for stage, p in summary["latency_ms"].items():
        if p:
            lat.add_row(stage, *(f"{p[k]:.2f}" for k in ("p50", "p95", "p99", "mean")))
    server = summary.get("server") or {}
    if server.get("inferences"):
        lat.add_row("server queue (avg)", "", "", "", f"{server['queue_ms']:.2f}")
        lat.add_row("server compute (avg)", "", "", "", f"{server['compute_ms']:.2f}")
    con.print(lat)
    if summary["retries"] or summary["problems"]:
        con.print(f"[yellow]retries {summary['retries']}, endpoints down up to {summary['all_down_s']:.1f} s"
                      f"{'; ' + '; '.join(summary['problems']) if summary['problems'] else ''}[/]")


# ---------------------------------------------------------------- one run, end to end


def open_sinks(settings: DetectSettings, run: Detection) -> list[Any]:
    import os

    from tritonctl.sinks import JsonlSink, ShowSink, VideoSink

    sinks: list[Any] = []
    if settings.json_path is not None:
        sinks.append(JsonlSink(settings.json_path, settings.sources))
    if settings.output is not None:
        fps = {r.spec.id: r.stats.fps for r in run.readers}
        sinks.append(VideoSink(settings.output, settings.sources, fps, settings.vid_stride))
    if settings.show:
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise BadInput("--show needs a display (no DISPLAY set): use --output to write a video instead")
        sinks.append(ShowSink())
    return sinks


def run_detect(settings: DetectSettings, progress: Any = None) -> dict[str, Any]:
    """Check the server and model, start everything, stop cleanly on Ctrl-C/SIGTERM, return the summary."""
    import signal

    info = check_server(settings)
    run = Detection(settings, info, sinks=[])
    run.sinks = open_sinks(settings, run)
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        run.stop.set()  # stop reading; workers finish what is in flight; the writer finalizes the files

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        with _live_progress(run, progress):
            run.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = summarize(run)
    if interrupted:
        summary["interrupted_by"] = signal.Signals(interrupted[0]).name
    if settings.summary_json is not None:
        import json

        settings.summary_json.write_text(json.dumps(summary, indent=2))
    return summary


class _live_progress:
    """A Rich progress bar per source (files: out of their frame count; live: a running count), on a terminal only."""

    def __init__(self, run: Detection, console: Any) -> None:
        self.run, self.console = run, console
        self.progress: Any = None
        self._stop = threading.Event()

    def __enter__(self) -> _live_progress:
        if self.console is None or not self.console.is_terminal:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[fps]}"), TimeElapsedColumn(), console=self.console, transient=True)
        self.tasks = {r.spec.id: self.progress.add_task(r.spec.uri[-40:], total=r.stats.total, fps="")
                      for r in self.run.readers}
        self.progress.start()
        threading.Thread(target=self._update, daemon=True).start()
        return self

    def _update(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(0.25):
            for sid, task in self.tasks.items():
                done = self.run.stats.inferred.get(sid, 0)
                self.progress.update(task, completed=done, fps=f"{done / (time.perf_counter() - t0):.1f} fps")

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.progress is not None:
            self.progress.stop()
