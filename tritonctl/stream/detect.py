"""`tritonctl detect`: its settings (from flags, or a pipeline file that flags override), the checks made before
anything runs (the server and model, every output), and one run end to end: sinks, signals, the live view, reloads
of the pipeline file, and the summary. The run itself (threads, queues) is streaming.py; the summary, summary.py.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonctl.core.endpoint import Endpoint, parse_endpoints
from tritonctl.core.errors import BadInput, ServerError
from tritonctl.core.files import check_file_target, is_stdout, is_stream, partial_path, write_text
from tritonctl.inference.client import ModelInfo, fetch_model_info
from tritonctl.inference.discovery import DiscoverTarget, first_endpoints, parse_discover
from tritonctl.outputs.sinks import Sink, image_names, output_targets
from tritonctl.sources.video import SourceSpec, parse_sources
from tritonctl.stream.streaming import LIVE_CONCURRENCY, Detection, SourceRun
from tritonctl.stream.summary import RunSummary, summarize
from tritonctl.vision.postprocess import PostSettings

if TYPE_CHECKING:
    from tritonctl.stream.pipeline import Pipeline, SourceConfig
    from tritonctl.stream.zones import Line, Zone

POLICIES = ("auto", "latest", "block")
MAX_AUTO_BATCH = 8  # cameras batched together by default (capped by the model's max batch)


@dataclass(frozen=True)
class SourceOptions:
    """Per-source settings: the run's flags, or a source's entry in the pipeline file."""

    name: str = ""
    post: PostSettings = field(default_factory=PostSettings)
    vid_stride: int = 1
    policy: str = "auto"  # auto: latest for live sources, block for files (--realtime/--offline decide when given)
    video_output: Path | None = None
    json_output: Path | None = None
    zones: tuple[Zone, ...] = ()  # counted per class (pipeline file)
    lines: tuple[Line, ...] = ()  # crossings in/out per class, with --track (pipeline file)


@dataclass(frozen=True)
class DetectSettings:
    sources: list[SourceSpec]
    endpoints: list[Endpoint]
    model: str
    protocol: str = "http"
    shm: str = "auto"
    concurrency: int | None = None
    batch: int = 1
    batch_auto: bool = False  # no --batch given: up to one frame per live camera (capped by the model)
    batch_timeout_s: float = 0.010
    realtime: bool | None = None
    vid_stride: int = 1
    post: PostSettings = field(default_factory=PostSettings)
    source_options: tuple[SourceOptions, ...] = ()
    output: Path | None = None
    json_path: Path | None = None
    summary_json: Path | None = None
    show: bool = False
    view: tuple[str, int] | None = None
    server_timeout_s: float = 30.0
    queue_size: int = 8
    stall_timeout_s: float = 5.0
    reconnects: int = 5
    track: str | None = None  # --track: a tracker per source (tracking.TRACKERS)
    sinks: tuple[str, ...] = ()  # --sink: brokers the results are published to (mqtt://, redis://, nats://)
    sink_outbox: int = 10_000  # messages waiting per broker sink before the policy applies
    sink_policy: str = "drop-oldest"
    pipeline: Pipeline | None = None  # the pipeline file this run came from (reloaded on SIGHUP or a change)
    overrides: dict[str, Any] = field(default_factory=dict)  # the flags given over the file (a reload applies them too)
    discover: DiscoverTarget | None = None  # --discover: the addresses of a name join --url's, kept up to date

    @classmethod
    def create(cls, *, sources: list[str], urls: list[str], batch: int | None = None,
               view: str | tuple[str, int] | None = None, discover: str | DiscoverTarget | None = None,
               discover_dns: str | None = None, discover_interval_s: float | None = None, **kw: Any) -> DetectSettings:
        if isinstance(discover, str):
            discover = parse_discover(discover, kw.get("protocol", "http"), discover_dns, discover_interval_s)
        elif discover is None and (discover_dns or discover_interval_s is not None):
            raise BadInput("--discover-dns and --discover-interval go with --discover NAME:PORT")
        # With --discover, no --url means no fixed endpoint (not this host's default): the name's addresses only.
        endpoints = parse_endpoints(urls, kw.get("protocol", "http")) if urls or discover is None else []
        kw["discover"] = discover
        specs = parse_sources(sources)
        if isinstance(view, str):
            from tritonctl.outputs.view import parse_view_address

            view = parse_view_address(view)
        auto = batch is None
        batch = auto_batch(sum(s.live for s in specs), kw.get("concurrency")) if batch is None else batch
        s = cls(sources=specs, endpoints=endpoints, batch=batch, batch_auto=auto, view=view, **kw)
        if len(s.source_options) != len(specs):
            s = replace(s, source_options=tuple(SourceOptions(post=s.post, vid_stride=s.vid_stride) for _ in specs))
        _validate(s)
        check_outputs(s)
        return s

    def options_of(self, spec: SourceSpec) -> SourceOptions:
        return self.source_options[self.sources.index(spec)]

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def output_targets(self) -> dict[int, Path]:
        """Per source, the video file or the image folder `--output` writes (see sinks.output_targets)."""
        return output_targets(self.output, self.sources) if self.output is not None else {}

    def output_files(self) -> list[tuple[str, Path]]:
        """(flag, path) of every file the run writes; an image source's folder stands for the images in it."""
        files = [("--output", p) for p in self.output_targets().values()]
        files += [(flag, p) for flag, p in (("--json", self.json_path), ("--summary-json", self.summary_json)) if p]
        return files + self.source_outputs()

    def writes_stdout(self) -> bool:
        """Some output is `-`: standard output carries that data alone."""
        return any(is_stdout(p) for _, p in self.output_files())

    def source_outputs(self) -> list[tuple[str, Path]]:
        """(setting, path) of the files the pipeline file names per source."""
        return [(flag, p) for o in self.source_options
                for flag, p in (("outputs.video", o.video_output), ("outputs.json", o.json_output)) if p is not None]


def auto_batch(live: int, concurrency: int | None) -> int:
    """Frames per request when --batch is not given: the live cameras shared out over the requests in flight, so
    that together they carry one frame of each (8 cameras, 2 in flight: batches of 4; on 2 cores, p99 52 ms against
    102 ms with batches of 8, as two server instances compute the halves at once). Files: 1."""
    if live < 2:
        return 1
    return min(MAX_AUTO_BATCH, -(-live // (concurrency or LIVE_CONCURRENCY)))


def _validate(s: DetectSettings) -> None:
    if s.shm not in ("auto", "system", "none"):
        raise BadInput(f"--shm {s.shm!r}: choose auto, system or none")
    if s.concurrency is not None and s.concurrency < 1:
        raise BadInput("--concurrency must be at least 1")
    if s.stall_timeout_s <= 0 or s.reconnects < 0:
        raise BadInput("--stall-timeout must be positive and --reconnects at least 0")
    if s.batch < 1 or s.vid_stride < 1 or s.queue_size < 1 or any(o.vid_stride < 1 for o in s.source_options):
        raise BadInput("--batch, --vid-stride and the queue size must be at least 1")
    if s.batch_timeout_s < 0:
        raise BadInput("--batch-timeout-ms must be 0 or more (0: send what is there at once)")
    if any(o.policy not in POLICIES for o in s.source_options):
        raise BadInput(f"a source's policy must be one of {', '.join(POLICIES)}")
    if s.sinks:
        from tritonctl.outputs import events

        for url in s.sinks:
            events.parse_sink_url(url)  # refused here, before anything starts
        if s.sink_policy not in events.POLICIES or s.sink_outbox < 1:
            raise BadInput(f"--sink-policy {s.sink_policy}: choose {', '.join(events.POLICIES)}; --sink-outbox at least 1")
    if s.track is not None:
        from tritonctl.stream.tracking import make_tracker

        make_tracker(s.track, 30.0)  # an unknown name, or the library missing, is said now, before any file opens
    if s.shm == "system" and not all(e.local for e in s.endpoints):
        raise BadInput("--shm system needs the server on this host (127.0.0.1/localhost): use --shm none for remote ones")


POST_FLAGS = ("conf", "iou", "classes", "max_det", "agnostic")


def settings_from_flags(config: Path | None, sources: list[str], flags: dict[str, Any]) -> DetectSettings:
    """The CLI's flags (None: not given) and, with --config, the pipeline file they override."""
    if config is not None:
        from tritonctl.stream.pipeline import load_pipeline

        return settings_from_pipeline(load_pipeline(config), sources, flags)
    given = {k: v for k, v in flags.items() if v is not None}
    if not sources:
        raise BadInput("no source given: pass video files, image folders, globs, RTSP/HTTP URLs or webcam indexes, "
                       "or a pipeline file with --config configs/cameras.yaml")
    if "model" not in given:
        raise BadInput("no model given: --model NAME (the model's name on the server), or a pipeline file with --config")
    post = PostSettings(**{k: given.pop(k) for k in POST_FLAGS if k in given})
    return DetectSettings.create(sources=sources, urls=given.pop("urls", []), post=post, **given)


def settings_from_pipeline(pipeline: Pipeline, sources: list[str], flags: dict[str, Any]) -> DetectSettings:
    """The pipeline file's settings, with every flag the user gave (not None) overriding the file's value; sources
    named on the command line join the file's."""
    given = {k: v for k, v in flags.items() if v is not None}
    run = pipeline.run
    post_flags: dict[str, Any] = {k: given[k] for k in POST_FLAGS if k in given}
    per_source = [_options(src, post_flags, given) for src in pipeline.sources]
    per_source += [SourceOptions(post=PostSettings(**post_flags), vid_stride=given.get("vid_stride", 1))] * len(sources)
    protocol = given.get("protocol", pipeline.protocol)
    kw: dict[str, Any] = {
        "model": given.get("model", pipeline.model), "protocol": protocol,
        "shm": given.get("shm", run.shm), "concurrency": given.get("concurrency", run.concurrency),
        "batch": given.get("batch", run.batch), "batch_timeout_s": given.get("batch_timeout_s", run.batch_timeout_ms / 1000),
        "json_path": given.get("json_path", run.json), "summary_json": given.get("summary_json", run.summary_json),
        "view": given.get("view", run.view), "stall_timeout_s": given.get("stall_timeout_s", run.stall_timeout),
        "reconnects": given.get("reconnects", run.reconnects), "source_options": tuple(per_source),
        "post": PostSettings(**post_flags), "pipeline": pipeline, "overrides": given,
    }
    kw.update({k: given[k] for k in ("realtime", "output", "show", "server_timeout_s", "track", "sink_outbox",
                                     "sink_policy", "discover", "discover_dns", "discover_interval_s") if k in given})
    kw["sinks"] = tuple(given.get("sinks") or run.sinks)
    urls = given.get("urls") or list(pipeline.urls)
    settings = DetectSettings.create(sources=[src.uri for src in pipeline.sources] + list(sources), urls=urls, **kw)
    # The file's batch is a wish: the model's max batch caps it, as it caps the default. A --batch is taken as said.
    return settings if "batch" in given or run.batch is None else replace(settings, batch_auto=True)


def _options(src: SourceConfig, post_flags: dict[str, Any], given: dict[str, Any]) -> SourceOptions:
    """A source's options from its entry in the file; flags the user gave override every source's."""
    post = PostSettings(**{"conf": src.conf, "iou": src.iou, "classes": src.classes, **post_flags})
    policy = src.policy
    if "realtime" in given:
        policy = "latest" if given["realtime"] else "block"
    return SourceOptions(src.name, post, given.get("vid_stride", src.vid_stride), policy, src.video_output,
                         src.json_output, src.zones, src.lines)


_EXAMPLE_NAMES = {"--output": "out.mp4", "--json": "detections.jsonl", "--summary-json": "summary.json",
                  "outputs.video": "out.mp4", "outputs.json": "detections.jsonl"}


def check_outputs(s: DetectSettings) -> None:
    """Refuse, before anything runs, an output that would replace a source or another output, that is a folder where
    a file goes (or a file where a folder goes), or that OpenCV could not write: a user's input is never overwritten."""
    inputs = {key: uri for src in s.sources for path, uri in _source_files(src) for key in _file_keys(path)}
    taken: dict[object, str] = {}
    for flag, path, folder in _planned_files(s):
        if folder is None:
            _check_writable(flag, path)
        keys = _file_keys(path) | _file_keys(partial_path(path))
        if clash := next((inputs[k] for k in keys if k in inputs), None):
            if folder is not None:
                raise BadInput(f"--output {folder} holds source images ({clash}): the annotated images would replace "
                               "your inputs; choose another folder")
            raise BadInput(f"{flag} {path} is a source ({clash}): writing it would replace your input; "
                           "choose another file name")
        if other := next((taken[k] for k in keys if k in taken), None):
            raise BadInput(f"{flag} {path} is also written by {other}: give each output its own file name")
        taken.update(dict.fromkeys(keys, f"{flag} {folder or path}"))
    _check_outside_inputs(s)


def _check_outside_inputs(s: DetectSettings) -> None:
    """Annotated images never go into an input folder (a source folder or a glob's folders, itself or below: the next
    run over it, or a `**` glob, would read them as inputs), nor straight into the folder of a single source image;
    a subfolder next to a single image (`photo.jpg --output annotated/`) is fine."""
    below: dict[Path, Path] = {}
    at: dict[Path, Path] = {}
    for src in s.sources:
        if src.kind != "images":
            continue
        uri = Path(src.uri)
        if uri.is_file():
            at[uri.resolve().parent] = uri.parent
        else:  # a folder, or a glob
            below.update({f.resolve(): f for f in [*([uri] if uri.is_dir() else []), *(p.parent for p in src.paths)]})
    specs = {src.id: src for src in s.sources}
    for sid, target in s.output_targets().items():
        if specs[sid].kind != "images":
            continue
        where = target.resolve()
        named = s.output.resolve() if s.output is not None else where  # several sources: <named>/<id>/ per source
        inside = next((shown for folder, shown in below.items() if where.is_relative_to(folder)), None)
        inside = inside if inside is not None else at.get(where, at.get(named))
        if inside is not None:
            raise BadInput(f"--output {s.output} is inside the input folder {inside or '.'}: the annotated images would "
                           "mix with your inputs; choose a folder outside it, e.g. a sibling")


def _planned_files(s: DetectSettings) -> list[tuple[str, Path, Path | None]]:
    """(flag, file, its image folder or None) of every file the run may write, image folders checked on the way."""
    files: list[tuple[str, Path, Path | None]] = []
    specs = {src.id: src for src in s.sources}
    for sid, target in s.output_targets().items():
        if specs[sid].kind != "images":
            files.append(("--output", target, None))
            continue
        _check_folder(s.output if s.output is not None and target.parent == s.output else target, target)
        files += [("--output", target / name, target) for name in image_names(specs[sid]).values()]
    files += [(flag, p, None) for flag, p in (("--json", s.json_path), ("--summary-json", s.summary_json)) if p]
    return files + [(flag, p, None) for flag, p in s.source_outputs()]


def _check_folder(top: Path, folder: Path) -> None:
    """An image folder (`folder`, inside or equal to `top`, the one --output names): never a file; `top`, or the
    folder it goes in, exists and is writable (we create at most `top` and `folder`)."""
    for path in dict.fromkeys((top, folder)):
        if path.exists() and not path.is_dir():
            raise BadInput(f"--output {path} is a file: annotated images go into a folder; name a folder, e.g. annotated/")
    home = top if top.is_dir() else top.parent
    if not home.is_dir():
        raise BadInput(f"cannot write {top}: folder {home} does not exist")
    if not os.access(home, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {top}: folder {home} is not writable")


def _source_files(src: SourceSpec) -> list[tuple[Path, str]]:
    if src.kind == "images":
        return [(p, str(p)) for p in src.paths]
    return [(Path(src.uri), src.uri)] if src.kind == "video" else []


def _file_keys(path: Path) -> set[object]:
    """Ways the same file can be named twice: its resolved path (symlinks, `..`) and, when it exists, its inode."""
    if is_stdout(path):
        return {"standard output"}
    keys: set[object] = {path.resolve()}
    try:
        st = path.stat()
        keys.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    return keys


_STREAMS = ("--json", "--summary-json", "outputs.json")  # text a user may pipe: `-`, a FIFO or a device written in place


def _check_writable(flag: str, path: Path) -> None:
    """A file we can write: nothing that a rename would damage; its folder exists or can be made (as every command
    makes the folder of its outputs)."""
    if path.is_dir():
        raise BadInput(f"{flag} {path} is a folder: give a file name, e.g. {path / _EXAMPLE_NAMES[flag]}")
    check_file_target(flag, path, streams=flag in _STREAMS)
    if is_stream(path):
        return
    home = path.absolute().parent
    while not home.exists():
        home = home.parent
    if not home.is_dir():
        raise BadInput(f"cannot write {path}: {home} is a file, not a folder")
    if not os.access(home, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {path}: folder {home} is not writable")


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
