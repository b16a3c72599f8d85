"""The pipeline file (`detect --config`): the shipped example, defaults, every error as `file:line: ...`, reload diffs."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from tritonctl.core.errors import BadInput
from tritonctl.stream.pipeline import Pipeline, RunConfig, SourceConfig, changes, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "cameras.yaml"

# Line 1 model, 2 urls, 3 sources, 4 first source's name, 5 its uri; tests append lines from 6 on.
BASE = """\
model: demo
urls: ["127.0.0.1:8000"]
sources:
  - name: a
    uri: rtsp://127.0.0.1:8554/cam0
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error(path: Path) -> str:
    with pytest.raises(BadInput) as info:
        load_pipeline(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- the shipped example


def test_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    p = load_pipeline(Path("configs/cameras.yaml"))
    assert (p.model, p.urls, p.protocol) == ("shapes", ["127.0.0.1:8000"], "http")
    assert p.run == RunConfig(batch=None, batch_timeout_ms=10, concurrency=None, shm="auto", json=None, summary_json=None,
                              view=None, stall_timeout=5.0, reconnects=5)
    assert [s.name for s in p.sources] == ["gate", "yard", "cam2", "recording"]
    assert [s.uri for s in p.sources][:3] == [f"rtsp://127.0.0.1:8554/cam{i}" for i in range(3)]
    gate = p.sources[0]
    assert (gate.conf, gate.iou, gate.classes, gate.vid_stride, gate.policy) == (0.4, 0.45, (0,), 2, "auto")
    assert gate.video_output == ROOT / "out/gate.mp4" and gate.json_output == ROOT / "out/gate.jsonl"
    assert p.sources[3].policy == "block" and p.sources[3].video_output is None


def test_example_documents_every_setting() -> None:
    # Each setting the schema knows appears in the example with a comment on its line.
    text = EXAMPLE.read_text()
    keys = ["model", "urls", "protocol", "run", "batch", "batch_timeout_ms", "concurrency", "shm", "json", "summary_json",
            "view", "stall_timeout", "reconnects", "defaults", "conf", "iou", "classes", "vid_stride", "policy", "sources",
            "outputs", "video"]
    for key in keys:
        lines = [ln for ln in text.splitlines() if ln.strip().lstrip("- ").startswith(f"{key}:")]
        assert any("#" in ln for ln in lines), key


# ---------------------------------------------------------------- defaults and overrides


def test_defaults_apply_and_sources_override(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("  - name: a\n", "  - name: a\n    iou: 0.7\n    classes: null\n") + """\
  - uri: b.mp4
defaults:
  conf: 0.3
  classes: [1, 2]
  vid_stride: 3
  policy: latest
""")
    a, b = load_pipeline(path).sources
    assert (a.conf, a.iou, a.classes, a.vid_stride, a.policy) == (0.3, 0.7, None, 3, "latest")  # null: every class
    assert (b.name, b.conf, b.iou, b.classes, b.vid_stride, b.policy) == ("cam1", 0.3, 0.45, (1, 2), 3, "latest")


def test_built_in_defaults(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, "model: m\nsources: [{uri: 0}]\n"))
    assert p.urls == ["127.0.0.1:8000"] and p.protocol == "http" and p.run == RunConfig()
    assert p.sources == [SourceConfig(name="cam0", uri="0")]  # a webcam index is text


def test_relative_outputs_resolve_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, BASE + "    outputs: {video: v.mp4, json: /abs/a.jsonl}\nrun: {json: all.jsonl}\n")
    monkeypatch.chdir(tmp_path / "..")
    p = load_pipeline(path)
    assert p.sources[0].video_output == tmp_path.parent / "v.mp4"
    assert p.sources[0].json_output == Path("/abs/a.jsonl")
    assert p.run.json == tmp_path.parent / "all.jsonl"


# ---------------------------------------------------------------- errors: file and line


def test_out_of_range_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "  - name: b\n    uri: b.mp4\n    conf: 1.5\n")
    assert error(path) == f"{path}:8: sources[1].conf: 1.5 is out of range 0..1"


def test_unknown_key_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "run:\n  batch_timeout_ms: 5\n  bach: 4\n")
    assert error(path) == f"{path}:8: run.bach: unknown setting (did you mean batch?)"
    path = write(tmp_path, BASE + "    outptus: {video: a.mp4}\n")
    assert error(path) == f"{path}:6: sources[0].outptus: unknown setting (did you mean outputs?)"
    path = write(tmp_path, "modle: m\nsources: [{uri: a}]\n")
    assert error(path).startswith(f"{path}:1: modle: unknown setting (did you mean model?)")


def test_setting_in_the_wrong_section(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "run:\n  conf: 0.5\n")
    assert error(path) == f"{path}:7: run.conf: unknown setting here (conf belongs under defaults)"


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "run:\n  batch: [4\n  shm: auto\n")
    message = error(path)
    assert message.startswith(f"{path}:8: not valid YAML:"), message
    path = write(tmp_path, "model: demo\nurls: x\n  bad: indent\n")
    assert error(path).startswith(f"{path}:3: not valid YAML:")
    # An unclosed bracket is noticed later; the line it opened on is named too.
    path = write(tmp_path, "model: demo\nurls: [a\nsources: []\n")
    assert error(path) == (f"{path}:3: not valid YAML: expected ',' or ']', but got ':' "
                           "(while parsing a flow sequence started on line 2)")
    path = write(tmp_path, "model: !!python/object:os.system x\nsources: [{uri: a}]\n")  # safe loading only
    assert error(path).startswith(f"{path}:1: not valid YAML: could not determine a constructor")


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "model: m\ndefaults: &d {conf: 0.3}\nsources:\n  - {<<: *d, uri: a, iou: 0.2}\n")
    assert (load_pipeline(path).sources[0].conf, load_pipeline(path).sources[0].iou) == (0.3, 0.2)
    path = write(tmp_path, "model: &x [*x]\nsources: [{uri: a}]\n")  # a recursive alias ends, as an error
    assert error(path) == f"{path}:1: model: a list is not text"


def test_missing_and_empty_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error(missing) == f"{missing}: no such pipeline file (start from configs/cameras.yaml)"
    for text in ("", "# only a comment\n"):
        empty = write(tmp_path, text)
        assert error(empty) == f"{empty}:1: the file is empty (start from configs/cameras.yaml)"
    assert error(tmp_path).startswith(f"{tmp_path}: is a folder")


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert error(path) == f"{path}:1: the file: a list is not a mapping of settings"
    path = write(tmp_path, BASE + "run: 4\n")
    assert error(path) == f"{path}:6: run: 4 is not a mapping of settings"


def test_missing_required_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "model: demo\nsources:\n  - name: a\n    conf: 0.5\n")
    assert error(path) == f"{path}:3: sources[0].uri: is required but missing"
    path = write(tmp_path, "urls: [a]\nsources: [{uri: x}]\n")
    assert error(path) == f"{path}:1: model: is required but missing"
    path = write(tmp_path, "model: m\nsources: []\n")
    assert error(path) == f"{path}:2: sources: needs at least one entry"


def test_duplicate_names_and_uris_name_the_second(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "  - name: a\n    uri: b.mp4\n")
    assert error(path) == f"{path}:6: sources[1].name: source name 'a' is already used by sources[0].name (line 4)"
    path = write(tmp_path, BASE + "  - name: b\n    uri: rtsp://127.0.0.1:8554/cam0\n")
    assert error(path) == (f"{path}:7: sources[1].uri: uri 'rtsp://127.0.0.1:8554/cam0' is already used by "
                           "sources[0].uri (line 5)")


def test_default_name_collides_with_a_given_one(tmp_path: Path) -> None:
    # The second source is cam1 by default; a later `name: cam1` is the duplicate, reported on its own line.
    path = write(tmp_path, BASE + "  - uri: b.mp4\n  - name: cam1\n    uri: c.mp4\n")
    assert error(path).startswith(f"{path}:7: sources[2].name: source name 'cam1' is already used by sources[1].name (line 6)")


def test_duplicate_urls_and_outputs(tmp_path: Path) -> None:
    path = write(tmp_path, "model: m\nurls:\n  - 127.0.0.1:8000\n  - 127.0.0.1:8000\nsources: [{uri: a}]\n")
    assert error(path).startswith(f"{path}:4: urls[1]: url '127.0.0.1:8000' is already used by urls[0] (line 3)")
    path = write(tmp_path, BASE + "    outputs: {json: o.jsonl}\nrun:\n  json: o.jsonl\n")
    assert error(path).startswith(f"{path}:6: sources[0].outputs.json: output file")


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    conf: 0.3\n    conf: 0.5\n")
    assert error(path) == f"{path}:7: conf: given twice (first on line 6)"


def test_several_problems_report_the_first_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "model: m\nsources:\n  - uri: a\n    iou: 2\n    conf: -1\n")
    assert error(path) == f"{path}:4: sources[0].iou: 2 is out of range 0..1 (and 1 more problem)"


# ---------------------------------------------------------------- value validation


@pytest.mark.parametrize(("line", "where", "message"), [
    ("conf: 1.01", "defaults.conf", "1.01 is out of range 0..1"),
    ("conf: -0.1", "defaults.conf", "-0.1 is out of range 0..1"),
    ("conf: .nan", "defaults.conf", "nan is not a finite number"),
    ("conf: high", "defaults.conf", "'high' is not a number"),
    ("conf: yes", "defaults.conf", "true is not a number"),
    ("iou: 1.5", "defaults.iou", "1.5 is out of range 0..1"),
    ("vid_stride: 0", "defaults.vid_stride", "0 is below the minimum 1"),
    ("vid_stride: 1.5", "defaults.vid_stride", "1.5 is not a whole number"),
    ("policy: newest", "defaults.policy", "'newest' is not one of auto, latest, block"),
    ("classes: [0, -1]", "defaults.classes[1]", "-1 is below the minimum 0"),
    ("classes: [0, a]", "defaults.classes[1]", "'a' is not a whole number"),
    ("classes: 0", "defaults.classes", "0 is not a list"),
])
def test_default_values_checked(tmp_path: Path, line: str, where: str, message: str) -> None:
    path = write(tmp_path, BASE + f"defaults:\n  {line}\n")
    assert error(path) == f"{path}:7: {where}: {message}"


@pytest.mark.parametrize(("line", "where", "message"), [
    ("batch: 0", "run.batch", "0 is below the minimum 1"),
    ("batch: '4'", "run.batch", "'4' is not a whole number"),
    ("batch_timeout_ms: -1", "run.batch_timeout_ms", "-1 is below the minimum 0"),
    ("concurrency: 0", "run.concurrency", "0 is below the minimum 1"),
    ("shm: cuda", "run.shm", "'cuda' is not one of auto, system, none"),
    ("stall_timeout: 0", "run.stall_timeout", "0 must be more than 0"),
    ("reconnects: -1", "run.reconnects", "-1 is below the minimum 0"),
    ("view: 'a b:80'", "run.view", "--view a b:80: expected HOST:PORT with a port 1-65535, e.g. --view 127.0.0.1:8080, "
                                    "--view :8080 (this machine only) or --view 0.0.0.0:8080 (every interface)"),
])
def test_run_values_checked(tmp_path: Path, line: str, where: str, message: str) -> None:
    path = write(tmp_path, BASE + f"run:\n  {line}\n")
    assert error(path) == f"{path}:7: {where}: {message}"


def test_edge_values_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "defaults: {conf: 0, iou: 1, classes: []}\nrun: {batch: 1, batch_timeout_ms: 0, "
                                  "reconnects: 0, concurrency: 1, view: ':8080'}\n")
    p = load_pipeline(path)
    assert (p.sources[0].conf, p.sources[0].iou, p.sources[0].classes) == (0, 1, ())
    assert (p.run.batch, p.run.batch_timeout_ms, p.run.reconnects, p.run.view) == (1, 0, 0, ":8080")  # as --view


def test_protocol_urls_and_names_checked(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "protocol: https\n")
    assert error(path) == f"{path}:6: protocol: 'https' is not one of http, grpc"
    path = write(tmp_path, BASE.replace('["127.0.0.1:8000"]', '["127.0.0.1:8000", "host:99999"]'))
    assert error(path) == f"{path}:2: urls[1]: 'host:99999': port 99999 is outside 1..65535"
    path = write(tmp_path, BASE.replace("name: a", "name: front door"))
    assert error(path).startswith(f"{path}:4: sources[0].name: 'front door' is not a plain name")
    path = write(tmp_path, BASE.replace("uri: rtsp://127.0.0.1:8554/cam0", "uri: ''"))
    assert error(path) == f"{path}:5: sources[0].uri: is empty"


def test_grpc_pipeline(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, BASE.replace("127.0.0.1:8000", "10.0.0.5:8001") + "protocol: grpc\n"))
    assert (p.protocol, p.urls) == ("grpc", ["10.0.0.5:8001"])


# ---------------------------------------------------------------- reload: changes()


def pipeline(*sources: SourceConfig, run: RunConfig | None = None) -> Pipeline:
    return Pipeline(Path("p.yaml"), "demo", ["127.0.0.1:8000"], "http", run or RunConfig(), list(sources))


def test_changes_by_name() -> None:
    a, b, c = (SourceConfig(name=n, uri=f"{n}.mp4") for n in "abc")
    b2 = replace(b, conf=0.6)
    diff = changes(pipeline(a, b), pipeline(a, b2, c))
    assert (diff.added, diff.removed, diff.changed, diff.needs_restart) == ([c], [], [b2], [])
    diff = changes(pipeline(a, b, c), pipeline(c))
    assert (diff.added, diff.removed, diff.changed) == ([], [a, b], [])
    assert not changes(pipeline(a, b), pipeline(b, a))  # order alone is no change


def test_changes_renamed_source_is_removed_and_added() -> None:
    a = SourceConfig(name="a", uri="x.mp4")
    diff = changes(pipeline(a), pipeline(replace(a, name="z")))
    assert [s.name for s in diff.added] == ["z"] and [s.name for s in diff.removed] == ["a"] and not diff.changed


def test_changes_reports_run_wide_edits() -> None:
    a = SourceConfig(name="a", uri="x.mp4")
    old = pipeline(a)
    new = replace(pipeline(a, run=RunConfig(batch=8)), model="other")
    assert changes(old, new).needs_restart == ["model", "run.batch"]


def test_changes_between_two_loads(tmp_path: Path) -> None:
    first = load_pipeline(write(tmp_path, BASE + "  - name: b\n    uri: b.mp4\n"))
    second = load_pipeline(write(tmp_path, BASE.replace("name: a", "name: a\n    conf: 0.9") + "  - name: c\n    uri: c.mp4\n"))
    diff = changes(first, second)
    assert [s.name for s in diff.added] == ["c"] and [s.name for s in diff.removed] == ["b"]
    assert [(s.name, s.conf) for s in diff.changed] == [("a", 0.9)]


# ---------------------------------------------------------------- zones and lines (tritonctl.stream.zones)


GEOMETRY = """\
    zones:
      - name: door
        polygon: [[0, 0], [10, 0], [10, 10]]
        anchor: center
    lines:
      - {name: entrance, points: [[0, 5], [10.5, 5]]}
"""


def test_zones_and_lines_load(tmp_path: Path) -> None:
    from tritonctl.stream.zones import Line, Zone

    source = load_pipeline(write(tmp_path, BASE + GEOMETRY)).sources[0]
    assert source.zones == (Zone("door", ((0, 0), (10, 0), (10, 10)), "center"),)
    assert source.lines == (Line("entrance", (0, 5), (10.5, 5)),)  # anchor defaults to bottom_center
    assert source.lines[0].anchor == "bottom_center"
    assert load_pipeline(write(tmp_path, BASE)).sources[0].zones == ()  # none by default


def test_example_zone_and_line_uncommented_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The commented example under the first source stays valid: uncomment it and load.
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("    # zones:"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("    # "))
    lines[start:end] = ["    " + ln.removeprefix("    # ") for ln in lines[start:end]]
    gate = load_pipeline(write(tmp_path, "\n".join(lines) + "\n")).sources[0]
    assert [z.name for z in gate.zones] == ["door"] and gate.zones[0].anchor == "bottom_center"
    assert [(ln.name, ln.a, ln.b) for ln in gate.lines] == [("entrance", (0, 360), (1280, 360))]


@pytest.mark.parametrize(("text", "line", "where", "message"), [
    ("    zones:\n      - name: z\n        polygon: [[0, 0], [1, 1]]\n", 8, "sources[0].zones[0].polygon",
     "a polygon needs at least 3 points, not 2"),
    ("    zones:\n      - name: z\n        polygon: [[0, 0], [1, 1], [2, 2]]\n", 8, "sources[0].zones[0].polygon",
     "the polygon has no area (its points lie on one line)"),
    ("    zones:\n      - name: z\n        polygon: [[0, 0], [1, 1, 1], [2, 0]]\n", 8, "sources[0].zones[0].polygon",
     "[1, 1, 1] is not a point: give [x, y]"),
    ("    zones:\n      - name: z\n        polygon: [[0, 0], [1, a], [2, 0]]\n", 8, "sources[0].zones[0].polygon[1][1]",
     "'a' is not a number"),
    ("    zones:\n      - {name: z, polygon: [[0, 0], [1, 0], [0, 1]], anchor: feet}\n", 7,
     "sources[0].zones[0].anchor", "'feet' is not one of bottom_center, center"),
    ("    zones:\n      - {name: z, polygon: [[0, 0], [1, 0], [0, 1]], anchr: center}\n", 7,
     "sources[0].zones[0].anchr", "unknown setting (did you mean anchor?)"),
    ("    zones:\n      - {name: z, polygon: [[0, 0], [1, 0], [0, 1]]}\n      - {name: z, polygon: [[0, 0], [1, 0], [0, 1]]}\n",
     8, "sources[0].zones[1].name", "zone name 'z' is already used by sources[0].zones[0].name (line 7)"),
    ("    lines:\n      - {name: l, points: [[3, 4], [3, 4]]}\n", 7, "sources[0].lines[0].points",
     "the line's two points are the same point"),
    ("    lines:\n      - {name: l, points: [[3, 4], [3, 5], [3, 6]]}\n", 7, "sources[0].lines[0].points",
     "a line needs exactly 2 points, not 3"),
    ("    lines:\n      - {name: l, points: [[3, .inf], [3, 5]]}\n", 7, "sources[0].lines[0].points[0][1]",
     "inf is not a finite number"),
    ("    lines:\n      - {name: l}\n", 7, "sources[0].lines[0].points", "is required but missing"),
    ("    lines:\n      - {name: l, points: [[0, 0], [1, 1]], polygon: [[0, 0], [1, 0], [0, 1]]}\n", 7,
     "sources[0].lines[0].polygon", "unknown setting here (polygon belongs under sources[0].zones[0])"),
    ("    lines:\n      - {name: l, points: [[0, 0], [1, 1]]}\n      - {name: l, points: [[0, 0], [1, 2]]}\n", 8,
     "sources[0].lines[1].name", "line name 'l' is already used by sources[0].lines[0].name (line 7)"),
    ("    lines: {name: l}\n", 6, "sources[0].lines", "a mapping is not a list"),
])
def test_zone_and_line_errors(tmp_path: Path, text: str, line: int, where: str, message: str) -> None:
    path = write(tmp_path, BASE + text)
    assert error(path) == f"{path}:{line}: {where}: {message}"


def test_zone_and_line_names_are_per_source(tmp_path: Path) -> None:
    # The same zone name in two sources, and a zone and a line sharing a name, are fine: each is its own JSON key.
    other = "  - name: b\n    uri: b.mp4\n" + GEOMETRY.replace("entrance", "door")
    p = load_pipeline(write(tmp_path, BASE + GEOMETRY + other))
    assert [z.name for s in p.sources for z in s.zones] == ["door", "door"]
    assert p.sources[1].lines[0].name == "door"


def test_stray_name_is_not_sent_to_zones(tmp_path: Path) -> None:
    # `name` is a zone's and a line's key too, but a stray one outside a source is no hint to put it there.
    path = write(tmp_path, BASE + "run:\n  name: x\n")
    assert error(path).startswith(f"{path}:7: run.name: unknown setting (known: ")


def test_changes_sees_edited_zones_and_lines(tmp_path: Path) -> None:
    first = load_pipeline(write(tmp_path, BASE + GEOMETRY))
    assert not changes(first, load_pipeline(write(tmp_path, BASE + GEOMETRY)))  # the same file: no change
    edits = (GEOMETRY.replace("[10, 10]", "[10, 11]"), GEOMETRY.replace("anchor: center", "anchor: bottom_center"),
             GEOMETRY.replace("10.5, 5", "10.5, 6"), GEOMETRY.replace("entrance", "exit"),
             GEOMETRY[:GEOMETRY.index("    lines")])  # a moved point, another anchor, a renamed or a removed line
    for edit in edits:
        diff = changes(first, load_pipeline(write(tmp_path, BASE + edit)))
        assert [s.name for s in diff.changed] == ["a"] and not diff.added and not diff.removed, edit
