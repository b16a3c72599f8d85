"""`detect`'s settings: the run spec's options (flags, or a pipeline file that the flags given override) checked once
into the `DetectSettings` the run takes, with what is decided from them (endpoints, per-source options, the batch)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonctl.core.endpoint import Endpoint, parse_endpoints
from tritonctl.core.errors import BadInput
from tritonctl.core.files import is_stdout
from tritonctl.inference.discovery import DiscoverTarget, parse_discover
from tritonctl.outputs.sinks import output_targets
from tritonctl.sources.video import SourceSpec, parse_sources
from tritonctl.stream import spec
from tritonctl.stream.output_checks import check_outputs
from tritonctl.stream.spec import POST_FLAGS, RunOptions
from tritonctl.stream.streaming import LIVE_CONCURRENCY
from tritonctl.vision.postprocess import PostSettings

if TYPE_CHECKING:
    from tritonctl.stream.pipeline import Pipeline, SourceConfig
    from tritonctl.stream.zones import Line, Zone

__all__ = ["POST_FLAGS", "DetectSettings", "SourceOptions", "auto_batch", "settings_from_flags", "settings_from_pipeline"]

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


@dataclass(frozen=True, kw_only=True)
class DetectSettings(RunOptions):
    """The run spec's options (RunOptions: one field each), and what the run decides from them."""

    sources: list[SourceSpec]
    endpoints: list[Endpoint]
    batch_auto: bool = False  # no --batch given: up to one frame per live camera (capped by the model)
    post: PostSettings = field(default_factory=PostSettings)  # from the post-processing options
    source_options: tuple[SourceOptions, ...] = ()
    queue_size: int = 8
    pipeline: Pipeline | None = None  # the pipeline file this run came from (reloaded on SIGHUP or a change)
    overrides: dict[str, Any] = field(default_factory=dict)  # the flags given over the file (a reload applies them too)

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
        spec.check_given(kw)  # a bad flag is said before any source is looked at
        post = kw.pop("post", None) or PostSettings(**{k: kw[k] for k in POST_FLAGS if kw.get(k) is not None})
        specs = parse_sources(sources)
        if isinstance(view, str):
            from tritonctl.outputs.view import parse_view_address

            view = parse_view_address(view)
        auto = batch is None
        batch = auto_batch(sum(s.live for s in specs), kw.get("concurrency")) if batch is None else batch
        kw["sinks"] = tuple(kw.get("sinks", ()))
        s = cls(sources=specs, endpoints=endpoints, urls=[e.url for e in endpoints], batch=batch, batch_auto=auto,
                view=view, discover=discover, discover_dns=discover_dns, discover_interval_s=discover_interval_s,
                post=post, **kw)
        if len(s.source_options) != len(specs):
            s = replace(s, source_options=tuple(SourceOptions(post=s.post, vid_stride=s.vid_stride) for _ in specs))
        _validate(s)
        check_outputs(s)
        return s

    def options_of(self, spec: SourceSpec) -> SourceOptions:
        return self.source_options[self.sources.index(spec)]

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
    """The spec's bounds and choices, then what holds between settings."""
    spec.check(s)
    if s.queue_size < 1 or any(o.vid_stride < 1 for o in s.source_options):
        raise BadInput(spec.AT_LEAST_ONE)
    if any(o.policy not in POLICIES for o in s.source_options):
        raise BadInput(f"a source's policy must be one of {', '.join(POLICIES)}")
    if s.sinks:
        from tritonctl.outputs import events

        for url in s.sinks:
            events.parse_sink_url(url)  # refused here, before anything starts
        if s.sink_policy not in events.POLICIES or s.sink_outbox < 1:
            raise BadInput(f"--sink-policy {s.sink_policy}: choose {', '.join(events.POLICIES)}; --sink-outbox at least 1")
    if s.dwell and s.track is None:
        raise BadInput("--dwell times each tracked object: add --track bytetrack (or ocsort, botsort)")
    if s.track is not None:
        from tritonctl.stream.tracking import make_tracker

        make_tracker(s.track, 30.0)  # an unknown name, or the library missing, is said now, before any file opens
    if s.shm == "system" and not all(e.local for e in s.endpoints):
        raise BadInput("--shm system needs the server on this host (127.0.0.1/localhost): use --shm none for remote ones")


def settings_from_flags(config: Path | None, sources: list[str], flags: dict[str, Any]) -> DetectSettings:
    """The CLI's flags (by option name; None: not given) and, with --config, the pipeline file they override."""
    if config is not None:
        from tritonctl.stream.pipeline import load_pipeline

        return settings_from_pipeline(load_pipeline(config), sources, flags)
    given = {k: v for k, v in flags.items() if v is not None}
    if not sources:
        raise BadInput("no source given: pass video files, image folders, globs, RTSP/HTTP URLs or webcam indexes, "
                       "or a pipeline file with --config configs/cameras.yaml")
    if "model" not in given:
        raise BadInput("no model given: --model NAME (the model's name on the server), or a pipeline file with --config")
    return DetectSettings.create(sources=sources, urls=given.pop("urls", []), **given)


def settings_from_pipeline(pipeline: Pipeline, sources: list[str], flags: dict[str, Any]) -> DetectSettings:
    """The pipeline file's settings, with every flag the user gave (not None) overriding the file's value; sources
    named on the command line join the file's."""
    given = {k: v for k, v in flags.items() if v is not None}
    run = pipeline.run
    post_flags: dict[str, Any] = {k: given[k] for k in POST_FLAGS if k in given}
    per_source = [_options(src, post_flags, given) for src in pipeline.sources]
    per_source += [SourceOptions(post=PostSettings(**post_flags), vid_stride=given.get("vid_stride", 1))] * len(sources)
    kw: dict[str, Any] = {o.name: o.how.from_file(getattr(run, o.how.run_key)) for o in spec.run_section()
                          if o.how.run_key is not None}
    kw.update(model=pipeline.model, protocol=pipeline.protocol, source_options=tuple(per_source), pipeline=pipeline,
              overrides=given)
    kw.update({k: v for k, v in given.items() if k != "urls"})
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
