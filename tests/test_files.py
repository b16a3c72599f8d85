"""Outputs never damage what a name already holds: only regular files are replaced by rename (files.py)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from conftest import read_fifo

from tritonctl.core.errors import BadInput
from tritonctl.core.files import LinesFile, check_file_target, commit, partial_path, write_text


def test_a_fifo_and_a_link_to_one_are_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "lines"
    os.mkfifo(fifo)
    link = tmp_path / "link.jsonl"
    link.symlink_to(fifo)
    for name in (fifo, link):
        got: list[str] = []
        reader = read_fifo(fifo, got)
        out = LinesFile(name)
        for i in range(3):
            out.write(f'{{"frame": {i}}}\n')
        out.close()
        reader.join(5)
        assert got == ['{"frame": 0}', '{"frame": 1}', '{"frame": 2}']
        assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines", "link.jsonl"]  # no partial file beside them


def test_a_link_to_a_file_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real" / "d.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "d.jsonl"
    link.symlink_to(real)
    out = LinesFile(link)
    out.write("new\n")
    assert partial_path(link).parent == real.parent  # staged beside the file it replaces: one file system
    out.close()
    assert link.is_symlink() and real.read_text() == "new\n"
    write_text(link, "again\n")
    assert link.is_symlink() and real.read_text() == "again\n"


def test_what_a_rename_would_damage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is a device"):
        check_file_target("--output", Path("/dev/null"), streams=False)
    check_file_target("--json", Path("/dev/null"), streams=True)  # text: written in place
    with pytest.raises(BadInput, match="not a stream of text"):
        check_file_target("--output", Path("-"), streams=False)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    try:
        with pytest.raises(BadInput, match="is a socket"):
            check_file_target("--output", tmp_path / "s", streams=False)
    finally:
        sock.close()
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    tmp = tmp_path / "tmp"
    tmp.write_text("x")
    with pytest.raises(BadInput, match="not a regular file"):
        commit(tmp, fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not tmp.exists()


def test_write_text_makes_its_folder_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "s.json"
    write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert [p.name for p in target.parent.iterdir()] == ["s.json"]
