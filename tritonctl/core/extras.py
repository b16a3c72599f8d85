"""Optional parts of tritonctl (pip extras): a command that needs a missing one says which, in one line.

The core (serve, status, stop, config, detect, benchmark) needs neither torch nor Ultralytics; `export` needs the
`export` extra and `serve --runtime local` the `local` extra.
"""

from __future__ import annotations

import importlib.util

from tritonctl.core.errors import ToolMissing

EXTRAS = {
    "export": ("ultralytics", "torch", "onnxruntime", "onnxslim"),
    "local": ("pytriton", "onnxruntime"),
}


def install_hint(extra: str) -> str:
    """An install that works: tritonctl is not on PyPI (yet), so from a checkout, or the wheel `make wheel` builds."""
    return f"in a tritonctl checkout, pip install '.[{extra}]' (or `make setup`)"


def require(extra: str, purpose: str) -> None:
    """Raise ToolMissing naming the extra when any of its top-level modules cannot be imported."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise ToolMissing(f"{purpose} needs the [{extra}] extra ({', '.join(missing)} missing): "
                          f"{install_hint(extra)}")
