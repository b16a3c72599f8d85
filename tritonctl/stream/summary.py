"""What a `detect` run did, as a typed summary: frames per source (every frame read ends in exactly one count),
latency per stage and per source, the server's side, what was written, and what ended the run. Written to
--summary-json (`to_json`) and rendered as tables."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tritonctl.core.errors import EventsUndelivered, ServerError, TritonctlError
from tritonctl.vision.metrics import LatencyHistogram

if TYPE_CHECKING:
    from tritonctl.stream.streaming import Detection, SourceRun

# read = inferred + skipped_stride + dropped + interrupted + failed, per source (see streaming.RunStats)
FRAME_COUNTS = ("read", "inferred", "skipped_stride", "dropped", "interrupted", "failed")
FRAME_COUNTS_NOTE = ("read = inferred + skipped (--vid-stride) + dropped (live `latest` queue: the newest frame is kept) "
                     "+ interrupted (stopped before inference) + failed (could not be decoded)")


def percentiles(hist: LatencyHistogram | None) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds; empty when nothing was measured."""
    if hist is None or not hist.count:
        return {}
    p50, p95, p99 = (hist.percentile(q) * 1000 for q in (50, 95, 99))
    return {"p50": p50, "p95": p95, "p99": p99, "mean": hist.mean * 1000}


@dataclass
class SourceSummary:
    id: int
    name: str
    uri: str
    kind: str
    policy: str
    read: int
    inferred: int
    skipped_stride: int
    dropped: int
    interrupted: int
    failed: int
    stalls: int
    reconnects: int
    error: str
    fps: float  # inferred frames per second from its first frame to its end (a live source's connecting not counted)
    first_frame_s: float | None  # seconds from the source joining the run to its first frame (None: never had one)
    state: str  # ended (its end), failed (gave up), stopped (Ctrl-C, or the run ended first), removed (a reload)
    latency_ms: dict[str, float]  # end to end, frame decoded -> result written: p50, p95, p99, mean
    tracks: int | None = None  # --track: distinct tracks seen
    geometry: dict[str, Any] | None = None  # zones (current, max per class) and lines (in, out per class) so far
    cause: str = ""  # `error` in a few words, for the table ("RTSP 404 Not Found"); the CLI prints the error whole

    def count(self, name: str) -> int:
        return int(getattr(self, name))


@dataclass
class Written:
    path: str
    frames: int


@dataclass
class RunSummary:
    model: str
    endpoints: list[str]
    protocol: str
    shared_memory: bool
    concurrency: int
    batch: int
    batch_timeout_ms: float
    wall_s: float  # start to the last frame through; closing the outputs after it is closing_s
    fps: float
    frames: dict[str, int]  # FRAME_COUNTS over all sources
    sources: list[SourceSummary]
    latency_ms: dict[str, dict[str, float]]  # per stage
    server: dict[str, float]
    requests: int
    retries: int
    all_down_s: float
    bytes_sent: int
    bytes_sent_per_frame: float
    per_endpoint: dict[str, int]
    problems: list[str]
    written: list[Written]
    ended_by: str = "end of sources"
    interrupted_by: str | None = None
    closing_s: float = 0.0  # closing the outputs after the last frame: mostly the brokers' final flush (not in fps)
    extra: dict[str, Any] = field(default_factory=dict)  # figures a caller adds (kept in the JSON)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        if self.interrupted_by is None:
            out.pop("interrupted_by")
        return out


def _unreadable(src: SourceRun) -> str | None:
    """One problem line per source naming the images that could not be decoded (the first few; the rest counted)."""
    rs = src.reader.stats
    if not rs.unreadable:
        return None
    listed = ", ".join(str(p) for p in rs.unreadable)
    more = f" and {rs.failed - len(rs.unreadable)} more" if rs.failed > len(rs.unreadable) else ""
    what = "image" if rs.failed == 1 else f"{rs.failed} images"
    return f"source {src.spec.id} ({src.spec.uri}): cannot read {what} {listed}{more} (counted failed)"


def ended_by(run: Detection, signal_name: str | None) -> str:
    """Why the run stopped, for the summary: every ending writes one."""
    if run.error is not None:
        what = "server lost" if isinstance(run.error, ServerError) else "error"
        ours = isinstance(run.error, TritonctlError)  # our messages stand alone; anything else is named by its type
        return f"{what}: {run.error if ours else f'{type(run.error).__name__}: {run.error}'}"
    return f"interrupted: {signal_name}" if signal_name else "end of sources"


def source_summary(run: Detection, src: SourceRun, now: float) -> SourceSummary:
    st, rs, sid = run.stats, src.reader.stats, src.spec.id
    inferred = st.inferred.get(sid, 0)
    until = src.removed_at or st.finished or now
    tracks, geometry = stage_figures(run, sid)
    return SourceSummary(
        id=sid, name=src.options.name, uri=src.spec.uri, kind=src.spec.kind, policy=src.queue.policy, read=rs.read,
        inferred=inferred, skipped_stride=rs.skipped_stride, dropped=src.queue.dropped,
        interrupted=st.interrupted.get(sid, 0) + rs.interrupted, failed=rs.failed,
        stalls=rs.stalls, reconnects=rs.reconnects, error=rs.error,
        fps=inferred / max(until - (rs.first_frame_at or src.added_at), 1e-9), state=src.state,
        first_frame_s=rs.first_frame_at - src.added_at if rs.first_frame_at else None,
        latency_ms=percentiles(st.source_latency.get(sid)),
        tracks=tracks, geometry=geometry, cause=rs.cause)


def stage_figures(run: Detection, source: int) -> tuple[int | None, dict[str, Any] | None]:
    """A source's distinct tracks (None without a tracking stage) and zone and line totals (None without any)."""
    from tritonctl.stream.stages import GeometryFigures, TrackFigures

    tracks: int | None = None
    geometry: dict[str, Any] | None = None
    for figures in run.figures():
        if isinstance(figures, TrackFigures):
            tracks = figures.tracks.get(source, 0)
        elif isinstance(figures, GeometryFigures):
            geometry = figures.totals.get(source)
    return tracks, geometry


ERROR_CELL = 24  # characters of a source's error in the table: more would squeeze the other columns, or wrap


def error_cell(row: SourceSummary) -> str:
    """The table's error cell: short, on the row's one line. The whole error is printed once, after the tables."""
    text = row.cause or row.error
    return text if len(text) <= ERROR_CELL else text[:ERROR_CELL - 1] + "…"


def progress_text(run: Detection, src: SourceRun, elapsed_s: float) -> str:
    """The last column of a source's progress row: a live source's trouble while it has some ("cannot open (RTSP 404
    Not Found), retrying 2/5"), its frame rate otherwise. Rich markup: escaped."""
    from rich.markup import escape

    note = src.reader.note()
    return escape(note) if note else f"{run.stats.inferred.get(src.spec.id, 0) / elapsed_s:.1f} fps"


def summarize(run: Detection, signal_name: str | None = None) -> RunSummary:
    st = run.stats
    wall = max(st.finished - st.started, 1e-9)
    sources = [source_summary(run, src, st.finished) for src in run.sources.values()]
    unreadable = [line for src in run.sources.values() if (line := _unreadable(src))]
    inferred = sum(st.inferred.values())
    return RunSummary(
        model=run.info.name, endpoints=run.settings.urls, protocol=run.settings.protocol,
        shared_memory=run.settings.shm != "none" and any(e.local for e in run.pool.endpoints),
        concurrency=run.concurrency, batch=run.batch, batch_timeout_ms=run.settings.batch_timeout_s * 1000,
        wall_s=wall, fps=inferred / wall, frames={k: sum(s.count(k) for s in sources) for k in FRAME_COUNTS},
        sources=sources, latency_ms={k: percentiles(v) for k, v in st.stages.items()}, server=run.server_delta,
        requests=st.requests, retries=st.retries, all_down_s=run.down_s, bytes_sent=st.bytes_sent,
        bytes_sent_per_frame=st.bytes_sent / inferred if inferred else 0.0, per_endpoint=st.per_endpoint,
        problems=unreadable + st.problems + ([f"{st.problems_dropped} more problem reports"] if st.problems_dropped else []),
        written=[Written(str(path), n) for path, n in run.written], ended_by=ended_by(run, signal_name),
        interrupted_by=signal_name, closing_s=max(0.0, st.closed - st.finished) if st.closed else 0.0)


def undelivered(summary: RunSummary) -> EventsUndelivered | None:
    """The run's results did not all reach a broker (--sink): one that delivered nothing, or dropped or lost messages,
    named with its reason. The CLI exits with it (7) after the summary."""
    what = []
    for b in summary.extra.get("sinks") or []:
        missing = b["dropped"] + b["lost"]
        if not missing and (b["sent"] or not b["produced"]):
            continue
        counts = f"{b['dropped']} dropped, {b['lost']} lost of {b['produced']}"
        done = "delivered nothing" if not b["sent"] else "did not deliver everything"
        why = f"; {b.get('reason') or b['last_error']}" if b["last_error"] else ""
        what.append(f"sink {b['sink']} {done} ({counts}{why})")
    return EventsUndelivered("; ".join(what)) if what else None


def render_summary(summary: RunSummary) -> None:
    from rich.markup import escape
    from rich.table import Column, Table

    from tritonctl.core.ui import console

    con = console()
    s = summary
    # the error on the row's one line, cut if it must be (the CLI prints it whole after the tables)
    error = Column("error", no_wrap=True, overflow="ellipsis")
    src = Table("source", "policy", *(k.removesuffix("_stride") for k in FRAME_COUNTS), "fps", "e2e p99 ms", "stalls",
                error, title=f"{s.model}: {s.frames['inferred']} frames in {s.wall_s:.1f} s = {s.fps:.1f} fps "
                f"(concurrency {s.concurrency}, batch {s.batch}, {s.protocol}{', shared memory' if s.shared_memory else ''})",
                caption=FRAME_COUNTS_NOTE)
    for row in s.sources:
        name = f"{row.id}: {row.uri}" if row.name == f"cam{row.id}" or not row.name else f"{row.id} {row.name}: {row.uri}"
        src.add_row(name + (" (removed)" if row.state == "removed" else ""), row.policy,
                    *(str(row.count(k)) for k in FRAME_COUNTS), f"{row.fps:.1f}",
                    f"{row.latency_ms['p99']:.0f}" if row.latency_ms else "", str(row.stalls), error_cell(row))
    con.print(src)
    lat = Table("stage (ms)", "p50", "p95", "p99", "mean")
    for stage, p in s.latency_ms.items():
        if p:
            lat.add_row(stage, *(f"{p[k]:.2f}" for k in ("p50", "p95", "p99", "mean")))
    if s.server.get("inferences"):
        lat.add_row("server queue (avg)", "", "", "", f"{s.server['queue_ms']:.2f}")
        lat.add_row("server compute (avg)", "", "", "", f"{s.server['compute_ms']:.2f}")
    con.print(lat)
    sinks = s.extra.get("sinks") or []
    if sinks:
        table = Table("broker sink", "sent", "dropped", "lost", "reconnects", "publish p99 ms", "final flush s")
        for b in sinks:
            table.add_row(str(b["sink"]), str(b["sent"]), str(b["dropped"]), str(b["lost"]), str(b["reconnects"]),
                          f"{b['publish_p99_ms']:.1f}", f"{b.get('flush_s', 0.0):.1f}")
        con.print(table)
    warnings = [f"retries {s.retries}, endpoints down up to {s.all_down_s:.1f} s"] if s.retries else []
    warnings += [f"{b['sink']}: {b['dropped']} dropped, {b['lost']} lost" for b in sinks if b["dropped"] or b["lost"]]
    warnings += s.problems
    if s.ended_by != "end of sources":
        warnings.append(f"ended by {s.ended_by}")
    if warnings:
        con.print(f"[yellow]{escape('; '.join(warnings))}[/]", soft_wrap=True)
