"""What `serve` is asked for (runtime, repository, address and ports, image and GPUs), checked before anything
starts; and the state folder where servers started by `serve` are recorded."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonctl.core.containers import DEFAULT_IMAGE, gpu_ids
from tritonctl.core.endpoint import Endpoint, parse_endpoint
from tritonctl.core.errors import BadInput


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
    cache_dir: Path | None = None  # docker: where ONNX Runtime's TensorRT engines are cached (default: the state folder)
    selinux: bool | None = None  # docker: label the bind mounts `z` (None: when SELinux enforces here)

    @classmethod
    def create(cls, **kw: Any) -> ServeSettings:
        s = cls(**kw)
        if s.runtime not in ("local", "docker"):
            raise BadInput(f"--runtime {s.runtime!r}: choose local or docker")
        _check_host(s.host)
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
    def endpoint(self) -> Endpoint:
        """Where clients on this host reach the HTTP endpoint (a wildcard bind is reached through loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return Endpoint(host, self.http_port)

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def grpc_url(self) -> str:
        return self.endpoint.with_port(self.grpc_port).url

    @property
    def metrics_url(self) -> str:
        return f"{self.endpoint.with_port(self.metrics_port).url}/metrics"

    def flags(self) -> list[str]:
        """The `serve` flags (all but --repo and --detach) that start this server again as it is: for a note that
        tells how to restart it."""
        flags = [] if self.runtime == "local" else ["--runtime", self.runtime]
        flags += [] if self.host == "127.0.0.1" else ["--host", self.host]
        flags += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                  "--metrics-port", str(self.metrics_port)]
        if self.runtime == "docker":
            flags += ([] if self.image == DEFAULT_IMAGE else ["--image", self.image]) + \
                ([] if self.gpus == "all" else ["--gpus", self.gpus])
        return flags


def _check_host(host: str) -> None:
    if host in ("", "0.0.0.0", "::"):
        return
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if parse_endpoint(bracketed, flag="--host").host != host.strip("[]"):
        raise BadInput(f"--host {host!r}: give an address only, without scheme or port (ports: --http-port, …)")


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers bind: connections of a server that just died (TIME_WAIT) do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True
