"""The one place consoles are made: Rich assumes 80 columns when output is not a terminal (CI logs, pipes, `make demo`
through a pager), which squeezes the tables; there we use the width the environment gives, at least 140."""

from __future__ import annotations

import shutil
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

_made: weakref.WeakSet[Any] = weakref.WeakSet()
_stdout_claimed = False


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    stderr = stderr or _stdout_claimed
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        made = Console(stderr=stderr)
    else:
        made = Console(stderr=stderr, width=max(140, shutil.get_terminal_size((140, 24)).columns))
    _made.add(made)
    return made


def claim_stdout() -> None:
    """Standard output carries data (`--json -`): every console, made before or after, writes to standard error, so
    `tritonctl detect … --json - | jq` reads nothing but JSON Lines."""
    global _stdout_claimed
    _stdout_claimed = True
    for made in list(_made):
        made.stderr = True


class LiveBars:
    """Rich progress bars, on a terminal only, refreshed from a background thread 4 times a second:
    `refresh(bars, elapsed_s)` adds its tasks when it first sees them and updates their counts (a rate field, "rate")."""

    def __init__(self, console: Any, refresh: Callable[[Any, float], None]) -> None:
        self.console, self.refresh = console, refresh
        self.bars: Any = None
        self._stop = threading.Event()

    def __enter__(self) -> LiveBars:
        if self.console is None or not self.console.is_terminal:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=self.console, transient=True)
        self.bars.start()
        threading.Thread(target=self._update, daemon=True).start()
        return self

    def _update(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(0.25):
            self.refresh(self.bars, time.perf_counter() - t0)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.bars is not None:
            self.bars.stop()
