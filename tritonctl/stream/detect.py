"""`tritonctl detect`: the check made before anything runs (the server and model; the settings and the outputs
are checked in settings.py and output_checks.py), and one run end to end: sinks, signals, the live view, reloads
of the pipeline file, and the summary. The run itself (threads, queues) is streaming.py; the summary, summary.py.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import BadInput, ServerError
from tritonctl.core.files import write_text
from tritonctl.inference.client import ModelInfo, fetch_model_info
from tritonctl.inference.discovery import first_endpoints
from tritonctl.sources.video import SourceSpec, parse_sources
from tritonctl.stream.output_checks import check_writable as _check_writable
from tritonctl.stream.settings import POST_FLAGS, DetectSettings, SourceOptions, _options
from tritonctl.stream.settings import auto_batch as auto_batch
from tritonctl.stream.settings import settings_from_flags as settings_from_flags
from tritonctl.stream.streaming import Detection, SourceRun
from tritonctl.stream.summary import RunSummary, summarize
from tritonctl.vision.frames import Sink

if TYPE_CHECKING:
    from tritonctl.stream.pipeline import SourceConfig


def check_server(settings: DetectSettings) -> ModelInfo:
    """The model's signature from the first endpoint that answers (--url's, then the name's addresses)."""
    errors = []
    endpoints = list(settings.endpoints)
    if settings.discover is not None:
        endpoints += [e for e in first_endpoints(settings.discover) if e not in endpoints]
    for endpoint in endpoints:
        try:
            return fetch_model_info(settings.protocol, endpoint, settings.model)
        except ServerError as exc:
            if wrong := wrong_protocol_port(settings.protocol, endpoint, settings.model, exc):
                raise wrong from exc
            errors.append(str(exc))
    raise ServerError(errors[0] if len(errors) == 1 else f"no endpoint answers: {'; '.join(errors)}")


_PROTOCOLS = {"http": ("HTTP", 8000), "grpc": ("gRPC", 8001)}
_NOBODY_THERE = ("refused", "timed out", "timeout", "deadline")  # nothing listens, or nothing answers at all


def wrong_protocol_port(protocol: str, endpoint: Endpoint, model: str, exc: ServerError) -> BadInput | None:
    """The error to give when `endpoint` is Triton's port of the other protocol (--protocol grpc with the HTTP port, or
    http with the gRPC port), which otherwise reads as "no server". Asked only when something at that port closed
    the connection: a refused or silent one cannot be the other protocol either, and a down server costs no second wait."""
    if any(marker in str(exc).lower() for marker in _NOBODY_THERE):
        return None
    from tritonctl.core.errors import ModelError
    from tritonctl.inference.client import served_model

    other = "http" if protocol == "grpc" else "grpc"
    try:
        served_model(other, endpoint, model)
    except ModelError:
        pass  # a Triton answered, only without this model: still the other protocol's port
    except Exception:  # a probe: whatever else fails, no Triton speaks the other protocol there
        return None
    (name, _), (wanted, port) = _PROTOCOLS[other], _PROTOCOLS[protocol]
    return BadInput(f"{endpoint.url} is Triton's {name} port; --protocol {protocol} needs the {wanted} port "
                    f"(default {port}), or use --protocol {other} with this one")




# ---------------------------------------------------------------- one run, end to end


def open_sinks(settings: DetectSettings, run: Detection, extra: list[Sink] | None = None) -> list[Sink]:
    """The run-wide sinks: --json, --output, --show (and the live view's, made by the caller)."""
    from tritonctl.outputs.sinks import ImageSink, JsonlSink, ShowSink, VideoSink

    if settings.show and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise BadInput("--show needs a display (no DISPLAY set): use --output to write a video instead")
    sinks: list[Sink] = list(extra or [])
    if settings.json_path is not None:
        sinks.append(JsonlSink(settings.json_path, lambda sid: run.sources[sid].spec.uri))
    targets = settings.output_targets()
    kinds = {src.id: src.kind for src in settings.sources}
    images = {sid: p for sid, p in targets.items() if kinds[sid] == "images"}
    if images:
        sinks.append(ImageSink(images, settings.sources))
    if len(images) < len(targets):
        sinks.append(VideoSink({sid: p for sid, p in targets.items() if sid not in images}, _fps_of(run)))
    if settings.show:
        sinks.append(ShowSink())
    sinks += broker_sinks(settings, run)
    return sinks


def broker_sinks(settings: DetectSettings, run: Detection) -> list[Sink]:
    """One publishing sink per --sink; `run.brokers` keeps them for the summary's figures. Each says on stderr, in one
    line, when it cannot reach its broker (as the run starts, not only in the summary) and when it can again."""
    from rich.markup import escape

    from tritonctl.core.ui import console
    from tritonctl.outputs.events import BrokerSink, parse_sink_url

    err = console(stderr=True)

    def say(line: str) -> None:
        err.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)

    def name(sid: int) -> str:
        src = run.sources.get(sid)
        return (src.options.name or f"cam{sid}") if src is not None else f"cam{sid}"

    def uri(sid: int) -> str:
        src = run.sources.get(sid)
        return src.spec.uri if src is not None else ""

    for url in settings.sinks:
        run.brokers.append(BrokerSink(parse_sink_url(url), source_name=name, source_uri=uri,
                                      capacity=settings.sink_outbox, policy=settings.sink_policy, on_problem=say))
    return list(run.brokers)


def _fps_of(run: Detection) -> Any:
    """A source's output frame rate, asked when its video file is created (a live source knows it once it opened)."""
    def fps(sid: int) -> float:
        src = run.sources[sid]
        return (src.reader.stats.fps or 30.0) / src.options.vid_stride
    return fps


def source_sinks(run: Detection, src: SourceRun) -> list[Sink]:
    """The files the pipeline file names for one source (outputs.video, outputs.json)."""
    from tritonctl.outputs.sinks import JsonlSink, VideoSink

    sinks: list[Sink] = []
    sid = src.spec.id
    if src.options.json_output is not None:
        sinks.append(JsonlSink(run.claim_output(src.options.json_output), lambda sid: src.spec.uri))
    if src.options.video_output is not None:
        sinks.append(VideoSink({sid: run.claim_output(src.options.video_output)}, _fps_of(run)))
    return sinks


@dataclass
class DetectOutcome:
    summary: RunSummary  # written to --summary-json whatever ended the run; `ended_by` says what did
    error: BaseException | None  # what ended the run early (the server lost, a sink that cannot write), or None


def run_detect(settings: DetectSettings, progress: Any = None) -> RunSummary:
    """execute(), raising what ended the run early once its summary is written."""
    outcome = execute(settings, progress)
    if outcome.error is not None:
        raise outcome.error
    return outcome.summary


def ending_error(outcome: DetectOutcome) -> BaseException | None:
    """What `detect` ends with once its summary is shown: what ended the run early (the server lost), a source that
    failed, events a broker never got (exit 7, even after Ctrl-C), or the Ctrl-C itself; None: a clean end."""
    from tritonctl.core.errors import TritonctlError
    from tritonctl.stream.summary import undelivered

    summary = outcome.summary
    if outcome.error is not None:
        return outcome.error
    if failed := [s for s in summary.sources if s.error]:
        return TritonctlError("; ".join(f"source {s.id} ({s.uri}): {s.error}" for s in failed))
    if (lost := undelivered(summary)) is not None:
        return lost
    return KeyboardInterrupt() if summary.interrupted_by else None


def execute(settings: DetectSettings, progress: Any = None) -> DetectOutcome:
    """Check the server and model, start everything, stop cleanly on Ctrl-C/SIGTERM or a lost server, and return the
    summary (also written to --summary-json) with what ended the run. A failure before streaming starts is raised.
    Signals are caught from the start, so a Ctrl-C while cameras are still connecting also ends with a summary."""
    import signal

    info = check_server(settings)
    run = Detection(settings, info)
    run.source_sinks = source_sinks
    interrupted: list[int] = []
    reloader = Reloader(settings, run) if settings.pipeline is not None else None
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        for sig, handler in previous.items():  # a second Ctrl-C is not asked twice: it ends the process at once
            signal.signal(sig, handler)
        # Not run.request_stop() here: the handler runs between two bytecodes of the main thread, which may hold the
        # very lock stop.set() takes. A thread does it.
        threading.Thread(target=run.request_stop, name="stop", daemon=True).start()

    handlers: dict[int, Any] = {signal.SIGINT: on_signal, signal.SIGTERM: on_signal}
    if reloader is not None:
        handlers[signal.SIGHUP] = lambda _s, _f: reloader.request()
    if threading.current_thread() is threading.main_thread():
        previous.update({sig: signal.signal(sig, h) for sig, h in handlers.items()})
    view = None
    try:
        view = start_view(settings, run) if settings.view is not None else None
        if reloader is not None:
            reloader.start()  # it waits for the run to have started before it changes anything
        with _live_progress(run, progress):
            run.run(lambda r: open_sinks(settings, r, [view.sink] if view is not None else None))
    except BaseException as exc:
        if exc is not run.error:
            raise  # before streaming started (workers, sinks): nothing ran, nothing to summarize
    finally:
        if reloader is not None:
            reloader.close()
        if view is not None:
            view.server.stop()
        if not interrupted:  # (a signal already put them back)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    summary = summarize(run, signal.Signals(interrupted[0]).name if interrupted else None)
    if run.brokers:
        summary.extra["sinks"] = [b.stats() for b in run.brokers]
    if run.discovery is not None:
        summary.extra["discovery"] = run.discovery.report()
    if reloader is not None:
        summary.extra["reloads"] = reloader.reloads
    if settings.summary_json is not None:
        write_summary_json(summary, settings.summary_json)
    return DetectOutcome(summary, run.error)


def write_summary_json(summary: RunSummary, path: Path) -> None:
    import json

    write_text(path, json.dumps(summary.to_json(), indent=2) + "\n")


def _live_progress(run: Detection, console: Any) -> Any:
    """A bar per source (files: out of their frame count; live: a running count), sources a reload adds included."""
    from tritonctl.core.ui import LiveBars
    from tritonctl.stream.summary import progress_text

    tasks: dict[int, Any] = {}

    def refresh(bars: Any, elapsed: float) -> None:
        for sid, src in list(run.sources.items()):
            if sid not in tasks:
                tasks[sid] = bars.add_task(src.spec.uri[-40:], total=src.reader.stats.total, rate="")
            done = run.stats.inferred.get(sid, 0)
            bars.update(tasks[sid], completed=done, rate=progress_text(run, src, elapsed))

    return LiveBars(console, refresh)


# ---------------------------------------------------------------- the live view


@dataclass
class LiveView:
    server: Any  # view.ViewServer
    sink: Sink


def start_view(settings: DetectSettings, run: Detection) -> LiveView:
    from tritonctl.outputs.view import ViewServer, ViewSink

    assert settings.view is not None
    host, port = settings.view
    server = ViewServer(host, port, LiveFigures(run))
    server.start()
    from tritonctl.core.ui import console

    console().print(f"live view: {server.url}", highlight=False, markup=False)
    return LiveView(server, ViewSink(server.board))


class LiveFigures:
    """Per source, the figures the live view polls, over the last window (at least 1 s between polls): frames per
    second and end-to-end latency p50/p99 now, not averaged since the start; drops, stalls, reconnects so far.
    Called from the view's thread."""

    def __init__(self, run: Detection, clock: Any = time.perf_counter, window_s: float = 1.0) -> None:
        self.run, self.clock, self.window_s = run, clock, window_s
        self._last: dict[int, tuple[float, int]] = {}
        self._now: dict[int, dict[str, float]] = {}

    def __call__(self) -> list[dict[str, Any]]:
        from tritonctl.stream.summary import percentiles, source_summary

        now = self.clock()
        out = []
        for src in list(self.run.sources.values()):
            if src.state == "removed":
                continue
            s = source_summary(self.run, src, now)
            t0, n0 = self._last.setdefault(s.id, (src.added_at, 0))
            if now - t0 >= self.window_s:
                p = percentiles(self.run.stats.take_recent(s.id))
                self._now[s.id] = {"fps": (s.inferred - n0) / (now - t0), "p50": p.get("p50", 0.0), "p99": p.get("p99", 0.0)}
                self._last[s.id] = (now, s.inferred)
            figures = self._now.get(s.id, {})
            out.append({"source": s.id, "name": s.name, "uri": s.uri, "state": src.reader.state,
                        "fps": round(figures.get("fps", 0.0), 1), "inferred": s.inferred,
                        "latency_p50_ms": round(figures.get("p50", 0.0), 1),
                        "latency_p99_ms": round(figures.get("p99", 0.0), 1),
                        "dropped": s.dropped, "stalls": s.stalls, "reconnects": s.reconnects,
                        "counts": _counts_text(s.geometry)})
        return out


def _counts_text(geometry: dict[str, Any] | None) -> str:
    """Zones and lines in one line for the live view: `door 2 · entrance in 5 out 3`."""
    if not geometry:
        return ""
    parts = [f"{name} {sum(z['current'].values())}" for name, z in geometry["zones"].items()]
    parts += [f"{name} in {sum(ln['in'].values())} out {sum(ln['out'].values())}" for name, ln in geometry["lines"].items()]
    return " · ".join(parts)


# ---------------------------------------------------------------- reloading the pipeline file


class Reloader:
    """Reloads the pipeline file on SIGHUP or when it changes (checked every `poll_s`): sources added or removed
    (a changed source is removed and added again) while the others go on. A file that no longer loads is reported
    and the run keeps its current sources; run-wide changes (model, endpoints, batch) need a restart and are said so."""

    def __init__(self, settings: DetectSettings, run: Detection, poll_s: float = 1.0) -> None:
        assert settings.pipeline is not None
        self.settings, self.run, self.poll_s = settings, run, poll_s
        self.pipeline = settings.pipeline
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._mtime = self._stat()
        self.reloads = 0
        self._thread = threading.Thread(target=self._loop, name="reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._wake.set()  # from a signal handler: only set a flag, the thread does the work

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _stat(self) -> float:
        try:
            return self.pipeline.path.stat().st_mtime_ns
        except OSError:
            return 0.0

    def _loop(self) -> None:
        while not self.run.started.wait(0.1):
            if self._closed.is_set():
                return
        while not self._closed.is_set():
            self._wake.wait(self.poll_s)
            asked = self._wake.is_set()
            self._wake.clear()  # a SIGHUP after this is the next round's; one before it is this reload
            if self._closed.is_set() or self.run.stop.is_set():
                return
            mtime = self._stat()
            if asked or mtime != self._mtime:
                self._mtime = mtime
                self.reload()

    def reload(self) -> None:
        from tritonctl.core.errors import TritonctlError
        from tritonctl.core.ui import console
        from tritonctl.stream.pipeline import changes, load_pipeline

        con = console()
        try:
            new = load_pipeline(self.pipeline.path)
            diff = changes(self.pipeline, new)
            if diff.needs_restart:
                con.print(f"reload: {', '.join(diff.needs_restart)} changed: restart detect to apply", style="yellow",
                          highlight=False)
            added = self._check(diff.added + diff.changed)  # before anything changes: all or nothing
            self._apply(diff.removed + diff.changed, added)
        except Exception as exc:  # the run goes on with what it has; the summary lists the failed reload
            what = str(exc) if isinstance(exc, TritonctlError) else f"{type(exc).__name__}: {exc}"
            self.run.stats.problem(f"reload of {self.pipeline.path}: {what}")
            con.print(f"reload: {what}; keeping the current sources", style="yellow", highlight=False, markup=False)
            return
        self.pipeline = new
        self.reloads += 1
        con.print(f"reloaded {new.path}: {len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} "
                  "changed", highlight=False, markup=False)

    def _check(self, configs: list[SourceConfig]) -> list[tuple[SourceSpec, SourceOptions]]:
        """Each new source as the run will take it: its uri recognised, its output folders writable; raises on the
        first that is not, before any source is touched."""
        given = self.settings.overrides
        post_flags = {k: given[k] for k in POST_FLAGS if k in given}
        next_id = max(self.run.sources, default=-1) + 1
        out = []
        for k, cfg in enumerate(configs):
            spec = replace(parse_sources([cfg.uri])[0], id=next_id + k)
            options = _options(cfg, post_flags, given)
            for flag, path in (("outputs.video", options.video_output), ("outputs.json", options.json_output)):
                if path is not None:
                    _check_writable(flag, path)
            out.append((spec, options))
        return out

    def _apply(self, remove: list[SourceConfig], add: list[tuple[SourceSpec, SourceOptions]]) -> None:
        by_name = {src.options.name: sid for sid, src in self.run.sources.items() if src.state == "running"}
        self.run.dispatcher.keep_open = True  # between a removal and the additions, no source left is no end
        try:
            for cfg in remove:
                if cfg.name in by_name:
                    self.run.remove_source(by_name[cfg.name])
            for spec, options in add:
                self.run.add_source(spec, options)
        finally:
            self.run.dispatcher.keep_open = False
            self.run.dispatcher.wake()
