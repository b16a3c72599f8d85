"""The one place consoles are made: Rich assumes 80 columns when output is not a terminal (CI logs, pipes, `make demo`
through a pager), which squeezes the tables; there we use the width the environment gives, at least 140."""

from __future__ import annotations

import shutil
import sys
from typing import Any


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=max(140, shutil.get_terminal_size((140, 24)).columns))
