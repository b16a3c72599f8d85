"""The running Triton server: the local runtime as a child process, or the NGC image through the docker SDK.

`start(settings)` returns an object that owns the server: `alive()`, `follow()` (its log in the foreground until it
exits or a stop signal arrives), `stop()` (which says truthfully how it went) and `record()` (what `serve` leaves in
the state folder so that `status` and `stop` find it again). A local server is one process group whose members all
carry its id in their environment, Triton's Python backend stubs included, and whose shared-memory regions in
/dev/shm carry that id in their names (`tritonctl-srv-<id>_…`); stopping it ends every one of them and removes those
regions, never another's: clients name theirs `tritonctl-cli-<pid>_…` (client.py), which no server clean-up matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import ServerError
from tritonctl.serving.container import DockerServer, start_docker, stop_container
from tritonctl.serving.local import LocalServer, start_local
from tritonctl.serving.readiness import diagnose
from tritonctl.serving.records import ServerRecord, find_records, stop_local_record
from tritonctl.serving.settings import ServeSettings
from tritonctl.serving.stopping import StopResult

RunningServer = LocalServer | DockerServer


def start(s: ServeSettings) -> RunningServer:
    """Start the server `s` asks for, on its runtime, and wait until it is ready."""
    return start_docker(s) if s.runtime == "docker" else start_local(s)


def stop_record(record: ServerRecord, timeout_s: float) -> StopResult:
    """Stop a server `serve` started in another process, found through its record."""
    # Forgotten first: a foreground `serve` that sees its server go then knows it was asked to, not a crash.
    record.path().unlink(missing_ok=True)
    try:
        if record.runtime == "docker" and record.container:
            return stop_container(record.container, timeout_s)
        return stop_local_record(record, timeout_s)
    except BaseException:
        record.save()  # not stopped: still findable for the next try
        raise


@dataclass(frozen=True)
class StopChoice:
    """The recorded servers `stop` ends, and those of other repositories it leaves running (said, so that the user
    knows how to end them too)."""

    targets: list[ServerRecord]
    others: list[ServerRecord]
    repo: Path | None  # the repository whose servers were chosen; None when chosen by endpoint or --all

    def nothing_here(self, endpoint: Endpoint | None) -> str:
        """What `stop` found when it found nothing: success for cleanup scripts, said once."""
        where = f"at {endpoint.url}" if endpoint else f"serves {self.repo.resolve()}" if self.repo else "is running"
        return f"nothing to stop: no server started by `tritonctl serve` {where}"


def choose_stop(endpoint: Endpoint | None, repo: Path | None, all_servers: bool) -> StopChoice:
    """The servers at `endpoint`; else every one (`all_servers`); else this folder's: those serving `repo`, by default
    serve's model_repository (another checkout's servers are not ours to end)."""
    targets = find_records(endpoint, prune=False)
    if endpoint is not None or all_servers:
        return StopChoice(targets, [], repo)
    repo = repo or Path("model_repository")  # serve's default
    others = [r for r in targets if not r.serves(repo) and r.running()]
    return StopChoice([r for r in targets if r.serves(repo)], others, repo)


def exited_on_its_own(result: StopResult, log: Callable[[], str]) -> ServerError | None:
    """A foreground server that ended although nobody asked it to: why, from its exit status, shutdown notes and log.
    None when it ended cleanly (exit code 0: a clean stop someone else asked for)."""
    if result.exit_code == 0:
        return None
    why = "; ".join(result.notes) or f"exit code {result.exit_code}"
    detail = f": {diagnose(log())}" if result.exit_code is None or result.exit_code > 0 else ""
    return ServerError(f"Triton exited on its own ({why}){detail}")
