"""Shared fixtures: a model repository built in the session and the real local Triton server serving it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from onnx_models import tiny_detector

ROOT = Path(__file__).resolve().parents[1]
TRITONCTL = [sys.executable, "-m", "tritonctl.cli"]


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_cli(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `tritonctl` as a user would: a real process, its exit code, its stdout and stderr."""
    return subprocess.run([*TRITONCTL, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("state")
    old = os.environ.get("TRITONCTL_STATE_DIR")
    os.environ["TRITONCTL_STATE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TRITONCTL_STATE_DIR", None)
    else:
        os.environ["TRITONCTL_STATE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_detector(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Path:
    from tritonctl.repository import ConfigSettings, write_model

    repo = tmp_path_factory.mktemp("repo")
    write_model(ConfigSettings.create(name="tiny", model_file=tiny_onnx, repo=repo, max_batch=8, preferred_batch=(4,),
                                      queue_delay_us=20000))  # long enough that concurrent requests batch
    return repo


@dataclass
class Triton:
    url: str
    grpc_url: str
    repo: Path
    server: object


@pytest.fixture(scope="session")
def triton(tiny_repo: Path) -> Iterator[Triton]:
    """The real local Triton (bundled tritonserver, Python backend, ONNX Runtime) on free ports."""
    from tritonctl.server import ServeSettings, start_local

    http, grpc, metrics = free_ports(3)
    settings = ServeSettings.create(runtime="local", repo=tiny_repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                    timeout_s=120)
    server = start_local(settings)
    yield Triton(settings.url, f"127.0.0.1:{grpc}", tiny_repo, server)
    server.stop()
