"""Launching Triton: the local runtime as a child process, or the NGC image through the docker SDK; and stopping it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.errors import BadInput, ModelError, ServerError, ToolMissing

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
CONTAINER_LABEL = "tritonctl"
CONTAINER_REPO = "/models"


def state_dir() -> Path:
    """Where detached servers leave their pid files and logs (TRITONCTL_STATE_DIR overrides, for tests)."""
    path = Path(os.environ.get("TRITONCTL_STATE_DIR") or Path.home() / ".cache" / "tritonctl")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ServeSettings:
    runtime: str
    repo: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    detach: bool = False
    log_file: Path | None = None
    timeout_s: float = 120.0
    image: str = DEFAULT_IMAGE
    gpus: str = "all"
    name: str = "tritonctl"

    @classmethod
    def create(cls, **kw: Any) -> ServeSettings:
        s = cls(**kw)
        if s.runtime not in ("local", "docker"):
            raise BadInput(f"--runtime {s.runtime!r}: choose local or docker")
        if not s.repo.is_dir():
            raise BadInput(f"model repository {s.repo} does not exist: create one with `tritonctl config` or pass --repo")
        if not any(p.is_dir() and not p.name.startswith(".") for p in s.repo.iterdir()):
            raise BadInput(f"model repository {s.repo} holds no model: add one with `tritonctl config`")
        ports = (s.http_port, s.grpc_port, s.metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise BadInput(f"ports {ports} must be three different numbers in 1..65535")
        if s.timeout_s <= 0:
            raise BadInput("--timeout must be positive")
        if s.runtime == "docker":
            gpu_ids(s.gpus)
        for port in ports:
            if not port_free(s.host, port):
                raise BadInput(f"port {port} on {s.host} is already in use: stop what holds it or pick another port "
                               "(--http-port/--grpc-port/--metrics-port)")
        return s

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.http_port}"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers bind: connections of a server that just died (TIME_WAIT) do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def gpu_ids(gpus: str) -> list[str] | None:
    """`all` -> None (every GPU); `0,1` -> ['0', '1']."""
    if gpus == "all":
        return None
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise BadInput(f"--gpus {gpus!r}: use all, or GPU indexes such as 0 or 0,1")
    return ids


# ---------------------------------------------------------------- readiness and diagnosis


def is_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.+)")
_TABLE_ROW = re.compile(r"^\|\s*([^|\s]+)\s*\|\s*(\d+)\s*\|\s*UNAVAILABLE: (.+?)\s*\|$")


def diagnose(log: str) -> str:
    """The model that failed and the server's own error line, or the server's last error line."""
    for line in log.splitlines():
        m = _LOAD_FAILURE.search(line) or _TABLE_ROW.search(line.strip())
        if m:
            return f"model '{m.group(1)}' (version {m.group(2)}) failed to load: {m.group(3).strip()}"
    errors = [ln for ln in log.splitlines() if ln.startswith("E") and re.match(r"^E\d{4}", ln)]
    if errors:
        return errors[-1].split("] ", 1)[-1]
    tail = [ln for ln in log.splitlines() if ln.strip()]
    return tail[-1] if tail else "no log output"


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


# ---------------------------------------------------------------- local runtime


@dataclass
class ServerRecord:
    """What `serve --detach` leaves in the state folder so that `status` and `stop` find it again."""

    runtime: str
    url: str
    pid: int | None = None
    container: str | None = None
    log_file: str | None = None
    repo: str = ""
    metrics_url: str | None = None
    started: float = field(default_factory=time.time)

    def path(self) -> Path:
        return state_dir() / f"server-{self.url.replace(':', '-')}.json"

    def save(self) -> None:
        self.path().write_text(json.dumps(asdict(self)))


def records() -> list[ServerRecord]:
    out = []
    for p in sorted(state_dir().glob("server-*.json")):
        try:
            out.append(ServerRecord(**json.loads(p.read_text())))
        except (ValueError, TypeError):
            p.unlink(missing_ok=True)  # a record we cannot read points at nothing we can stop
    return out


def local_command(s: ServeSettings, binary: Path, backend_dir: Path) -> list[str]:
    return [
        str(binary), f"--model-repository={s.repo.resolve()}", f"--backend-directory={backend_dir}",
        f"--http-address={s.host}", f"--http-port={s.http_port}",
        f"--grpc-address={s.host}", f"--grpc-port={s.grpc_port}",
        f"--metrics-address={s.host}", f"--metrics-port={s.metrics_port}",
        "--allow-metrics=true", "--allow-gpu-metrics=false", "--exit-timeout-secs=10", "--log-verbose=0",
    ]


@dataclass
class LocalServer:
    settings: ServeSettings
    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        terminate(self.process.pid, timeout_s, self.process.wait)


def start_local(s: ServeSettings) -> LocalServer:
    from tritonctl.runtime import find_local_runtime

    runtime = find_local_runtime()
    log_file = s.log_file or state_dir() / f"triton-{s.http_port}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            local_command(s, runtime.binary, runtime.backend_dir), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=runtime.env(), start_new_session=True,
        )
    server = LocalServer(s, process, log_file)
    try:
        wait_ready(s.url, s.timeout_s, server.alive, server.log)
    except BaseException:
        server.stop(timeout_s=5)
        raise
    return server


def terminate(pid: int, timeout_s: float, wait: Callable[..., Any] | None = None) -> bool:
    """SIGTERM, then SIGKILL after timeout_s. Returns False when there was no such process."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if wait is not None:
            try:
                wait(timeout=0.2)
                return True
            except subprocess.TimeoutExpired:
                continue
        if not _pid_alive(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if wait is not None:
        wait()
    return True


def _pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0)
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True


# ---------------------------------------------------------------- docker runtime


def gpu_request(gpus: str) -> Any:
    """A docker DeviceRequest for exactly the GPUs asked for (`all`, or indexes such as `0,1`)."""
    from docker.types import DeviceRequest

    ids = gpu_ids(gpus)
    if ids is None:
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    return DeviceRequest(device_ids=ids, capabilities=[["gpu"]])


def container_spec(s: ServeSettings) -> dict[str, Any]:
    """Keyword arguments for docker's `containers.run`: only the GPUs asked for, the repository read-only,
    never privileged, ports published on the host address asked for."""
    return {
        "image": s.image,
        "command": ["tritonserver", f"--model-repository={CONTAINER_REPO}", "--log-verbose=0"],
        "name": f"{s.name}-{s.http_port}",
        "labels": {CONTAINER_LABEL: "1", f"{CONTAINER_LABEL}.url": s.url},
        "detach": True,
        "remove": False,
        "privileged": False,
        "device_requests": [gpu_request(s.gpus)],
        "volumes": {str(s.repo.resolve()): {"bind": CONTAINER_REPO, "mode": "ro"}},
        "ports": {"8000/tcp": (s.host, s.http_port), "8001/tcp": (s.host, s.grpc_port),
                  "8002/tcp": (s.host, s.metrics_port)},
        "shm_size": "1g",
        "ulimits": [],
    }


def docker_client() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise ToolMissing("the docker Python package is missing: `pip install docker` (or use --runtime local)") from exc
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise ToolMissing(f"cannot reach the Docker daemon ({exc.__class__.__name__}): start Docker, "
                          "or use --runtime local") from exc
    return client


def start_docker(s: ServeSettings) -> Any:
    import docker.errors

    client = docker_client()
    try:
        client.images.get(s.image)
    except docker.errors.ImageNotFound as exc:
        raise ToolMissing(f"image {s.image} is not on this host: `docker pull {s.image}` first, or pass --image") from exc
    spec = container_spec(s)
    container = client.containers.run(**spec)

    def log() -> str:
        return str(container.logs().decode(errors="replace"))

    def alive() -> bool:
        container.reload()
        return bool(container.status in ("created", "running"))

    try:
        wait_ready(s.url, s.timeout_s, alive, log)
    except BaseException:
        container.remove(force=True)
        raise
    return container


def stop_record(record: ServerRecord, timeout_s: float) -> bool:
    if record.runtime == "docker" and record.container:
        client = docker_client()
        try:
            container = client.containers.get(record.container)
            container.stop(timeout=int(timeout_s))
            container.remove()
        except Exception as exc:
            if exc.__class__.__name__ != "NotFound":
                raise ServerError(f"cannot stop container {record.container}: {exc}") from exc
        record.path().unlink(missing_ok=True)
        return True
    stopped = terminate(record.pid, timeout_s) if record.pid else False
    record.path().unlink(missing_ok=True)
    return stopped
