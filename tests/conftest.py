"""Shared fixtures: a model repository built in the session and the real local Triton server serving it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
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


def read_fifo(path: Path, into: list[str]) -> threading.Thread:
    """A reader on its own thread: a FIFO's writer blocks until someone opens the other end."""
    def read() -> None:
        with open(path) as f:
            into.extend(f.read().splitlines())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Bad input: the exit code asked for, one line on stderr naming the problem, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


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
    from tritonctl.model.repository import ConfigSettings, write_model

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
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings

    http, grpc, metrics = free_ports(3)
    settings = ServeSettings.create(runtime="local", repo=tiny_repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                    timeout_s=120)
    server = start_local(settings)
    yield Triton(settings.url, f"127.0.0.1:{grpc}", tiny_repo, server)
    server.stop()


# ---------------------------------------------------------------- the demo model, exported and served

DEMO_PT = ROOT / "models" / "shapes-yolov8n.pt"


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed demo checkpoint exported once per session (FP32 and FP16 ONNX, parity checked)."""
    from tritonctl.model.export import ExportSettings, export

    assert DEMO_PT.is_file(), f"{DEMO_PT} is missing: run scripts/train_demo_model.py"
    out = tmp_path_factory.mktemp("export")
    result = export(ExportSettings.create(model_path=DEMO_PT, out_dir=out))
    assert result.parity is not None and result.parity.passed, result.parity.failures
    return out


def build_demo_repo(repo: Path, export_dir: Path) -> Path:
    from onnx_models import classifier

    from tritonctl.model.repository import ConfigSettings, write_model

    write_model(ConfigSettings.create(name="shapes", model_file=export_dir / "model_fp16.onnx", repo=repo, threads=1))
    write_model(ConfigSettings.create(name="shapes32", model_file=export_dir / "model_fp32.onnx", repo=repo, threads=1))
    write_model(ConfigSettings.create(name="notdet", model_file=classifier(repo.parent / "classifier.onnx"), repo=repo))
    return repo


def start_server(repo: Path, ports: list[int] | None = None) -> object:
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings

    http, grpc, metrics = ports or free_ports(3)
    return start_local(ServeSettings.create(runtime="local", repo=repo, http_port=http, grpc_port=grpc, metrics_port=metrics))


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory, demo_export: Path) -> Path:
    return build_demo_repo(tmp_path_factory.mktemp("demo") / "repo", demo_export)


@pytest.fixture(scope="session")
def demo_triton(demo_repo: Path) -> Iterator[Triton]:
    server = start_server(demo_repo)
    url = server.settings.url  # type: ignore[attr-defined]
    yield Triton(url, f"127.0.0.1:{server.settings.grpc_port}", demo_repo, server)  # type: ignore[attr-defined]
    server.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def demo_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tritonctl.vision.synthetic import write_video

    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    write_video(path, n_frames=60, width=640, height=360, seed=7)
    return path


# ---------------------------------------------------------------- nothing the tests start may outlive them

# Every process the tests start inherits this marker (tritonserver, its stubs, detached servers, daemonized
# children reparented to init), so leftovers are found even when they no longer descend from pytest.
TEST_RUN_ENV = "TRITONCTL_TEST_RUN"


def _new_run_id() -> str:
    import uuid

    return uuid.uuid4().hex


os.environ[TEST_RUN_ENV] = _new_run_id()


_PYTHON_HELPER = "from multiprocessing.resource_tracker import main"


def _leftovers() -> dict[int, str]:
    """Live processes that carry this run's marker or descend from this pytest process: pid -> command line."""
    me = os.getpid()
    marker = f"{TEST_RUN_ENV}={os.environ[TEST_RUN_ENV]}".encode()
    parent: dict[int, int] = {}
    marked = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        state, ppid = stat[stat.rfind(")") + 2:].split()[:2]
        if state in ("Z", "X"):  # finished, waiting to be reaped: holds nothing
            continue
        parent[pid] = int(ppid)
        if marker in environ:
            marked.add(pid)

    def descends(pid: int) -> bool:
        seen = set()
        while pid in parent and pid not in seen:
            seen.add(pid)
            pid = parent[pid]
            if pid == me:
                return True
        return False

    found = {}
    for pid in sorted(marked | {p for p in parent if descends(p)}):
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
        except OSError:
            continue
        if parent.get(pid) == me and _PYTHON_HELPER in found[pid]:
            del found[pid]  # Python's own shared-memory bookkeeper: it is pytest's, and ends with it
    return found


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """Fail the run if anything the tests started is still running at the end. Set up before the server
    fixtures (autouse, session), so torn down after them: their servers are stopped by then."""
    import contextlib
    import signal
    import time

    yield
    deadline = time.monotonic() + 10  # what is on its way out (a stub after its server) gets time to go
    left = _leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = _leftovers()
    if not left:
        return
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    listing = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left.items())
    pytest.fail(f"{len(left)} process(es) started by the tests outlived the session (now killed):\n{listing}",
                pytrace=False)


# ---------------------------------------------------------------- a real RTSP camera (GStreamer's RTSP server)

from rtsp import RtspServer  # noqa: E402


@pytest.fixture(scope="session")
def camera_h264(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of the demo model's shapes at 1280x720, 30 fps, an IDR every second: what the fake cameras serve."""
    from tritonctl.vision.synthetic import write_h264

    return write_h264(tmp_path_factory.mktemp("camera") / "camera.h264", seconds=10.0, width=1280, height=720, fps=30)


@pytest.fixture
def rtsp_server(camera_h264: Path) -> Iterator[RtspServer]:
    """A real RTSP server on a free loopback port with two cameras, /cam0 and /cam1, looping `camera_h264`."""
    with RtspServer.start({"cam0": camera_h264, "cam1": camera_h264}) as server:
        yield server
