"""What stopping a server did, told as it was: in time or forced, what had to be killed, what was cleaned up, and
what the server's own log and exit status said about its shutdown."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

from tritonctl.serving.leftovers import SHM_DIR

EXIT_TIMEOUT_S = 10  # Triton's own --exit-timeout-secs: how long it waits for in-flight requests after SIGTERM


@dataclass(frozen=True)
class StopResult:
    """How a stop went, told as it was: in time, or forced (and what had to be killed), and what was cleaned up."""

    found: bool  # the server (tritonserver, the container) was still running
    seconds: float = 0.0
    killed: tuple[str, ...] = ()  # processes that needed SIGKILL
    left: tuple[str, ...] = ()  # processes that survived even SIGKILL (should never happen)
    regions_removed: int = 0  # shared-memory regions the server had left in /dev/shm
    notes: tuple[str, ...] = ()  # what Triton's log or exit status said about its shutdown
    exit_code: int | None = None  # tritonserver's (negative: the signal that ended it), when we can know it

    @property
    def forced(self) -> bool:
        return bool(self.killed)

    def describe(self) -> str:
        """`stopped in 1.2 s`, `stopped (forced after 15.0 s: SIGKILL to …)`, `already gone`, with what else happened."""
        if not self.found:
            parts = [f"SIGKILL to what it left running: {', '.join(self.killed)}"] if self.killed else []
        else:
            parts = [f"forced after {self.seconds:.1f} s: SIGKILL to {', '.join(self.killed)}"] if self.killed else []
        parts.extend(self.notes)
        if self.left:
            parts.append(f"still running after SIGKILL: {', '.join(self.left)}")
        if self.regions_removed:
            parts.append(f"removed {self.regions_removed} shared-memory region(s) it left in {SHM_DIR}")
        head = "already gone" if not self.found else "stopped" if self.killed else f"stopped in {self.seconds:.1f} s"
        return head + (f" ({'; '.join(parts)})" if parts else "")


def _shutdown_notes(log_tail: str, exit_code: int | None, killed: bool) -> tuple[str, ...]:
    """What the server's own log (written after our SIGTERM) and its exit status say about how it ended."""
    notes = []
    timed_out = "Exit timeout expired" in log_tail
    if timed_out:
        # Triton waits for clients' open (keep-alive) connections too, e.g. a `detect` still streaming
        conns = re.findall(r"Found (\d+) (HTTP|GRPC|gRPC) service connections", log_tail)
        waited_for = f"{conns[-1][0]} open {conns[-1][1]} client connections" if conns else "requests in flight"
        notes.append(f"Triton's {EXIT_TIMEOUT_S} s exit timeout expired waiting for {waited_for}")
    # Triton logs "Signal (N) received." for our SIGTERM too; any other signal is a crash on the way out.
    crash = next((n for n in re.findall(r"Signal \((\d+)\) received", log_tail) if int(n) not in (2, 15)), None)
    if crash:
        notes.append(f"tritonserver crashed while exiting (signal {crash})")
    elif exit_code is not None and exit_code < 0 and not killed:
        notes.append(f"tritonserver ended by {signal.Signals(-exit_code).name}")
    elif exit_code is not None and exit_code > 0 and not timed_out:
        notes.append(f"tritonserver exited with code {exit_code}")
    return tuple(notes)


@dataclass(frozen=True)
class LogMark:
    """Where a server's log stood when it was asked to stop: what it wrote after that says how the stop went."""

    path: Path | None
    offset: int

    @classmethod
    def now(cls, path: Path | None) -> LogMark:
        return cls(path, _log_size(path))

    def notes(self, exit_code: int | None, killed: bool) -> tuple[str, ...]:
        return _shutdown_notes(_log_since(self.path, self.offset), exit_code, killed)


def _log_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def _log_since(path: Path | None, offset: int) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""
