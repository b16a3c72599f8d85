"""Child processes tritonctl starts (tritonserver, trtexec, perf_analyzer), and how they end. Containers: containers.py.

Every child runs in its own process group and carries a marker in its environment (`TRITONCTL_PROC_ID`), which
its own children inherit (Triton's Python backend stubs included). Ending a child means: SIGTERM to its group,
wait, then SIGKILL to whatever of the group or the marker is still alive, so nothing it started outlives it.
Signals that arrive while we end a child are held back until it is done, so a second Ctrl-C cannot cut the
cleanup in half; it only skips the rest of the grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tritonctl.core.errors import ToolMissing

MARK_ENV = "TRITONCTL_PROC_ID"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


class StopRequested(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP, SIGINT) arrived. A KeyboardInterrupt, so every Ctrl-C path also handles it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


# ---------------------------------------------------------------- what /proc says


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): [state, ppid, pgrp, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def alive(pid: int) -> bool:
    """Running (a zombie has finished: it only waits for its parent to read its exit status)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def pgrp(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def environ(pid: int) -> dict[str, str] | None:
    """A process's environment; None when it is gone or not ours to read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def describe(pid: int) -> str:
    args = cmdline(pid)
    return f"{Path(args[0]).name if args else '?'} (pid {pid})"


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def marked(key: str, value: str | None = None) -> dict[int, str]:
    """Running processes whose environment holds `key` (equal to `value` when given): pid -> its value."""
    me = os.getpid()
    found = {}
    for pid in _pids():
        if pid == me or not alive(pid):
            continue
        v = (environ(pid) or {}).get(key)
        if v is not None and (value is None or v == value):
            found[pid] = v
    return found


def group_members(pgid: int) -> list[int]:
    return [pid for pid in _pids() if pgrp(pid) == pgid and alive(pid)]


# ---------------------------------------------------------------- starting


def new_mark() -> str:
    return uuid.uuid4().hex[:16]


def _parent_death_hook() -> Callable[[], None] | None:
    """Runs in the child before exec: SIGTERM it when we die, even by SIGKILL (Linux only)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child between fork and exec does little
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # we died before the hook was set
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


@dataclass
class Child:
    """A process we started, in its own group (pgid == pid), with its marker."""

    popen: subprocess.Popen[Any]
    mark: str
    name: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        """True once the child has exited, without reaping it: while it is a zombie its group id cannot be reused,
        so signalling the group stays safe."""
        if self.popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def alive(self) -> bool:
        return not self.exited()

    def members(self) -> set[int]:
        """Every live process of this child: its group, and anything carrying its marker (even if it left the group)."""
        pids = set(marked(MARK_ENV, self.mark))
        if self.popen.returncode is None:  # not reaped: the group id is still ours
            pids.update(group_members(self.pid))
        return pids

    def stop(self, timeout_s: float, settle_s: float = 2.0) -> Ended:
        return terminate(self, timeout_s, settle_s)


def spawn(command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
          stdout: IO[Any] | int | None = None, die_with_parent: bool = True, mark: str | None = None) -> Child:
    """Start `command` in a new session (its own process group, out of reach of the terminal's Ctrl-C, which we
    forward ourselves). `die_with_parent`: SIGTERM it if this process dies without stopping it (not for servers
    that must outlive us, `serve --detach`)."""
    mark = mark or new_mark()
    full_env = {**(os.environ if env is None else env), MARK_ENV: mark}
    try:
        popen = subprocess.Popen(command, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_parent_death_hook() if die_with_parent else None)
    except FileNotFoundError as exc:
        raise ToolMissing(f"{command[0]} is not installed (or not on PATH)") from exc
    except OSError as exc:  # not executable, wrong format
        raise ToolMissing(f"{command[0]} cannot be run: {exc.strerror}") from exc
    return Child(popen, mark, Path(command[0]).name)


# ---------------------------------------------------------------- signals


_HURRY = threading.Event()  # set by a signal that arrives while we end a child: skip the rest of the grace period


@contextlib.contextmanager
def stop_on_signals(signums: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Inside, the first stop signal raises StopRequested in the main thread; later ones only hurry the cleanup
    (SIGKILL instead of the rest of the grace period). Outside the main thread this does nothing."""
    raised = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal raised
        if raised:
            _HURRY.set()
            return
        raised = True
        raise StopRequested(signum)

    try:
        with _handlers(signums, handler):
            yield
    finally:
        _HURRY.clear()


@contextlib.contextmanager
def signals_deferred(signums: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Hold stop signals back while a cleanup runs; deliver them to the previous handlers afterwards."""
    pending: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        pending.append(signum)
        _HURRY.set()

    with _handlers(signums, handler) as installed:
        yield
    if installed:
        _HURRY.clear()
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


@contextlib.contextmanager
def _handlers(signums: Iterable[int], handler: Callable[[int, Any], None]) -> Iterator[bool]:
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- ending


@dataclass(frozen=True)
class Ended:
    """How a child ended when we stopped it."""

    found: bool  # the leader was still running
    seconds: float
    exit_code: int | None  # the leader's; negative: killed by that signal
    killed: tuple[str, ...] = ()  # what needed SIGKILL, e.g. "triton_python_backend_stub (pid 812)"
    left: tuple[str, ...] = ()  # what even SIGKILL did not end in time (should stay empty)

    @property
    def forced(self) -> bool:
        return bool(self.killed)


def _wait(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline or _HURRY.is_set():
            return condition()
        time.sleep(step_s)
    return True


def terminate(child: Child, timeout_s: float, settle_s: float = 2.0) -> Ended:
    """SIGTERM to the group; wait up to timeout_s for the leader, then up to settle_s for the rest of the group
    (children that ignore SIGTERM and end when their parent tells them, like Triton's stubs); SIGKILL the rest."""
    t0 = time.monotonic()
    with signals_deferred():
        found = child.alive()
        if found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
            _wait(child.exited, timeout_s)
        _wait(lambda: not (child.members() - {child.pid}), settle_s)
        killed, left = kill_members(child.members, group=None if child.popen.returncode is not None else child.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=5)
    return Ended(found, time.monotonic() - t0, child.popen.returncode, killed, left)


def kill_all(pids: Iterable[int], wait_s: float = 5.0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SIGKILL these processes and wait until they are gone. Returns (what was killed, what is still there)."""
    targets = set(pids)
    return kill_members(lambda: targets, wait_s=wait_s)


def kill_members(members: Callable[[], set[int]], group: int | None = None,
                 wait_s: float = 5.0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SIGKILL `members()` (and the group, while its id is known to be ours) until none is left: asked again after
    each round, since a member may have started another one (a shell loop, Triton starting a stub) meanwhile.
    Returns (what was killed, what is still there after wait_s)."""
    killed: dict[int, str] = {}
    deadline = time.monotonic() + wait_s
    while True:
        current = [pid for pid in members() if alive(pid)]
        if not current or time.monotonic() > deadline:
            break
        for pid in current:
            killed.setdefault(pid, describe(pid))
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for pid in current:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    left = tuple(describe(pid) for pid in members() if alive(pid))
    return tuple(killed.values()), left


def terminate_members(members: Callable[[], set[int]], leader: int | None, timeout_s: float,
                      settle_s: float = 2.0) -> Ended:
    """Stop processes that are not our children (a detached server), found by `members()` (its marker): SIGTERM
    to the leader's group, wait for the leader, then for the rest, then SIGKILL whatever `members()` still holds."""
    t0 = time.monotonic()
    with signals_deferred():
        found = leader is not None and leader in members()
        if found and leader is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # checked while the leader runs: a group led by it is its own, not one that reuses its number
                if pgrp(leader) == leader:
                    os.killpg(leader, signal.SIGTERM)
                else:
                    os.kill(leader, signal.SIGTERM)
            _wait(lambda: not alive(leader), timeout_s)
        _wait(lambda: not members(), settle_s)
        killed, left = kill_members(members)
    return Ended(found, time.monotonic() - t0, None, killed, left)


# ---------------------------------------------------------------- running to completion, output streamed


@dataclass
class Finished:
    exit_code: int | None  # None: it ran past its timeout and was stopped
    lines: list[str] = field(default_factory=list)


def run(command: list[str], on_line: Callable[[str], None] | None = None, *, log_file: Path | None = None,
        cwd: Path | None = None, env: dict[str, str] | None = None, timeout_s: float | None = None,
        keep_lines: bool = False, stop_timeout_s: float = 5.0) -> Finished:
    """Run a tool to completion: each output line to `on_line` (in this thread) and to `log_file` as it comes.
    Interrupted (Ctrl-C, an exception, the timeout), the tool's whole process group is ended before we return."""
    child = spawn(command, env=env, cwd=cwd, stdout=subprocess.PIPE)
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    reader = threading.Thread(target=_pump, args=(child.popen.stdout, lines), daemon=True)
    reader.start()
    kept: list[str] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        with open(log_file, "w") if log_file else contextlib.nullcontext() as log:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    child.stop(stop_timeout_s)
                    return Finished(None, kept)
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    break
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                if keep_lines:
                    kept.append(line)
                if on_line is not None:
                    on_line(line)
        child.popen.wait()
        ended = child.stop(stop_timeout_s, settle_s=0.5)  # anything it left running in its group
        return Finished(ended.exit_code if ended.exit_code is not None else child.popen.returncode, kept)
    except BaseException:
        child.stop(stop_timeout_s)
        raise
    finally:
        if child.popen.stdout is not None:
            child.popen.stdout.close()


def _pump(stream: IO[bytes] | None, lines: queue.SimpleQueue[str | None]) -> None:
    if stream is None:
        lines.put(None)
        return
    try:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    except (OSError, ValueError):  # closed under us once the run was stopped
        pass
    finally:
        lines.put(None)


def follow_file(path: Path, running: Callable[[], bool], on_line: Callable[[str], None], poll_s: float = 0.2,
                from_end: bool = True) -> None:
    """Show a log file line by line while `running()`; then the lines written before it stopped."""
    with open(path, errors="replace") as log:
        if from_end:
            log.seek(0, os.SEEK_END)
        pending = ""
        while True:
            still = running()  # asked before reading, so the last lines are never lost
            chunk = log.read()
            if chunk:
                pending += chunk
                *complete, pending = pending.split("\n")
                for line in complete:
                    on_line(line.rstrip("\r"))
            if not still:
                if pending:
                    on_line(pending)
                return
            if not chunk:
                time.sleep(poll_s)
