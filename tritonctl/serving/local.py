"""The local runtime: tritonserver from the nvidia-pytriton wheel as a child process. A local server is one process
group whose members all carry its id in their environment, Triton's Python backend stubs included, and whose
shared-memory regions carry that id in their names; stopping it ends every one of them and removes those regions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.core import procs
from tritonctl.serving.leftovers import SHM_PREFIX, remove_shm, sweep_orphans
from tritonctl.serving.readiness import wait_ready
from tritonctl.serving.records import ServerRecord
from tritonctl.serving.settings import ServeSettings, state_dir
from tritonctl.serving.stopping import EXIT_TIMEOUT_S, LogMark, StopResult


def local_command(s: ServeSettings, binary: Path, backend_dir: Path, server_id: str) -> list[str]:
    return [
        str(binary), f"--model-repository={s.repo.resolve()}", f"--backend-directory={backend_dir}",
        f"--http-address={s.host}", f"--http-port={s.http_port}",
        f"--grpc-address={s.host}", f"--grpc-port={s.grpc_port}",
        f"--metrics-address={s.host}", f"--metrics-port={s.metrics_port}",
        "--allow-metrics=true", "--allow-gpu-metrics=false", f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--log-verbose=0",
        # Region names carry the server's id, so a SIGKILLed server's regions can be told apart and removed.
        f"--backend-config=python,shm-region-prefix-name={SHM_PREFIX}{server_id}_",
    ]


@dataclass
class LocalServer:
    settings: ServeSettings
    child: procs.Child
    log_file: Path
    started: float = field(default_factory=time.time)

    @property
    def process(self) -> Any:
        """tritonserver's Popen."""
        return self.child.popen

    @property
    def server_id(self) -> str:
        return self.child.mark

    @property
    def url(self) -> str:
        return self.settings.url

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.child.alive()

    def follow(self, on_line: Callable[[str], None]) -> str | None:
        """The server's log, line by line, until it exits (returns None) or a stop signal arrives (returns its name)."""
        with procs.stop_on_signals():
            try:
                procs.follow_file(self.log_file, self.alive, on_line)
            except procs.StopRequested as stop:
                return stop.name
        return None

    def stop(self, timeout_s: float = 15.0) -> StopResult:
        """SIGTERM to the server's group; after timeout_s (or once tritonserver has gone and its stubs linger),
        SIGKILL to all of it; then its shared-memory regions."""
        log = LogMark.now(self.log_file)
        ended = self.child.stop(timeout_s)
        regions = remove_shm(self.server_id)
        sweep_orphans()
        self.record().forget()
        notes = log.notes(ended.exit_code, "tritonserver" in " ".join(ended.killed))
        return StopResult(ended.found, ended.seconds, ended.killed, ended.left, regions, notes, ended.exit_code)

    def record(self) -> ServerRecord:
        return ServerRecord.of(self.settings, "local", pid=self.child.pid, log_file=str(self.log_file),
                               server_id=self.server_id, started=self.started)


def start_local(s: ServeSettings) -> LocalServer:
    """Start tritonserver and wait until it is ready. Unless `s.detach`, it gets SIGTERM if this process dies
    (the thread that calls this must live as long as the server: Linux ties that signal to the starting thread)."""
    from tritonctl.serving.runtime import find_local_runtime

    runtime = find_local_runtime()
    sweep_orphans()
    server_id = procs.new_mark()
    log_file = s.log_file or state_dir() / f"triton-{s.http_port}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "wb") as log:
        child = procs.spawn(local_command(s, runtime.binary, runtime.backend_dir, server_id), env=runtime.env(),
                            stdout=log, die_with_parent=not s.detach, mark=server_id)
    server = LocalServer(s, child, log_file)
    try:
        wait_ready(s.url, s.timeout_s, server.alive, server.log)
    except BaseException:
        server.stop(timeout_s=5)
        raise
    return server
