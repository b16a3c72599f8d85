"""The local Triton runtime: the real `tritonserver` that the nvidia-pytriton wheel bundles, run on the CPU.

Facts this module encodes (design.md): the binary needs libpython's folder on LD_LIBRARY_PATH; the Python
backend needs the stub built for the running Python copied next to libtriton_python.so; the stub's embedded
interpreter ignores PYTHONPATH, so the model shim reads TRITONCTL_SITE_PACKAGES, which we set here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tritonctl.core.errors import ToolMissing
from tritonctl.core.extras import install_hint

SITE_ENV = "TRITONCTL_SITE_PACKAGES"


@dataclass(frozen=True)
class LocalRuntime:
    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        return self.root / "backends"

    def env(self) -> dict[str, str]:
        """The environment the server (and the Python backend stubs it spawns) must run with."""
        env = dict(os.environ)
        libdirs = [str(sysconfig.get_config_var("LIBDIR") or ""), str(self.root / "external_libs")]
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
        env[SITE_ENV] = os.pathsep.join(site_packages())
        return env


def site_packages() -> list[str]:
    """This environment's package folders, plus the folder holding tritonctl itself (an editable install)."""
    paths = [*site.getsitepackages(), str(Path(__file__).resolve().parents[2])]  # <root>/tritonctl/serving/runtime.py
    return list(dict.fromkeys(p for p in paths if Path(p).is_dir()))


def find_local_runtime() -> LocalRuntime:
    from tritonctl.core.extras import require

    require("local", "the local Triton runtime (serve --runtime local)")
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ToolMissing(f"the local Triton runtime is not installed: {install_hint('local')}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    runtime = LocalRuntime(root)
    if not runtime.binary.is_file():
        raise ToolMissing(f"nvidia-pytriton has no tritonserver binary at {runtime.binary}: reinstall it with `make setup`")
    _install_python_stub(runtime)
    return runtime


def _install_python_stub(runtime: LocalRuntime) -> None:
    """Put the stub for this Python next to the Python backend (once; later calls find it in place)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = runtime.root / "python_backend_stubs" / version / "triton_python_backend_stub"
    dst = runtime.backend_dir / "python" / "triton_python_backend_stub"
    if dst.is_file() and dst.stat().st_size == src.stat().st_size:
        return
    if not src.is_file():
        raise ToolMissing(f"nvidia-pytriton ships no Python backend stub for Python {version}: use Python 3.8-3.13")
    tmp = dst.with_suffix(".tmp")
    shutil.copy2(src, tmp)
    tmp.replace(dst)
