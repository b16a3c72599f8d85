"""Whether a server is ready, and when it will not be, why: the model that failed to load, or the server's own
error line, read from its log."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from tritonctl.core.errors import ModelError, ServerError


def is_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.+)")
_BENIGN = ("CudaDriverHelper has not been initialized",)  # logged at every start on a host without a GPU
_TABLE_ROW = re.compile(r"^\|\s*([^|\s]+)\s*\|\s*(\d+)\s*\|\s*UNAVAILABLE: (.+?)\s*\|$")


def diagnose(log: str) -> str:
    """The model that failed and the server's own error line, or the server's last error line."""
    for line in log.splitlines():
        m = _LOAD_FAILURE.search(line) or _TABLE_ROW.search(line.strip())
        if m:
            return f"model '{m.group(1)}' (version {m.group(2)}) failed to load: {_first_line(m.group(3))}"
    errors = [ln for ln in log.splitlines() if re.match(r"^E\d{4}", ln) and not any(b in ln for b in _BENIGN)]
    if errors:
        return _first_line(errors[-1].split("] ", 1)[-1])
    tail = [ln for ln in log.splitlines() if ln.strip()]
    return tail[-1] if tail else "no log output"


def _first_line(message: str) -> str:
    """Triton logs a message in quotes with its newlines escaped; a Python backend's error carries the stub's
    traceback after "\\n\\nAt:". What the user needs is its first line, without the quotes."""
    text = message.replace("\\n", "\n").replace('\\"', '"')
    return text.split("\n", 1)[0].strip().strip('"').strip()


def wait_ready(url: str, timeout_s: float, alive: Callable[[], bool], log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_ready(url):
            return
        if not alive():
            text = log()
            raise ModelError(diagnose(text)) if "failed to load" in text or "UNAVAILABLE" in text \
                else ServerError(f"Triton exited before it was ready: {diagnose(text)}")
        time.sleep(0.25)
    raise ServerError(f"Triton was not ready at {url} after {timeout_s:.0f} s: {diagnose(log())} (raise --timeout?)")
