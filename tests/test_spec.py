"""The run spec (tritonctl.stream.spec): each option of `detect` declared once is a flag, a key of the pipeline
file's schema, and a setting; the flags given override the file, and both are checked against the same bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from tritonctl.cli import app
from tritonctl.core.errors import BadInput
from tritonctl.stream import pipeline_schema as schema
from tritonctl.stream.settings import DetectSettings, settings_from_flags
from tritonctl.stream.spec import OPTIONS, RunConfig, flags_given, run_section

CAMERA = "rtsp://127.0.0.1:8554/cam0"  # live: parsed without opening anything


def _flags() -> dict[str, Any]:
    command = typer.main.get_command(app).commands["detect"]  # type: ignore[attr-defined]
    return {name: param for param in command.params for name in [*param.opts, *param.secondary_opts]}


def _keys(model: type[Any]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_every_option_is_a_flag_with_its_help() -> None:
    flags = _flags()
    for o in OPTIONS:
        for name in [*o.how.flag.split("/"), *([o.how.short] if o.how.short else [])]:
            assert name in flags, name
            assert flags[name].help == o.how.help and flags[name].name == o.name
    assert {p.name for p in set(flags.values())} == {o.name for o in OPTIONS} | {"sources", "config"}


def test_every_file_option_is_in_the_pipeline_files_schema() -> None:
    sections = {"run": _keys(schema._Run), "defaults": _keys(schema._Defaults), "": _keys(schema._File)}
    for o in OPTIONS:
        if o.how.file:
            section, _, key = o.how.file.rpartition(".")
            assert key in sections[section], o.how.file
            assert not o.how.per_source or section == "defaults", o.name  # a source's entry takes the defaults' keys
    assert sections["run"] == {o.how.run_key for o in run_section()}  # the run: section is the spec's, nothing else


def test_an_empty_run_section_gives_the_flags_defaults(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(f"model: m\nsources: [{{uri: '{CAMERA}'}}]\n")
    from_file = settings_from_flags(config, [], {})
    from_flags = settings_from_flags(None, [CAMERA], {"model": "m"})
    for o in OPTIONS:
        assert getattr(from_file, o.name) == getattr(from_flags, o.name), o.name
    assert RunConfig() == RunConfig(**{o.how.run_key: o.file_default for o in run_section() if o.how.run_key})


@pytest.mark.parametrize(("key", "text", "flag", "value", "setting"), [
    ("stall_timeout", "2", "stall_timeout_s", 7.0, 7.0),
    ("batch_timeout_ms", "20", "batch_timeout_s", 0.005, 0.005),
    ("shm", "none", "shm", "auto", "auto"),
    ("reconnects", "1", "reconnects", 9, 9),
])
def test_a_flag_given_overrides_the_files_value(tmp_path: Path, key: str, text: str, flag: str, value: Any,
                                                setting: Any) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(f"model: m\nrun: {{{key}: {text}}}\nsources: [{{uri: '{CAMERA}'}}]\n")
    from_file = settings_from_flags(config, [], {flag: None})
    assert getattr(from_file, flag) != setting
    assert getattr(settings_from_flags(config, [], {flag: value}), flag) == setting


def test_flags_are_taken_in_the_settings_units() -> None:
    flags = flags_given({"batch_timeout_s": 20.0, "classes": "0,2", "sinks": [], "urls": ["h:1"], "show": None})
    assert (flags["batch_timeout_s"], flags["classes"], flags["sinks"], flags["urls"]) == (0.02, (0, 2), None, ["h:1"])
    assert flags["show"] is None  # not given


@pytest.mark.parametrize(("flags", "message"), [
    ({"stall_timeout_s": 0}, "--stall-timeout must be positive and --reconnects at least 0"),
    ({"reconnects": -1}, "--stall-timeout must be positive and --reconnects at least 0"),
    ({"batch": 0}, "--batch, --vid-stride and the queue size must be at least 1"),
    ({"shm": "cuda"}, "--shm 'cuda': choose auto, system or none"),
    ({"concurrency": 0}, "--concurrency must be at least 1"),
    ({"batch_timeout_s": -0.001}, "--batch-timeout-ms must be 0 or more"),
])
def test_bounds_are_checked_on_the_settings(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("-", r"\-").replace("(", r"\(")):
        DetectSettings.create(sources=[CAMERA], urls=[], model="m", **flags)
