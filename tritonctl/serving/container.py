"""The docker runtime: the NGC Triton image started through the docker SDK, with only the GPUs asked for, the
repository read-only, as this user; its log followed, and stopped as docker stops it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.core import containers, procs
from tritonctl.core.containers import docker_client, gpu_request
from tritonctl.core.errors import BadInput, ServerError, ToolMissing
from tritonctl.model.repository import TRT_CACHE_IN_CONTAINER, RepoModel, read_repository
from tritonctl.serving.readiness import wait_ready
from tritonctl.serving.records import ServerRecord
from tritonctl.serving.settings import ServeSettings, state_dir
from tritonctl.serving.stopping import EXIT_TIMEOUT_S, StopResult

CONTAINER_LABEL = "tritonctl"
CONTAINER_REPO = "/models"


# NVIDIA's documented limits for the Triton container (`--shm-size=1g --ulimit memlock=-1 --ulimit stack=67108864`):
# room in /dev/shm for backends that use it, unlimited pinned memory, and the stack size the frameworks expect.
SHM_SIZE = "1g"
STACK_BYTES = 67108864


def container_spec(s: ServeSettings, trt_cache: Path | None = None) -> dict[str, Any]:
    """Keyword arguments for docker's `containers.create`: only the GPUs asked for, the repository read-only (a TensorRT
    EP engine cache writable beside it, when a model asks for one), never privileged, as this user, ports published on
    the host address asked for."""
    from docker.types import Ulimit

    selinux = containers.selinux_enforcing() if s.selinux is None else s.selinux
    volumes = containers.bind(s.repo, CONTAINER_REPO, "ro", selinux)
    if trt_cache is not None:
        volumes.update(containers.bind(trt_cache, TRT_CACHE_IN_CONTAINER, "rw", selinux))
    return {
        "image": s.image,
        "command": ["tritonserver", f"--model-repository={CONTAINER_REPO}", "--log-verbose=0",
                    f"--exit-timeout-secs={EXIT_TIMEOUT_S}"],
        "name": f"{s.name}-{s.http_port}",
        "labels": {CONTAINER_LABEL: "1", f"{CONTAINER_LABEL}.url": s.url},
        "detach": True,
        "privileged": False,
        "user": containers.container_user(),
        "device_requests": [gpu_request(s.gpus)],
        "volumes": volumes,
        "ports": {"8000/tcp": (s.host, s.http_port), "8001/tcp": (s.host, s.grpc_port),
                  "8002/tcp": (s.host, s.metrics_port)},
        # The host's IPC namespace, so the system shared-memory regions a client creates in the host's /dev/shm are
        # the ones Triton opens (a private namespace has its own /dev/shm: server issues #2296, #4644).
        "ipc_mode": "host",
        "shm_size": SHM_SIZE,
        "ulimits": [Ulimit(name="memlock", soft=-1, hard=-1), Ulimit(name="stack", soft=STACK_BYTES, hard=STACK_BYTES)],
    }


def trt_cache_dir(s: ServeSettings) -> Path:
    """The host folder for ONNX Runtime's TensorRT engines: one per image, since engines do not move across
    TensorRT versions."""
    return (s.cache_dir or state_dir() / "trt-cache") / re.sub(r"[^A-Za-z0-9.]+", "-", s.image).strip("-")


def _prepare_trt_cache(s: ServeSettings, models: list[RepoModel]) -> Path | None:
    """Create the cache folder of every model whose TensorRT EP caches engines under TRT_CACHE_IN_CONTAINER (the
    container user may not create them in a folder it did not make); None when no model caches."""
    from pathlib import PurePosixPath

    host = trt_cache_dir(s)
    wanted = []
    for m in models:
        path = m.trt_cache_path()
        if path and PurePosixPath(path).is_relative_to(TRT_CACHE_IN_CONTAINER):
            rel = PurePosixPath(path).relative_to(TRT_CACHE_IN_CONTAINER)
            if ".." not in rel.parts:
                wanted.append(host / rel)
    for folder in wanted:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"cannot create the TensorRT engine cache {folder} ({exc.strerror}): pass a writable "
                           "--cache-dir") from exc
    return host if wanted else None


@dataclass
class DockerServer:
    settings: ServeSettings
    container: Any
    started: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return self.settings.url

    def log(self) -> str:
        try:
            return str(self.container.logs().decode(errors="replace"))
        except Exception:  # the container is gone, or the daemon
            return ""

    def alive(self) -> bool:
        try:
            self.container.reload()
        except Exception:  # removed, or the daemon went away: either way it does not serve
            return False
        return bool(self.container.status in ("created", "running"))

    def follow(self, on_line: Callable[[str], None], poll_s: float = 1.0) -> str | None:
        """The container's log until it stops (polled: a container can die without ending the log stream),
        or until a stop signal arrives (returns its name)."""
        with procs.stop_on_signals():
            try:
                containers.stream_container(self.container, on_line, self.alive, poll_s=poll_s, since=int(time.time()))
            except procs.StopRequested as stop:
                return stop.name
        return None

    def stop(self, timeout_s: float = 15.0) -> StopResult:
        result = stop_container(self.container.name, timeout_s, self.container)
        self.record().forget()
        return result

    def record(self) -> ServerRecord:
        return ServerRecord.of(self.settings, "docker", container=str(self.container.name), started=self.started)


def _check_image(client: Any, image: str) -> None:
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise ToolMissing(f"image {image} is not on this host: `docker pull {image}` first, or pass --image") from exc
    except docker.errors.DockerException as exc:  # a malformed name, the daemon going away
        raise containers.docker_error(exc, image) from exc


def start_docker(s: ServeSettings, client: Any = None) -> DockerServer:
    """Start the NGC image and wait until it is ready. `client`: a docker client (tests hand in a stand-in)."""
    client = client or docker_client()
    _check_image(client, s.image)
    cache = _prepare_trt_cache(s, read_repository(s.repo))
    server = DockerServer(s, containers.start_container(client, container_spec(s, cache)))
    try:
        wait_ready(s.url, s.timeout_s, server.alive, server.log)
    except BaseException:
        with procs.signals_deferred():
            server.container.remove(force=True)
        raise
    return server


def stop_container(name: str, timeout_s: float, container: Any = None) -> StopResult:
    t0 = time.monotonic()
    with procs.signals_deferred():
        try:
            container = container or docker_client().containers.get(name)
            container.reload()
            found = container.status in ("created", "running", "restarting", "paused")
            container.stop(timeout=max(0, int(timeout_s)))
            container.reload()
            code = int(container.attrs.get("State", {}).get("ExitCode", 0))
            container.remove(force=True)
        except ToolMissing:
            raise
        except Exception as exc:
            if exc.__class__.__name__ == "NotFound":
                return StopResult(False)
            raise ServerError(f"cannot stop container {name}: {exc}") from exc
    seconds = time.monotonic() - t0
    # docker stop sends SIGKILL after its timeout: exit code 137 says it had to
    killed = (f"container {name}",) if found and code == 137 else ()
    return StopResult(found, seconds, killed, exit_code=None if found else code)
