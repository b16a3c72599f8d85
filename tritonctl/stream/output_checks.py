"""The checks `detect` makes on its outputs before anything runs: no output replaces a source or another output, none
is a folder where a file goes (or the reverse), every one can be written. A user's input is never overwritten."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from tritonctl.core.errors import BadInput
from tritonctl.core.files import check_file_target, is_stdout, is_stream, partial_path
from tritonctl.outputs.sinks import image_names
from tritonctl.sources.video import SourceSpec


class PlannedOutputs(Protocol):
    """What the checks read of a run's settings (DetectSettings has it): the sources and every output named."""

    @property
    def sources(self) -> list[SourceSpec]: ...

    @property
    def output(self) -> Path | None: ...

    @property
    def json_path(self) -> Path | None: ...

    @property
    def summary_json(self) -> Path | None: ...

    def output_targets(self) -> dict[int, Path]: ...

    def source_outputs(self) -> list[tuple[str, Path]]: ...


_EXAMPLE_NAMES = {"--output": "out.mp4", "--json": "detections.jsonl", "--summary-json": "summary.json",
                  "outputs.video": "out.mp4", "outputs.json": "detections.jsonl"}


def check_outputs(s: PlannedOutputs) -> None:
    """Refuse, before anything runs, an output that would replace a source or another output, that is a folder where
    a file goes (or a file where a folder goes), or that OpenCV could not write: a user's input is never overwritten."""
    inputs = {key: uri for src in s.sources for path, uri in _source_files(src) for key in _file_keys(path)}
    taken: dict[object, str] = {}
    for flag, path, folder in _planned_files(s):
        if folder is None:
            check_writable(flag, path)
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


def _check_outside_inputs(s: PlannedOutputs) -> None:
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


def _planned_files(s: PlannedOutputs) -> list[tuple[str, Path, Path | None]]:
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


def check_writable(flag: str, path: Path) -> None:
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
