"""One run spec: every option of `detect` declared once, as a field of `RunOptions`.

A field's `option(...)` says its default, its flag (name, help), its bounds or choices, where the pipeline file
holds it (`run.KEY` is generated from here; the other places are the file's own sections) and whether a source may
set its own value. From this one declaration come `detect`'s typer flags (flag_parameters), the file's `run:`
section (pipeline_schema), the flags-over-file merge and the bounds checks (settings). `DetectSettings` inherits
these fields, so a new option is one field here and the code that reads `settings.<name>`.

Kept light (no pydantic, no numpy): the CLI builds its flags from it at start-up.
"""

# ruff: noqa: RUF009  (option() is this spec's dataclasses.field: it returns one, with the option in its metadata)

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

from tritonctl.core.errors import BadInput

if TYPE_CHECKING:
    from tritonctl.inference.discovery import DiscoverTarget

_SAME = object()  # file_default not given: the setting's default (in the file's unit)


@dataclass(frozen=True)
class Option:
    """How one setting is given: its flag, its place in the pipeline file, its bounds."""

    flag: str  # typer's declaration: "--stall-timeout", "--realtime/--offline"
    help: str
    short: str = ""  # "-m"
    flag_type: Any = None  # what the flag parses into, when not the setting's own type (--view: text)
    parse: Callable[[Any], Any] | None = None  # a given flag's value into the setting's (--classes 0,2)
    scale: float = 1.0  # flag and file value / scale = the setting's (--batch-timeout-ms: milliseconds)
    file: str = ""  # its key in the pipeline file: "run.KEY" (generated), "model", "defaults.KEY"; "": a flag only
    per_source: bool = False  # a source's entry (or the file's `defaults:`) sets its own value; the flag sets all
    post: bool = False  # a post-processing setting (PostSettings)
    at_least: float | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()
    refusal: str = ""  # the line a value outside the bounds gets ({value}); the file's says file:line: ... instead
    file_check: Callable[[str], object] | None = None  # the flag's own parser, run on the file's text too
    file_default: Any = _SAME

    @property
    def run_key(self) -> str | None:
        """Its key in the file's `run:` section, or None."""
        return self.file.removeprefix("run.") if self.file.startswith("run.") else None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return True
        if self.choices and value not in self.choices:
            return False
        if self.at_least is not None and not value >= self.at_least:
            return False
        return not (self.above is not None and not value > self.above)

    def check(self, value: Any) -> None:
        if not self.accepts(value):
            raise BadInput(self.refusal.format(value=value))

    def from_file(self, value: Any) -> Any:
        """A value in the flag's/file's unit as the setting holds it."""
        return value / self.scale if self.scale != 1 and value is not None else value


def option(default: Any, flag: str, help: str, **how: Any) -> Any:
    """A `RunOptions` field; `default_factory` when the default is a type (list)."""
    made = default if isinstance(default, type) else None
    spec = Option(flag, help, **how)
    if made is not None:
        return field(default_factory=made, metadata={"option": spec})
    return field(default=default, metadata={"option": spec})


def _view(text: str) -> object:
    from tritonctl.outputs.view import parse_view_address

    return parse_view_address(text)


def _sink(text: str) -> object:
    from tritonctl.outputs.events import parse_sink_url

    return parse_sink_url(text)


def _classes(text: str) -> tuple[int, ...] | None:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInput(f"--classes {text!r}: give whole numbers separated by commas, e.g. 4,8") from None
    return values or None  # `--classes ''`: not given


DISCOVER_HELP = ("NAME:PORT: every address NAME resolves to (A and AAAA; a Kubernetes headless Service: one per ready "
                 "pod) is an endpoint, looked up again every --discover-interval; with --url: both")
DISCOVER_DNS_HELP = "ask this DNS server (host[:port], default port 53) instead of this host's resolver"
DISCOVER_INTERVAL_HELP = "seconds between lookups of --discover's name (default 5)"
_STALL = "--stall-timeout must be positive and --reconnects at least 0"
AT_LEAST_ONE = "--batch, --vid-stride and the queue size must be at least 1"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Every option of `detect`, in the order `detect --help` lists them."""

    model: str = option("", "--model", "model name on the server", short="-m", file="model")
    urls: list[str] = option(list, "--url", "Triton endpoint host:port (default 127.0.0.1:8000, :8001 with --protocol "
                             "grpc); repeat for several", file="urls")
    protocol: str = option("http", "--protocol", "http (default) or grpc (give the gRPC port in --url)", file="protocol")
    shm: str = option("auto", "--shm", "auto (default: system shared memory when the server is on this host), system, "
                      "none", file="run.shm", choices=("auto", "system", "none"),
                      refusal="--shm {value!r}: choose auto, system or none")
    concurrency: int | None = option(None, "--concurrency", "requests in flight (default: 2 with live cameras, for "
                                     "latency; else from the model's max batch)", file="run.concurrency", at_least=1,
                                     refusal="--concurrency must be at least 1")
    batch: int = option(1, "--batch", "frames per request, across sources (default: the live cameras shared out over "
                        "the requests in flight, up to 8; 1 for files)", file="run.batch", at_least=1,
                        refusal=AT_LEAST_ONE, file_default=None)  # the file's none: one frame per live camera
    batch_timeout_s: float = option(0.010, "--batch-timeout-ms", "a batch that is not full goes after this long "
                                    "(default 10)", scale=1000, file="run.batch_timeout_ms", at_least=0,
                                    refusal="--batch-timeout-ms must be 0 or more (0: send what is there at once)")
    realtime: bool | None = option(None, "--realtime/--offline", "keep only the newest frame (default for live "
                                   "sources) or every frame", file="defaults.policy", per_source=True)
    vid_stride: int = option(1, "--vid-stride", "infer every Nth frame", file="defaults.vid_stride", per_source=True,
                             at_least=1, refusal=AT_LEAST_ONE)
    # None: the decoder's own default (PostSettings, which checks these values)
    conf: float | None = option(None, "--conf", "confidence threshold (default 0.25)", file="defaults.conf",
                                per_source=True, post=True)
    iou: float | None = option(None, "--iou", "NMS IoU threshold (default 0.45)", file="defaults.iou", per_source=True,
                               post=True)
    classes: tuple[int, ...] | None = option(None, "--classes", "only these class ids, e.g. 0,2", flag_type=str,
                                             parse=_classes, file="defaults.classes", per_source=True, post=True)
    agnostic: bool | None = option(None, "--agnostic", "NMS across classes", post=True)
    max_det: int | None = option(None, "--max-det", "detections kept per frame (default 300)", post=True)
    output: Path | None = option(None, "--output", "annotated video (out.mp4; out_<id>.mp4 for several sources); for "
                                 "image sources a folder (annotated/), one image per input, named after it")
    json_path: Path | None = option(None, "--json", "JSON Lines: one line per frame (- for standard output, the rest "
                                    "goes to standard error)", file="run.json")
    summary_json: Path | None = option(None, "--summary-json", "the run's summary as JSON (- for standard output)",
                                       file="run.summary_json")
    show: bool = option(False, "--show", "display a window (needs a display)")
    view: tuple[str, int] | None = option(None, "--view", "serve a live page of every stream at HOST:PORT (e.g. "
                                          "127.0.0.1:8080)", flag_type=str, file="run.view", file_check=_view)
    track: str | None = option(None, "--track", "track objects per source: bytetrack, ocsort or botsort (ids in the "
                               "JSON Lines, on the video and the live view)")
    dwell: bool = option(False, "--dwell", "with --track: seconds each object has been in view, per detection in the "
                         "JSON Lines (dwell_s)")
    sinks: tuple[str, ...] = option((), "--sink", "publish results to a broker: mqtt://host:port/topic, "
                                    "redis://host:port/stream, nats://host:port/subject; repeat for several",
                                    flag_type=list[str], parse=tuple, file="run.sinks", file_check=_sink)
    sink_outbox: int = option(10_000, "--sink-outbox", "messages kept per broker while it is away (default 10000)")
    sink_policy: str = option("drop-oldest", "--sink-policy", "a full outbox: drop-oldest (default), drop-newest, block")
    server_timeout_s: float = option(30.0, "--server-timeout", "seconds to wait while every endpoint is down "
                                     "(default 30)")
    stall_timeout_s: float = option(5.0, "--stall-timeout", "seconds of silence before a live source counts as stalled "
                                    "(default 5)", file="run.stall_timeout", above=0, refusal=_STALL)
    reconnects: int = option(5, "--reconnects", "reopen attempts (with back-off) for a stalled live source (default 5)",
                             file="run.reconnects", at_least=0, refusal=_STALL)
    discover: DiscoverTarget | None = option(None, "--discover", DISCOVER_HELP, flag_type=str)
    discover_dns: str | None = option(None, "--discover-dns", DISCOVER_DNS_HELP)
    discover_interval_s: float | None = option(None, "--discover-interval", DISCOVER_INTERVAL_HELP)


@dataclass(frozen=True)
class Declared:
    """One option as the spec declares it: its setting's name, type and default, and how it is given."""

    name: str
    type: Any  # the setting's type
    default: Any
    how: Option

    @property
    def flag_type(self) -> Any:
        return self.how.flag_type if self.how.flag_type is not None else self.type

    @property
    def plain_type(self) -> Any:
        """The flag's type without its None (`Path | None` -> Path)."""
        kinds = [k for k in get_args(self.flag_type) if k is not type(None)]
        return kinds[0] if len(kinds) == 1 and get_origin(self.flag_type) is not list else self.flag_type

    @property
    def many(self) -> bool:
        """A repeatable flag (--url, --sink)."""
        return get_origin(self.flag_type) is list

    @property
    def file_default(self) -> Any:
        """The default in the file's unit (milliseconds, text): what the file holds when it leaves the key out."""
        if self.how.file_default is not _SAME:
            return self.how.file_default
        value = self.default
        return value * self.how.scale if self.how.scale != 1 and value is not None else value


def _resolve(annotation: str, names: dict[str, Any]) -> Any:
    try:
        return eval(annotation, names)
    except NameError:  # a name for type checkers only (DiscoverTarget): its flag_type says what the flag parses
        return Any


def _declared() -> tuple[Declared, ...]:
    names = globals()
    out = []
    for f in fields(RunOptions):
        kind = _resolve(f.type, names) if isinstance(f.type, str) else f.type
        default = f.default_factory() if callable(f.default_factory) else f.default
        out.append(Declared(f.name, kind, default, f.metadata["option"]))
    return tuple(out)


OPTIONS: tuple[Declared, ...] = _declared()
POST_FLAGS = tuple(o.name for o in OPTIONS if o.how.post)


def run_section() -> Iterator[Declared]:
    """The options the pipeline file's `run:` section holds, in order."""
    return (o for o in OPTIONS if o.how.run_key is not None)


class RunConfig:
    """The pipeline file's `run:` section: each of its options by its key there, in the file's units, defaults
    applied. Immutable; equal when every value is."""

    def __init__(self, **values: Any) -> None:
        defaults = {o.how.run_key: o.file_default for o in run_section()}
        if unknown := values.keys() - defaults.keys():
            raise TypeError(f"RunConfig has no {', '.join(sorted(unknown))}")
        object.__setattr__(self, "_values", {**defaults, **values})

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"RunConfig is immutable: {key}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self.items() == other.items()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RunConfig({', '.join(f'{k}={v!r}' for k, v in self.items())})"

    def items(self) -> list[tuple[str, Any]]:
        return list(self.__dict__["_values"].items())


def check(values: Any) -> None:
    """Each option's bounds and choices, on the settings they went into (from flags or the file)."""
    for o in OPTIONS:
        o.how.check(getattr(values, o.name))


def check_given(values: Mapping[str, Any]) -> None:
    """The bounds of the values given (flags, keyword arguments), before anything else is looked at: a bad flag is
    said before a source is opened."""
    for o in OPTIONS:
        if values.get(o.name) is not None:
            o.how.check(values[o.name])


def flags_given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The CLI's flag values by option name, as the settings take them; None: the flag was not given."""
    out: dict[str, Any] = {}
    for o in OPTIONS:
        value = values.get(o.name)
        if o.many:
            value = list(value or []) or None
        if value is not None and o.how.parse is not None:
            value = o.how.parse(value)
        out[o.name] = o.how.from_file(value)
    return out


def flag_parameters() -> list[inspect.Parameter]:
    """One typer.Option per option (all default to "not given"), for a command's generated signature."""
    import typer

    params = []
    for o in OPTIONS:
        names = [o.how.flag, *([o.how.short] if o.how.short else [])]
        kind = o.flag_type if o.many else o.flag_type | None
        default = typer.Option([] if o.many else None, *names, help=o.how.help)
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind))
    return params


def with_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(positional..., **options)` with a signature typer reads: fn's own parameters, then one per option."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    fn.__signature__ = inspect.Signature([*own, *flag_parameters()])  # type: ignore[attr-defined]
    return fn
