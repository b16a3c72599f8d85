"""The local runtime: the bundled tritonserver is found and made runnable."""

from __future__ import annotations

import subprocess

from tritonctl.serving.runtime import SITE_ENV, find_local_runtime


def test_local_runtime_is_runnable() -> None:
    rt = find_local_runtime()
    assert (rt.backend_dir / "python" / "triton_python_backend_stub").is_file()
    env = rt.env()
    assert env[SITE_ENV] and rt.binary.parent.parent == rt.root
    result = subprocess.run([str(rt.binary), "--help"], capture_output=True, text=True, env=env, timeout=30)
    assert "--model-repository" in result.stdout + result.stderr


def test_site_packages_hold_onnxruntime() -> None:
    """The model shim can only import ONNX Runtime if this environment's site-packages are on its path."""
    from pathlib import Path

    env = find_local_runtime().env()
    assert any((Path(p) / "onnxruntime").is_dir() for p in env[SITE_ENV].split(":"))
