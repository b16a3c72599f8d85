"""The wheel as users install it: the light core in a clean virtual environment, without torch or Ultralytics."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, free_ports

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the tritonctl wheel and its core dependencies (versions from requirements.lock)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(["make", "-s", "-C", str(ROOT), "wheel", f"DIST={tmp / 'dist'}", f"PYTHON={sys.executable}"],
                   check=True, capture_output=True)  # the wheel the README tells users to build
    [wheel] = (tmp / "dist").glob("tritonctl-*.whl")
    venv.EnvBuilder(with_pip=True).create(tmp / "venv")
    pip = [str(tmp / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(ROOT / "requirements.lock"), str(wheel)], check=True, capture_output=True)
    return tmp / "venv" / "bin"


def _run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "tritonctl"), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd=bin_dir)


def test_core_install_is_light_and_runs(core_env: Path) -> None:
    from tritonctl import __version__

    version = _run(core_env, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"tritonctl {__version__}", version
    assert _run(core_env, "--help").returncode == 0
    for heavy in ("torch", "ultralytics", "pytriton", "onnxruntime"):
        probe = subprocess.run([str(core_env / "python"), "-c", f"import {heavy}"], capture_output=True)
        assert probe.returncode != 0, f"{heavy} is installed with the core"


def test_missing_extra_is_one_line(core_env: Path, tmp_path: Path) -> None:
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not needed: the extra is checked first")
    result = _run(core_env, "export", "--model-path", str(pt), "--out-dir", str(tmp_path / "out"))
    assert_one_line_error(result, 3, "[export]", "pip install '.[export]'")  # tritonctl is not on PyPI
    repo = tmp_path / "repo" / "m"
    repo.mkdir(parents=True)
    ports = [str(p) for p in free_ports(3)]
    result = _run(core_env, "serve", "--repo", str(repo.parent), "--http-port", ports[0], "--grpc-port", ports[1],
                  "--metrics-port", ports[2])
    assert_one_line_error(result, 3, "[local]", "pip install '.[local]'")
