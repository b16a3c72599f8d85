"""Writing an output without damaging what is already there: the one rule every command follows.

A file is written under a temporary name beside its final one and renamed into place when complete, so a finished name
is never partial. A rename replaces whatever the name held, so only a regular file (or nothing) is ever replaced that
way: a symlink to a regular file is written through (the file it points at is replaced; the link stays), and a name that
is not a regular file (a device such as /dev/stdout, a FIFO, a socket, or a symlink to one) is either written in place,
where a stream of text is what the user asked for (`--json /dev/stdout`, `--json -`, a named pipe), or refused in one
line. Renaming onto /dev/stdout as root replaces the device node for the whole machine: that is what this prevents.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tritonctl.core.errors import BadInput

STDOUT = Path("-")  # `--json -`: the data goes to standard output, everything else to standard error


def partial_path(path: Path) -> Path:
    """Where a file is written until it is complete (beside the file that `path` names, links followed)."""
    real = landing(path)
    return real.with_name(f".{real.stem}.partial{real.suffix}")


def is_stdout(path: Path) -> bool:
    """`-`, or a name for this process's own standard output (/dev/stdout, /proc/self/fd/1)."""
    return str(path) == "-" or (is_stream(path) and _same_as_stdout(path))


def _same_as_stdout(path: Path) -> bool:
    try:
        return os.path.samestat(path.stat(), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # ValueError: stdout replaced by something without a descriptor
        return False


def is_stream(path: Path) -> bool:
    """`-`, or a name that exists (links followed) and is a character device, a FIFO or a socket: written in place."""
    if str(path) == "-":
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def landing(path: Path) -> Path:
    """The name a rename replaces: the regular file a symlink points at (the link stays), else the name itself."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_file_target(flag: str, path: Path, streams: bool) -> None:
    """Refuse, before anything runs, a name that a rename would damage: anything that exists and is neither a regular
    file nor (when `streams`: the output is text the user may pipe) a device, FIFO or socket."""
    if is_stdout(path):
        if not streams:
            raise BadInput(f"{flag} -: this output is not a stream of text; name a file")
        return
    if streams and is_stream(path):
        return
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # to be made; the caller checks its folder
        return
    except OSError as exc:
        raise BadInput(f"cannot write {flag} {path} ({exc.strerror})") from exc
    if stat.S_ISDIR(mode):
        raise BadInput(f"{flag} {path} is a folder: give a file name")
    if not stat.S_ISREG(mode):
        what = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        tail = "" if streams else "; this output needs a regular file it can seek in"
        raise BadInput(f"{flag} {path} is {what}: it would be replaced; name a regular file{tail}")


def commit(tmp: Path, path: Path) -> Path:
    """Rename a complete temporary file onto `path` (onto the file a link names); refuses a non-regular target."""
    target = landing(path)
    if target.exists() and not target.is_file():
        tmp.unlink(missing_ok=True)
        raise BadInput(f"{path} is not a regular file: it would be replaced; name a regular file")
    os.replace(tmp, target)
    return path


def write_text(path: Path, text: str, streams: bool = True) -> Path:
    """The whole of `text` at `path`: in place on a stream (`-`, a FIFO, a device), else by temporary file and rename."""
    if streams and is_stream(path):
        with open_stream(path) as f:
            f.write(text)
        return path
    target = landing(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        commit(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def open_stream(path: Path) -> Iterator[IO[str]]:
    """A text stream written in place: standard output for `-` (left open), else the device or FIFO itself."""
    if is_stdout(path):
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(path, "w") as f:
        yield f


class LinesFile:
    """A file of lines written as they come: on a stream, straight through (line-buffered, so `| jq` sees each line as
    it is written); on a regular file, into a temporary file renamed into place by close()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.streaming = is_stream(path)
        self.tmp: Path | None = None
        if is_stdout(path):
            self.file: IO[str] = sys.stdout
        elif self.streaming:
            self.file = open(path, "w", buffering=1)  # noqa: SIM115 - closed in close()
        else:
            self.tmp = partial_path(path)
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.tmp, "w")  # noqa: SIM115 - closed in close(), also on Ctrl-C

    def write(self, line: str) -> None:
        self.file.write(line)
        if self.file is sys.stdout:
            self.file.flush()

    def close(self) -> None:
        self._release()
        if self.tmp is not None:
            commit(self.tmp, self.path)

    def discard(self) -> None:
        self._release()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def _release(self) -> None:
        if self.file is sys.stdout:
            with contextlib.suppress(BrokenPipeError):
                self.file.flush()
        else:
            self.file.close()
