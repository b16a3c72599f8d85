"""The pipeline file: one YAML file that says which model, which servers and which sources `detect --config` runs.

The schema is pipeline_schema.py (pydantic, strict; its `run:` section generated from the run spec). What leaves
this module is plain frozen values with every default applied, so the rest of the code never sees pydantic or
YAML. Every error is one `BadInput` line, `file:line: where: what`, the line found by mapping pydantic's error
location onto the composed YAML node tree.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tritonctl.core.errors import BadInput
from tritonctl.stream.pipeline_schema import (
    GEOMETRY,
    SECTIONS,
    Loc,
    SourceConfig,
    _Defaults,
    _File,
    _Line,
    _Source,
    _Zone,
)
from tritonctl.stream.spec import Declared, RunConfig, run_section
from tritonctl.stream.zones import Line, Zone

__all__ = ["Pipeline", "PipelineChanges", "RunConfig", "SourceConfig", "changes", "line_of", "load_pipeline"]


# ---------------------------------------------------------------- the result: plain, typed, immutable


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
    run = RunConfig(**{o.how.file.removeprefix("run."): _run_value(o, getattr(parsed.run, o.name)) for o in run_section()})
    sources = [_source(i, s, parsed.defaults) for i, s in enumerate(parsed.sources)]
    return Pipeline(path=path, model=parsed.model, urls=list(parsed.urls), protocol=parsed.protocol, run=run,
                    sources=sources)


def _run_value(o: Declared, value: Any) -> Any:
    if o.many:
        return tuple(value)
    return _out(value) if o.plain_type is Path else value


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
    section = SECTIONS.get(tuple(0 if isinstance(p, int) else p for p in loc[:-1]))
    known = _keys(section) if section else []
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown setting (did you mean {close[0]}?)"
    # A real setting in the wrong place: say where it belongs.
    homes = [_where(s) or "the top level" for s, m in SECTIONS.items() if key in _keys(m) and s != ("sources", 0)
             and not (s in GEOMETRY and key in _keys(_Source))]  # a stray `name:` is no zone's
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
    restart += [f"run.{key}" for (key, value), (_, then) in zip(old.run.items(), new.run.items(), strict=True) if value != then]
    return PipelineChanges(
        added=[s for n, s in after.items() if n not in before],
        removed=[s for n, s in before.items() if n not in after],
        changed=[s for n, s in after.items() if n in before and before[n] != s],
        needs_restart=restart,
    )
