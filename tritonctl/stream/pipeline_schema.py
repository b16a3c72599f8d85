"""The pipeline file's schema: pydantic models, strict (extra="forbid": a typo or a `yes` where a number belongs is an
error, never a silent default), and the value checks whose messages are the user's line. The `run:` section is
generated from the run spec (tritonctl.stream.spec); pipeline.py loads a file with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from tritonctl.core.endpoint import parse_endpoint
from tritonctl.core.errors import BadInput
from tritonctl.stream.spec import Declared, run_section
from tritonctl.stream.zones import Anchor, Line, Zone, line_problem, polygon_problem

Loc = tuple[str | int, ...]
Policy = Literal["auto", "latest", "block"]
Protocol = Literal["http", "grpc"]


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


def _above(low: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not value > low:
            raise _fail(f"{value:g} must be more than {low:g}")
        return value
    return check


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


# ---------------------------------------------------------------- the schema (file side)


class _Strict(BaseModel):
    # strict: YAML's `yes` is no batch size and "4" is no number; forbid: `bach:` is a typo, not a new setting.
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


def _run_field(o: Declared) -> tuple[Any, Any]:
    """A `run:` key as the spec declares it: its type (paths as text), bounds, choices and the flag's own parser."""
    checks: list[Any] = []
    if o.how.at_least is not None:
        checks.append(AfterValidator(_at_least(o.how.at_least)))
    if o.how.above is not None:
        checks.append(AfterValidator(_above(o.how.above)))
    if o.how.file_check is not None:
        checks.append(AfterValidator(_checked_by(o.how.file_check)))
    base: Any = o.plain_type
    if o.how.choices:
        base = Literal[o.how.choices]
    elif o.many:
        base = str
    elif base is Path:
        base = Text
    kind: Any = Annotated[(base, *checks)] if checks else base
    if o.many:
        kind = list[kind]
    elif o.file_default is None:
        kind = kind | None
    default = list(o.file_default) if o.many else o.file_default
    return kind, Field(default=default, alias=o.how.run_key)


if TYPE_CHECKING:
    class _Run(_Strict):
        pass
else:  # fields by option name, keys by alias (`json` would shadow BaseModel.json)
    _Run = create_model("_Run", __base__=_Strict, **{o.name: _run_field(o) for o in run_section()})


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
SECTIONS: dict[Loc, type[BaseModel]] = {
    (): _File, ("run",): _Run, ("defaults",): _Defaults, ("sources", 0): _Source, ("sources", 0, "outputs"): _Outputs,
    ("sources", 0, "zones", 0): _Zone, ("sources", 0, "lines", 0): _Line,
}
GEOMETRY: tuple[Loc, ...] = (("sources", 0, "zones", 0), ("sources", 0, "lines", 0))


# ---------------------------------------------------------------- loading
