"""What `serve` leaves in the state folder so that `status`, `stop` and `config` find a server again, and how a
recorded local server is stopped or cleaned up after."""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.core import procs
from tritonctl.core.endpoint import Endpoint, parse_endpoint
from tritonctl.core.errors import BadInput
from tritonctl.serving.leftovers import remove_shm
from tritonctl.serving.settings import ServeSettings, state_dir
from tritonctl.serving.stopping import LogMark, StopResult


@dataclass
class ServerRecord:
    """What `serve` leaves in the state folder so that `status` and `stop` find the server again."""

    runtime: str
    url: str
    pid: int | None = None
    container: str | None = None
    log_file: str | None = None
    repo: str = ""  # absolute (older records kept the path as typed, relative to a folder they did not record)
    metrics_url: str | None = None
    started: float = field(default_factory=time.time)
    server_id: str = ""  # the marker its processes carry in their environment, and the name of its shm regions
    serve_flags: list[str] = field(default_factory=list)  # ServeSettings.flags(): how to start it again

    @classmethod
    def of(cls, s: ServeSettings, runtime: str, **kw: Any) -> ServerRecord:
        """The record of a server started with `s`, its repository resolved: `stop` and `config` run elsewhere."""
        return cls(runtime, s.url, repo=str(s.repo.resolve()), metrics_url=s.metrics_url, serve_flags=s.flags(), **kw)

    def path(self) -> Path:
        return state_dir() / f"server-{re.sub(r'[^A-Za-z0-9.]+', '-', self.url).strip('-')}.json"

    def save(self) -> None:
        tmp = self.path().with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path())

    def forget(self) -> None:
        """Remove this record (only if the file is still this server's, not a newer one on the same endpoint)."""
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path().read_text()).get("started") == self.started:
                self.path().unlink()

    def endpoint(self) -> Endpoint:
        return parse_endpoint(self.url)

    def repo_path(self) -> Path | None:
        """The repository it serves, absolute; None when that cannot be known (an older record kept a relative path,
        and only a local tritonserver still running says what it resolved to)."""
        if not self.repo or Path(self.repo).is_absolute():
            return Path(self.repo) if self.repo else None
        args = procs.cmdline(self.pid) if self.runtime == "local" and self.pid else []
        if args and Path(args[0]).name == "tritonserver":
            flag = next((a for a in args if a.startswith("--model-repository=")), "")
            return Path(flag.split("=", 1)[1]) if flag else None
        return None

    def serves(self, repo: Path) -> bool:
        """Whether it serves `repo` (resolved against this process's folder); False when its repository is unknown."""
        mine = self.repo_path()
        return mine is not None and mine.resolve() == repo.resolve()

    def restart_command(self) -> str:
        """The commands that restart this server on the same repository, ports and runtime."""
        import shlex

        serve = ["tritonctl", "serve", "--repo", str(self.repo_path() or self.repo), *self.serve_flags, "--detach"]
        return f"tritonctl stop --url {self.url} && {shlex.join(serve)}"

    def members(self) -> set[int]:
        """The live processes of a local server."""
        if self.server_id:
            return set(procs.marked(procs.MARK_ENV, self.server_id))
        # written before servers carried an id: its process group, if its leader is still tritonserver
        if self.pid and procs.alive(self.pid) and "tritonserver" in " ".join(procs.cmdline(self.pid)[:1]):
            return set(procs.group_members(self.pid))
        return set()

    def running(self) -> bool:
        if self.runtime != "local":
            return True  # asking docker costs a daemon round trip: a dead container shows in `status` instead
        if self.pid is None or not procs.alive(self.pid):
            return False
        env = procs.environ(self.pid)
        if env is None:  # another user's process: we cannot tell, so we do not forget it
            return True
        if self.server_id:
            return env.get(procs.MARK_ENV) == self.server_id  # not a new process that reuses the pid
        return self.pid in self.members()


def records(prune: bool = True) -> list[ServerRecord]:
    """The servers `serve` started. `prune`: forget local servers that died without `stop`, cleaning up after them."""
    if prune:
        forget_dead()
    return _read_records()


def forget_dead() -> list[ServerRecord]:
    """Forget the recorded servers whose process is gone (died without `stop`), removing what they left (stubs, shared
    memory regions); returns them, so that the caller can say so."""
    dead = [r for r in _read_records() if not r.running()]
    for record in dead:
        stop_local_record(record, timeout_s=5, settle_s=0)  # only leftovers remain
        record.forget()
    return dead


def _read_records() -> list[ServerRecord]:
    found = []
    for p in sorted(state_dir().glob("server-*.json")):
        try:
            record = ServerRecord(**json.loads(p.read_text()))
            record.endpoint()
        except (ValueError, TypeError, BadInput):
            p.unlink(missing_ok=True)  # a record we cannot read points at nothing we can stop
            continue
        found.append(record)
    return found


def same_server(a: Endpoint, b: Endpoint) -> bool:
    """localhost:8000 and 127.0.0.1:8000 are the same server to the user who typed them."""
    return a == b or (a.port == b.port and a.local and b.local)


def find_records(endpoint: Endpoint | None, prune: bool = True) -> list[ServerRecord]:
    return [r for r in records(prune) if endpoint is None or same_server(r.endpoint(), endpoint)]


def serving(repo: Path) -> list[ServerRecord]:
    """The recorded servers that load this repository (they read it at start: a model added later is not loaded)."""
    return [r for r in records() if r.serves(repo)]


def stop_local_record(record: ServerRecord, timeout_s: float, settle_s: float = 2.0) -> StopResult:
    """Stop a local server started by another process (`serve --detach`), found by its id; or only clean up after it."""
    log = LogMark.now(Path(record.log_file) if record.log_file else None)
    leader = record.pid if record.running() else None
    ended = procs.terminate_members(record.members, leader, timeout_s, settle_s)
    regions = remove_shm(record.server_id) if record.server_id else 0
    notes = log.notes(None, False) if leader else ()
    return StopResult(ended.found, ended.seconds, ended.killed, ended.left, regions, notes)
