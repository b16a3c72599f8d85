"""The command line itself: fast help, only working commands registered."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from tritonctl.cli import app; "
            "heavy = [m for m in ('torch', 'ultralytics', 'onnxruntime', 'cv2', 'docker', 'tritonclient') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_help_lists_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "tritonctl.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for cmd in ("serve", "status", "stop", "config"):
        assert cmd in result.stdout
