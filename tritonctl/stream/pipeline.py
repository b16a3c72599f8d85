"""The pipeline file: one YAML file that says which model, which servers and which sources `detect --config` runs.

The schema is pydantic (strict, extra="forbid": a typo or a `yes` where a number belongs is an error, never a silent
default). What leaves this module is plain frozen dataclasses with every default applied, so the rest of the code
never sees pydantic or YAML. Every error is one `BadInput` line, `file:line: where: what`, the line found by mapping
pydantic's error location onto the composed YAML node tree.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from tritonctl.core.endpoint import parse_endpoint
from tritonctl.core.errors import BadInput
from tritonctl.stream.zones import Anchor, Line, Zone, line_problem, polygon_problem

Loc = tuple[str | int, ...]
Policy = Literal["auto", "latest", "block"]
Protocol = Literal["http", "grpc"]
Shm = Literal["auto", "system", "none"]


# ---------------------------------------------------------------- the result: plain, typed, immutable


@dataclass(frozen=True)
class RunConfig:
    """Run-wide settings; each has a `detect` flag of the same name that overrides it."""

    batch: int | None = None  # None: one frame per live camera, up to 8 (as detect without --batch)
    batch_timeout_ms: float = 10.0
    concurrency: int | None = None
    shm: str = "auto"
    json: Path | None = None
    summary_json: Path | None = None
    view: str | None = None
    stall_timeout: float = 5.0
    reconnects: int = 5
    sinks: tuple[str, ...] = ()  # brokers: mqtt://host:port/topic, redis://host:port/stream, nats://host:port/subject


@dataclass(frozen=True)
class SourceConfig:
    """One source with the file's `defaults` already applied (a source's own setting wins)."""

    name: str
    uri: str
    conf: float = 0.25
    iou: float = 0.45
    classes: tuple[int, ...] | None = None
    vid_stride: int = 1
    policy: str = "auto"
    video_output: Path | None = None
    json_output: Path | None = None
    zones: tuple[Zone, ...] = ()  # counted per frame (tritonctl.stream.zones); part of equality, so an edit restarts the source
    lines: tuple[Line, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    path: Path
    model: str
    urls: list[str]
    protocol: str
    run: RunConfig
    sources: list[SourceConfig]


@dataclass(frozen=True)
class PipelineChanges:
    """What a reload has to do, by source name. `changed` holds the new settings; the caller restarts those sources.

    `needs_restart` names the run-wide settings (model, urls, protocol, run.*) that differ: a reload cannot apply them
    to a running pipeline, so the caller says so instead of silently ignoring the edit.
    """

    added: list[SourceConfig]
    removed: list[SourceConfig]
    changed: list[SourceConfig]
    needs_restart: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.needs_restart)


# ---------------------------------------------------------------- value checks (messages are the user's line)


def _fail(message: str) -> PydanticCustomError:
    # A custom error keeps our wording; pydantic's "Value error, ..." prefix would not read as one line.
    return PydanticCustomError("tritonctl", message)


def _in_range(low: float, high: float) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not low <= value <= high:  # also refuses NaN
            raise _fail(f"{value:g} is out of range {low:g}..{high:g}")
        return value
    return check


def _at_least(low: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not value >= low:
            raise _fail(f"{value:g} is below the minimum {low:g}")
        return value
    return check


def _positive(value: float) -> float:
    if not value > 0:
        raise _fail(f"{value:g} must be more than 0")
    return value


def _checked_by(parse: Callable[[str], object]) -> Callable[[str], str]:
    """A validator that runs one of the flags' own parsers (what --url, --view, --sink accept, the file does too)
    and turns its one-line error into this file's."""
    def check(text: str) -> str:
        try:
            parse(text)
        except BadInput as e:
            raise _fail(str(e).strip()) from None
        return text
    return check


def _endpoint(text: str) -> object:
    return parse_endpoint(text, flag="")


def _view_address(text: str) -> object:
    from tritonctl.outputs.view import parse_view_address

    return parse_view_address(text)


def _sink_url(text: str) -> object:
    from tritonctl.outputs.events import parse_sink_url

    return parse_sink_url(text)


def _numbers_as_text(value: Any) -> Any:
    # `uri: 0` (a webcam index) and `name: 1` are meant as text; YAML reads them as ints.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _name(text: str) -> str:
    # Names end up in file names, JSON Lines and the live view's URLs: keep them plain.
    if not _NAME.match(text):
        raise _fail(f"{text!r} is not a plain name: use letters, digits, '_', '.', '-' (e.g. gate_1)")
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise _fail("is empty")
    return text


def _polygon(points: list[list[float]]) -> list[list[float]]:
    problem = polygon_problem(points)  # the same check as Zone's, worded for the file
    if problem:
        raise _fail(problem)
    return points


def _line_points(points: list[list[float]]) -> list[list[float]]:
    problem = line_problem(points)
    if problem:
        raise _fail(problem)
    return points


Fraction = Annotated[float, AfterValidator(_in_range(0, 1))]
Stride = Annotated[int, AfterValidator(_at_least(1))]
ClassId = Annotated[int, AfterValidator(_at_least(0))]
Text = Annotated[str, BeforeValidator(_numbers_as_text), AfterValidator(_not_blank)]
Name = Annotated[str, BeforeValidator(_numbers_as_text), AfterValidator(_name)]
Url = Annotated[str, AfterValidator(_checked_by(_endpoint))]
ViewAddress = Annotated[str, AfterValidator(_checked_by(_view_address))]
SinkUrl = Annotated[str, AfterValidator(_checked_by(_sink_url))]


# ---------------------------------------------------------------- the schema (file side)


class _Strict(BaseModel):
    # strict: YAML's `yes` is no batch size and "4" is no number; forbid: `bach:` is a typo, not a new setting.
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class _Run(_Strict):
    batch: Annotated[int, AfterValidator(_at_least(1))] | None = RunConfig.batch
    batch_timeout_ms: Annotated[float, AfterValidator(_at_least(0))] = RunConfig.batch_timeout_ms
    concurrency: Annotated[int, AfterValidator(_at_least(1))] | None = None
    shm: Shm = "auto"
    json_path: Text | None = Field(default=None, alias="json")  # `json` would shadow BaseModel.json
    summary_json: Text | None = None
    view: ViewAddress | None = None
    stall_timeout: Annotated[float, AfterValidator(_positive)] = RunConfig.stall_timeout
    reconnects: Annotated[int, AfterValidator(_at_least(0))] = RunConfig.reconnects
    sinks: list[SinkUrl] = []


class _Defaults(_Strict):
    conf: Fraction = SourceConfig.conf
    iou: Fraction = SourceConfig.iou
    classes: list[ClassId] | None = None
    vid_stride: Stride = SourceConfig.vid_stride
    policy: Policy = "auto"


class _Outputs(_Strict):
    video: Text | None = None
    json_path: Text | None = Field(default=None, alias="json")


class _Zone(_Strict):
    name: Name
    polygon: Annotated[list[list[float]], AfterValidator(_polygon)]
    anchor: Anchor = "bottom_center"


class _Line(_Strict):
    name: Name
    points: Annotated[list[list[float]], AfterValidator(_line_points)]
    anchor: Anchor = "bottom_center"


class _Source(_Defaults):
    # The per-source settings are the defaults' own fields; only those set in the file override `defaults`.
    name: Name | None = None
    uri: Text
    outputs: _Outputs = _Outputs()
    zones: list[_Zone] = []  # per source only: pixel coordinates belong to one camera's frame
    lines: list[_Line] = []


class _File(_Strict):
    model: Text
    urls: Annotated[list[Url], Field(min_length=1)] = ["127.0.0.1:8000"]
    protocol: Protocol = "http"
    run: _Run = _Run()
    defaults: _Defaults = _Defaults()
    sources: Annotated[list[_Source], Field(min_length=1)]


# Where each mapping's keys are defined, for "did you mean" (loc with indexes replaced by 0).
_SECTIONS: dict[Loc, type[BaseModel]] = {
    (): _File, ("run",): _Run, ("defaults",): _Defaults, ("sources", 0): _Source, ("sources", 0, "outputs"): _Outputs,
    ("sources", 0, "zones", 0): _Zone, ("sources", 0, "lines", 0): _Line,
}
_GEOMETRY: tuple[Loc, ...] = (("sources", 0, "zones", 0), ("sources", 0, "lines", 0))


# ---------------------------------------------------------------- loading


def load_pipeline(path: Path) -> Pipeline:
    """Read, validate and resolve a pipeline file; BadInput (one line, `file:line: ...`) for anything wrong in it."""
    root, data = _read_yaml(path)
    try:
        parsed = _File.model_validate(data)
    except ValidationError as e:
        raise BadInput(_first_error(path, root, e)) from None
    pipeline = _resolve(path, parsed)
    _check_unique(path, root, pipeline)
    return pipeline


def _read_yaml(path: Path) -> tuple[yaml.Node, Any]:
    """The node tree (for line numbers) and the plain data, from one parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such pipeline file (start from configs/cameras.yaml)") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a folder, not a pipeline file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot be read: {e}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise BadInput(f"{path}:1: the file is empty (start from configs/cameras.yaml)")
        _check_duplicate_keys(path, root)
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as e:
        raise BadInput(_yaml_error(path, e)) from None
    finally:
        loader.dispose()


def _yaml_error(path: Path, e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark is not None else 1
    what = e.problem or "cannot be read"
    # PyYAML notices an unclosed bracket or quote lines later: where it began is the line the user has to fix.
    if e.context and e.context_mark is not None:
        what += f" ({e.context} started on line {e.context_mark.line + 1})"
    elif e.context:
        what += f" ({e.context})"
    return f"{path}:{line}: not valid YAML: {what}"


def _check_duplicate_keys(path: Path, node: yaml.Node, done: set[int] | None = None) -> None:
    # PyYAML keeps the last of two equal keys silently: two `conf:` lines are a mistake worth a line.
    done = set() if done is None else done
    if id(node) in done:  # an alias (*name) points back at a node already checked, perhaps an enclosing one
        return
    done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if key.value in seen:
                    raise BadInput(f"{path}:{line}: {key.value}: given twice (first on line {seen[key.value]})")
                seen[key.value] = line
            _check_duplicate_keys(path, value, done)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(path, item, done)


def _resolve(path: Path, parsed: _File) -> Pipeline:
    r = parsed.run
    run = RunConfig(batch=r.batch, batch_timeout_ms=r.batch_timeout_ms, concurrency=r.concurrency, shm=r.shm,
                    json=_out(r.json_path), summary_json=_out(r.summary_json), view=r.view,
                    stall_timeout=r.stall_timeout, reconnects=r.reconnects, sinks=tuple(r.sinks))
    sources = [_source(i, s, parsed.defaults) for i, s in enumerate(parsed.sources)]
    return Pipeline(path=path, model=parsed.model, urls=list(parsed.urls), protocol=parsed.protocol, run=run,
                    sources=sources)


def _source(index: int, source: _Source, defaults: _Defaults) -> SourceConfig:
    # fields_set, not "is None": `classes: null` in a source means all classes even when defaults name some.
    merged = {k: getattr(source if k in source.model_fields_set else defaults, k) for k in _Defaults.model_fields}
    classes = merged.pop("classes")
    return SourceConfig(name=source.name or f"cam{index}", uri=source.uri,
                        classes=tuple(classes) if classes is not None else None,
                        video_output=_out(source.outputs.video), json_output=_out(source.outputs.json_path),
                        zones=_zones(source.zones), lines=_lines(source.lines), **merged)


def _zones(zones: list[_Zone]) -> tuple[Zone, ...]:
    return tuple(Zone(z.name, tuple((p[0], p[1]) for p in z.polygon), z.anchor) for z in zones)


def _lines(lines: list[_Line]) -> tuple[Line, ...]:
    return tuple(Line(ln.name, (ln.points[0][0], ln.points[0][1]), (ln.points[1][0], ln.points[1][1]), ln.anchor)
                 for ln in lines)


def _out(text: str | None) -> Path | None:
    # Relative outputs are relative to where detect runs (like its flags), not to the file: absolute from here on.
    return Path.cwd() / Path(text).expanduser() if text is not None else None


def _check_unique(path: Path, root: yaml.Node, pipeline: Pipeline) -> None:
    """Names, uris, urls and output files each appear once (the error names the second)."""
    _unique(path, root, ((("urls", i), u) for i, u in enumerate(pipeline.urls)), "url")
    sources = list(enumerate(pipeline.sources))
    _unique(path, root, ((("sources", i, "name"), s.name) for i, s in sources), "source name")
    _unique(path, root, ((("sources", i, "uri"), s.uri) for i, s in sources), "uri")
    run = pipeline.run
    outputs: list[tuple[Loc, Path | None]] = [(("run", "json"), run.json), (("run", "summary_json"), run.summary_json)]
    for i, s in sources:
        outputs += [(("sources", i, "outputs", "video"), s.video_output), (("sources", i, "outputs", "json"), s.json_output)]
    _unique(path, root, ((loc, p) for loc, p in outputs if p is not None), "output file")
    for i, s in sources:  # zone names and line names are each unique within their source (the JSON keys)
        _unique(path, root, ((("sources", i, "zones", j, "name"), z.name) for j, z in enumerate(s.zones)), "zone name")
        _unique(path, root, ((("sources", i, "lines", j, "name"), ln.name) for j, ln in enumerate(s.lines)), "line name")


def _unique(path: Path, root: yaml.Node, items: Iterable[tuple[Loc, object]], what: str) -> None:
    first: dict[object, Loc] = {}
    for loc, value in items:
        if value in first:
            raise BadInput(f"{path}:{line_of(root, loc)}: {_where(loc)}: {what} {_show(value)} is already used by "
                           f"{_where(first[value])} (line {line_of(root, first[value])})")
        first[value] = loc


# ---------------------------------------------------------------- errors: pydantic loc -> file line


def line_of(root: yaml.Node, loc: Sequence[str | int]) -> int:
    """The 1-based line of the deepest node `loc` reaches: a key's own line for mappings, an item's for lists.

    A location that goes past what the file has (a missing setting) stops at the nearest enclosing node.
    """
    node, line = root, root.start_mark.line + 1
    for part in loc:
        step = _child(node, part)
        if step is None:
            break
        line, node = step
    return line


def _child(node: yaml.Node, part: str | int) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key.start_mark.line + 1, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item.start_mark.line + 1, item
    return None


def _first_error(path: Path, root: yaml.Node, error: ValidationError) -> str:
    # The first problem in file order (pydantic reports in schema order); the rest are counted, not listed.
    # On one line a typo'd key beats the "missing" it causes (`modle:` -> model is missing).
    found = sorted(((line_of(root, e["loc"]), e["type"] == "missing", i, e) for i, e in enumerate(error.errors())),
                   key=lambda t: t[:3])
    line, _, _, first = found[0]
    more = len(found) - 1
    tail = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    where = _where(first["loc"]) or "the file"
    return f"{path}:{line}: {where}: {_describe(first)}{tail}"


def _describe(e: Any) -> str:
    kind, value, loc = e["type"], e.get("input"), e["loc"]
    if kind == "extra_forbidden":
        return _unknown(loc)
    if kind == "missing":
        return "is required but missing"
    if kind == "tritonctl":
        return str(e["msg"])
    if kind == "literal_error":
        return f"{_show(value)} is not one of {e['ctx']['expected'].replace(chr(39), '').replace(' or ', ', ')}"
    if kind == "too_short":
        return "needs at least one entry"
    simple = {"int_type": "a whole number", "float_type": "a number", "finite_number": "a finite number",
              "string_type": "text", "list_type": "a list", "model_type": "a mapping of settings",
              "dict_type": "a mapping of settings"}
    if kind in simple:
        return f"{_show(value)} is not {simple[kind]}"
    return str(e["msg"])


def _unknown(loc: Loc) -> str:
    key = str(loc[-1])
    section = _SECTIONS.get(tuple(0 if isinstance(p, int) else p for p in loc[:-1]))
    known = _keys(section) if section else []
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown setting (did you mean {close[0]}?)"
    # A real setting in the wrong place: say where it belongs.
    homes = [_where(s) or "the top level" for s, m in _SECTIONS.items() if key in _keys(m) and s != ("sources", 0)
             and not (s in _GEOMETRY and key in _keys(_Source))]  # a stray `name:` is no zone's
    if homes:
        return f"unknown setting here ({key} belongs under {homes[0]})"
    return f"unknown setting (known: {', '.join(known)})"


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a section takes, as written in the file (aliases, e.g. json)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _where(loc: Sequence[str | int]) -> str:
    """('sources', 1, 'conf') -> sources[1].conf"""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _show(value: object) -> str:
    if isinstance(value, str | Path):
        return repr(str(value))
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- reload


_RUN_WIDE = ("model", "urls", "protocol")


def changes(old: Pipeline, new: Pipeline) -> PipelineChanges:
    """What differs between two loads of the file, by source name (a renamed source is one removed, one added)."""
    before = {s.name: s for s in old.sources}
    after = {s.name: s for s in new.sources}
    restart = [k for k in _RUN_WIDE if getattr(old, k) != getattr(new, k)]
    restart += [f"run.{f.name}" for f in fields(RunConfig) if getattr(old.run, f.name) != getattr(new.run, f.name)]
    return PipelineChanges(
        added=[s for n, s in after.items() if n not in before],
        removed=[s for n, s in before.items() if n not in after],
        changed=[s for n, s in after.items() if n in before and before[n] != s],
        needs_restart=restart,
    )
