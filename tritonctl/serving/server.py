"""The running Triton server: the local runtime as a child process, or the NGC image through the docker SDK.

`start(settings)` returns an object that owns the server: `alive()`, `follow()` (its log in the foreground until it
exits or a stop signal arrives), `stop()` (which says truthfully how it went) and `record()` (what `serve` leaves in
the state folder so that `status` and `stop` find it again). A local server is one process group whose members all
carry its id in their environment, Triton's Python backend stubs included, and whose shared-memory regions in
/dev/shm carry that id in their names (`tritonctl-srv-<id>_…`); stopping it ends every one of them and removes those
regions, never another's: clients name theirs `tritonctl-cli-<pid>_…` (client.py), which no server clean-up matches.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.core import procs
from tritonctl.core.endpoint import Endpoint, parse_endpoint
from tritonctl.core.errors import BadInput, ModelError, ServerError, ToolMissing
from tritonctl.core.procs import docker_client
from tritonctl.model.repository import TRT_CACHE_IN_CONTAINER, RepoModel, read_repository

__all__ = ["docker_client"]  # engine and perf used to take it from here

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
CONTAINER_LABEL = "tritonctl"
CONTAINER_REPO = "/models"
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "tritonctl-srv-"  # + server id + "_": the Python backend's shm-region-prefix-name for our servers
# Servers started before the split named their regions `tritonctl_<16 hex>_…`; clients then used `tritonctl_<pid>_…`,
# which 16 hex digits never match (a pid has at most 7), so this finds only those servers' regions.
_LEGACY_REGION = re.compile(r"tritonctl_([0-9a-f]{16})_")
EXIT_TIMEOUT_S = 10  # Triton's own --exit-timeout-secs: how long it waits for in-flight requests after SIGTERM
STUB = "triton_python_backend_stub"


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
    except (urllib.error.URLError, OSError, ValueError):
        return False


_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.+)")
_BENIGN = ("CudaDriverHelper has not been initialized",)  # logged at every start on a host without a GPU
_TABLE_ROW = re.compile(r"^\|\s*([^|\s]+)\s*\|\s*(\d+)\s*\|\s*UNAVAILABLE: (.+?)\s*\|$")


def diagnose(log: str) -> str:
    """The model that failed and the server's own error line, or the server's last error line."""
    for line in log.splitlines():
        m = _LOAD_FAILURE.search(line) or _TABLE_ROW.search(line.strip())
        if m:
            return f"model '{m.group(1)}' (version {m.group(2)}) failed to load: {_first_line(m.group(3))}"
    errors = [ln for ln in log.splitlines() if re.match(r"^E\d{4}", ln) and not any(b in ln for b in _BENIGN)]
    if errors:
        return _first_line(errors[-1].split("] ", 1)[-1])
    tail = [ln for ln in log.splitlines() if ln.strip()]
    return tail[-1] if tail else "no log output"


def _first_line(message: str) -> str:
    """Triton logs a message in quotes with its newlines escaped; a Python backend's error carries the stub's
    traceback after "\\n\\nAt:". What the user needs is its first line, without the quotes."""
    text = message.replace("\\n", "\n").replace('\\"', '"')
    return text.split("\n", 1)[0].strip().strip('"').strip()


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


# ---------------------------------------------------------------- what stopping did


@dataclass(frozen=True)
class StopResult:
    """How a stop went, told as it was: in time, or forced (and what had to be killed), and what was cleaned up."""

    found: bool  # the server (tritonserver, the container) was still running
    seconds: float = 0.0
    killed: tuple[str, ...] = ()  # processes that needed SIGKILL
    left: tuple[str, ...] = ()  # processes that survived even SIGKILL (should never happen)
    regions_removed: int = 0  # shared-memory regions the server had left in /dev/shm
    notes: tuple[str, ...] = ()  # what Triton's log or exit status said about its shutdown
    exit_code: int | None = None  # tritonserver's (negative: the signal that ended it), when we can know it

    @property
    def forced(self) -> bool:
        return bool(self.killed)

    def describe(self) -> str:
        """`stopped in 1.2 s`, `stopped (forced after 15.0 s: SIGKILL to …)`, `already gone`, with what else happened."""
        if not self.found:
            parts = [f"SIGKILL to what it left running: {', '.join(self.killed)}"] if self.killed else []
        else:
            parts = [f"forced after {self.seconds:.1f} s: SIGKILL to {', '.join(self.killed)}"] if self.killed else []
        parts.extend(self.notes)
        if self.left:
            parts.append(f"still running after SIGKILL: {', '.join(self.left)}")
        if self.regions_removed:
            parts.append(f"removed {self.regions_removed} shared-memory region(s) it left in {SHM_DIR}")
        head = "already gone" if not self.found else "stopped" if self.killed else f"stopped in {self.seconds:.1f} s"
        return head + (f" ({'; '.join(parts)})" if parts else "")


def _shutdown_notes(log_tail: str, exit_code: int | None, killed: bool) -> tuple[str, ...]:
    """What the server's own log (written after our SIGTERM) and its exit status say about how it ended."""
    notes = []
    timed_out = "Exit timeout expired" in log_tail
    if timed_out:
        # Triton waits for clients' open (keep-alive) connections too, e.g. a `detect` still streaming
        conns = re.findall(r"Found (\d+) (HTTP|GRPC|gRPC) service connections", log_tail)
        waited_for = f"{conns[-1][0]} open {conns[-1][1]} client connections" if conns else "requests in flight"
        notes.append(f"Triton's {EXIT_TIMEOUT_S} s exit timeout expired waiting for {waited_for}")
    # Triton logs "Signal (N) received." for our SIGTERM too; any other signal is a crash on the way out.
    crash = next((n for n in re.findall(r"Signal \((\d+)\) received", log_tail) if int(n) not in (2, 15)), None)
    if crash:
        notes.append(f"tritonserver crashed while exiting (signal {crash})")
    elif exit_code is not None and exit_code < 0 and not killed:
        notes.append(f"tritonserver ended by {signal.Signals(-exit_code).name}")
    elif exit_code is not None and exit_code > 0 and not timed_out:
        notes.append(f"tritonserver exited with code {exit_code}")
    return tuple(notes)


def _log_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def _log_since(path: Path | None, offset: int) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- shared memory and orphans of local servers


def region_server(name: str) -> str | None:
    """The id of the server that made the /dev/shm region `name`; None for anything else (a client's region)."""
    if name.startswith(SHM_PREFIX):
        server_id = name[len(SHM_PREFIX):].split("_", 1)[0]
        return server_id or None
    m = _LEGACY_REGION.match(name)
    return m.group(1) if m else None


def shm_regions(server_id: str | None = None) -> list[Path]:
    """Our servers' Python-backend regions in /dev/shm (of one server when `server_id` is given), ours to remove;
    never a client's."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(SHM_DIR):
            owner = region_server(entry.name)
            if owner is None or (server_id and owner != server_id):
                continue
            with contextlib.suppress(OSError):  # removed meanwhile
                if entry.stat(follow_symlinks=False).st_uid == os.getuid():
                    found.append(Path(entry.path))
    return found


def remove_shm(server_id: str) -> int:
    """Remove the regions one server's processes made (by its id); 0 without an id."""
    if not server_id:
        return 0
    removed = 0
    for path in shm_regions(server_id):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def sweep_orphans() -> list[str]:
    """End what our dead servers left: stubs whose tritonserver is gone (they outlive a SIGKILLed server, each holding
    hundreds of MB) and shared-memory regions of servers that no longer run. Returns what was removed.

    Clients' regions are never touched, not even those of a pid that looks dead: a client in a container that shares
    this /dev/shm (`--ipc=host`) has pids we cannot see, and a client that died is cleaned up after by its own
    multiprocessing resource tracker (tritonclient's regions are multiprocessing shared memory)."""
    regions = shm_regions()  # listed before the processes: a region created after this is never a candidate
    by_server: dict[str, list[int]] = {}
    for pid, server_id in procs.marked(procs.MARK_ENV).items():
        by_server.setdefault(server_id, []).append(pid)
    removed: list[str] = []
    for pids in by_server.values():
        names = [Path(a[0]).name if (a := procs.cmdline(p)) else "" for p in pids]
        if STUB in names and "tritonserver" not in names:
            killed, _ = procs.kill_all(p for p, n in zip(pids, names, strict=True) if n == STUB)
            removed.extend(killed)
    running = set(procs.marked(procs.MARK_ENV).values())
    for path in regions:
        if region_server(path.name) not in running:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(str(path))
    return removed


# ---------------------------------------------------------------- the record in the state folder


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
        _stop_local_record(record, timeout_s=5, settle_s=0)  # only leftovers remain
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


# ---------------------------------------------------------------- local runtime


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
        offset = _log_size(self.log_file)
        ended = self.child.stop(timeout_s)
        regions = remove_shm(self.server_id)
        sweep_orphans()
        self.record().forget()
        notes = _shutdown_notes(_log_since(self.log_file, offset), ended.exit_code, "tritonserver" in " ".join(ended.killed))
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


def _stop_local_record(record: ServerRecord, timeout_s: float, settle_s: float = 2.0) -> StopResult:
    log = Path(record.log_file) if record.log_file else None
    offset = _log_size(log)
    leader = record.pid if record.running() else None
    ended = procs.terminate_members(record.members, leader, timeout_s, settle_s)
    regions = remove_shm(record.server_id) if record.server_id else 0
    notes = _shutdown_notes(_log_since(log, offset), None, False) if leader else ()
    return StopResult(ended.found, ended.seconds, ended.killed, ended.left, regions, notes)


# ---------------------------------------------------------------- before a docker server starts: the host, the models


@dataclass(frozen=True)
class HostGpu:
    """One GPU as nvidia-smi reports it."""

    driver: str  # e.g. 575.57.08
    compute_cap: float | None  # e.g. 9.0; None where the driver cannot say

    @property
    def branch(self) -> int:
        return int(self.driver.split(".")[0])

    @property
    def driver_version(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.driver.split("."))


_DRIVER = re.compile(r"\d+(?:\.\d+)+")
_CAP = re.compile(r"\d+\.\d+")


def parse_nvidia_smi(text: str) -> list[HostGpu]:
    """`nvidia-smi --query-gpu=driver_version,compute_cap --format=csv,noheader`: one `575.57.08, 9.0` line per GPU,
    in index order. Its error messages yield no GPU; an old driver's `[N/A]` yields no compute capability."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if not _DRIVER.fullmatch(fields[0]):
            continue
        cap = fields[1] if len(fields) > 1 else ""
        gpus.append(HostGpu(fields[0], float(cap) if _CAP.fullmatch(cap) else None))
    return gpus


def host_gpus() -> list[HostGpu] | None:
    """This host's GPUs; None without nvidia-smi, or when it cannot talk to a driver."""
    for query in ("driver_version,compute_cap", "driver_version"):  # drivers before R510 cannot query compute_cap
        try:
            done = procs.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], keep_lines=True,
                             timeout_s=30)
        except ToolMissing:
            return None
        gpus = parse_nvidia_smi("\n".join(done.lines))
        if gpus:
            return gpus
    return None


@dataclass(frozen=True)
class ImageNeeds:
    release: str  # the NGC tag's yy.mm
    cuda: str
    min_driver: int  # the driver branch the release notes ask for
    min_cap: float  # the lowest compute capability it supports


# NVIDIA's Triton release notes, "Driver Requirements" and "GPU Requirements" of each release; newest first.
RELEASES = (
    ImageNeeds("25.10", "13.0.2", 575, 7.5),
    ImageNeeds("25.08", "13.0.0", 575, 7.5),
    ImageNeeds("25.06", "12.9.1", 575, 7.5),
    ImageNeeds("25.04", "12.9.0", 575, 7.5),
    ImageNeeds("25.03", "12.8.1", 560, 7.5),
    ImageNeeds("24.10", "12.6.2", 560, 6.0),
    ImageNeeds("24.04", "12.4", 545, 6.0),
    ImageNeeds("23.08", "12.2.1", 535, 6.0),
)
# The older drivers the same notes accept on data-center GPUs, through CUDA forward compatibility.
FORWARD_COMPATIBLE = ((470, 57), (525, 85), (535, 86), (545, 23))
_TAG = re.compile(r"tritonserver:(\d{2}\.\d{2})")


def image_needs(image: str) -> ImageNeeds | None:
    """What an NGC Triton image needs of the host; None for a tag the release notes above do not place (a later
    tag than the newest listed is taken to need at least as much)."""
    m = _TAG.search(image)
    if not m:
        return None
    release = m.group(1)
    if release > RELEASES[0].release:
        return ImageNeeds(release, f"{RELEASES[0].cuda} or later", RELEASES[0].min_driver, RELEASES[0].min_cap)
    return next((r for r in RELEASES if r.release == release), None)


def _forward_compatible(gpu: HostGpu) -> bool:
    return any(gpu.branch == branch and gpu.driver_version[1:2] >= (minor,) for branch, minor in FORWARD_COMPATIBLE)


def fitting_image(image: str, gpus: list[HostGpu]) -> str | None:
    """The newest listed release these GPUs and their driver run, named like `image`."""
    for r in RELEASES:
        if all(g.branch >= r.min_driver and (g.compute_cap or r.min_cap) >= r.min_cap for g in gpus):
            return _TAG.sub(f"tritonserver:{r.release}", image)
    return None


def check_host(image: str, gpus: list[HostGpu]) -> list[str]:
    """The image against the host's GPUs (those handed to the container): refuses what cannot run, returns a warning
    for what runs only on data-center GPUs through forward compatibility."""
    needs = image_needs(image)
    if needs is None or not gpus:
        return []
    fit = fitting_image(image, gpus)
    instead = f"use --image {fit} (build the engine with the same image)" if fit else "no release listed fits this host"
    caps = sorted(g.compute_cap for g in gpus if g.compute_cap is not None and g.compute_cap < needs.min_cap)
    if caps:
        raise ServerError(f"{image} supports GPUs of compute capability {needs.min_cap} and later, and this GPU is "
                          f"{caps[0]}: {instead}")
    old = [g for g in gpus if g.branch < needs.min_driver]
    if not old:
        return []
    what = (f"the NVIDIA driver here ({old[0].driver}) is older than the R{needs.min_driver} that {image} "
            f"(CUDA {needs.cuda}) needs")
    if all(_forward_compatible(g) for g in old):
        return [f"{what}: it runs only on a data-center GPU, through CUDA forward compatibility; otherwise {instead}"]
    raise ServerError(f"{what}: upgrade the driver, or {instead}")


def _container_gpus(gpus: list[HostGpu], flag: str) -> list[HostGpu]:
    ids = gpu_ids(flag)
    return gpus if ids is None else [gpus[int(i)] for i in ids if int(i) < len(gpus)]


def check_gpu_ids(models: list[RepoModel], flag: str, host_count: int | None) -> None:
    """Instance groups name GPUs as the container numbers them: `--gpus 1` makes host GPU 1 the container's device 0,
    and Triton refuses a config that asks for GPU 1 ("invalid or unsupported gpu id")."""
    ids = gpu_ids(flag)
    visible = len(ids) if ids is not None else host_count
    if visible is None:
        return
    for m in models:
        bad = [g for g in m.gpu_ids() if g >= visible]
        if not bad:
            continue
        g = bad[0]
        if ids is not None and str(g) in ids:
            how = f"--gpus {flag} exposes host GPU {g} as device {ids.index(str(g))}: write `tritonctl config --name " \
                  f"{m.name} --gpus {ids.index(str(g))} …`"
        else:
            how = f"it sees devices 0..{visible - 1}: write `tritonctl config --name {m.name} --gpus` with those"
        raise BadInput(f"model '{m.name}' asks for GPU {g}, which the container does not have: {how}")


def check_docker_models(models: list[RepoModel]) -> None:
    """The NGC image has no tritonctl: the local runtime's CPU runner (a python-backend model) cannot load there."""
    local = [m.name for m in models if m.platform == "local_onnx"]
    if local:
        names = ", ".join(f"'{n}'" for n in local)
        raise BadInput(f"model {names} runs on the local runtime's CPU runner (python backend), which the NGC image does "
                       "not have: for --runtime docker write it with `tritonctl config --platform onnxruntime_onnx` or "
                       "serve a TensorRT plan from `tritonctl build-engine`; or serve it with --runtime local")


def engine_warnings(models: list[RepoModel], image: str) -> list[str]:
    """Plans built in another image than the one starting: a TensorRT engine loads only under the TensorRT that
    built it."""
    warnings = []
    for m in models:
        extra = m.meta.extra if m.meta else {}
        built_in = str(extra.get("image") or "")
        if m.platform == "tensorrt_plan" and built_in and built_in != image:
            trt = f" (TensorRT {extra['tensorrt']})" if extra.get("tensorrt") else ""
            warnings.append(f"model '{m.name}': its model.plan was built in {built_in}{trt}, not in {image}; engines do "
                            f"not move across TensorRT versions: rebuild it with `tritonctl build-engine --image {image}`")
    return warnings


def check_docker(s: ServeSettings, models: list[RepoModel], gpus: list[HostGpu] | None) -> list[str]:
    """Everything knowable before the container starts: refuses what cannot work, returns warnings."""
    check_docker_models(models)
    check_gpu_ids(models, s.gpus, len(gpus) if gpus else None)
    return check_host(s.image, _container_gpus(gpus or [], s.gpus)) + engine_warnings(models, s.image)


# The backend each platform runs on (Triton's model configuration); a platform not named here (an ensemble) needs none.
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                     "tensorflow_graphdef": "tensorflow", "tensorflow_savedmodel": "tensorflow"}


def check_local_models(models: list[RepoModel], backends: set[str]) -> None:
    """The local runtime has only the backends the nvidia-pytriton wheel bundles (python): a model written for the
    NGC image would fail to load only after the server started ("unable to find backend library for backend …")."""
    needs = {m.name: (m.platform, m.config.backend or PLATFORM_BACKENDS.get(m.config.platform, "")) for m in models}
    lacking = {name: pair for name, pair in needs.items() if pair[1] and pair[1] not in backends}
    if not lacking:
        return
    names = ", ".join(f"'{name}' ({platform})" for name, (platform, _) in lacking.items())
    wanted = ", ".join(sorted({backend for _, backend in lacking.values()}))
    name = next(iter(lacking)) if len(lacking) == 1 else "NAME"
    raise BadInput(f"model {names} needs Triton's {wanted} backend, which the local runtime does not have (it has "
                   f"{', '.join(sorted(backends)) or 'none'}): the local runtime runs local_onnx (the CPU runner): "
                   f"tritonctl config --name {name} --model build/export/model_fp32.onnx --platform local_onnx; or serve "
                   "it with --runtime docker on a GPU host")


def preflight(s: ServeSettings) -> list[str]:
    """Before anything starts: the local runtime's backends against the models; for docker, `check_docker` with this
    host's GPUs (nvidia-smi)."""
    if s.runtime == "local":
        from tritonctl.serving.runtime import find_local_runtime

        backend_dir = find_local_runtime().backend_dir
        check_local_models(read_repository(s.repo), {p.name for p in backend_dir.iterdir() if p.is_dir()})
        return []
    remote = os.environ.get("DOCKER_HOST", "").startswith(("tcp://", "ssh://"))  # its GPUs are not this host's
    return check_docker(s, read_repository(s.repo), None if remote else host_gpus())


# ---------------------------------------------------------------- docker runtime


def gpu_request(gpus: str) -> Any:
    """A docker DeviceRequest for exactly the GPUs asked for (`all`, or indexes such as `0,1`)."""
    from docker.types import DeviceRequest

    ids = gpu_ids(gpus)
    if ids is None:
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    return DeviceRequest(device_ids=ids, capabilities=[["gpu"]])


# NVIDIA's documented limits for the Triton container (`--shm-size=1g --ulimit memlock=-1 --ulimit stack=67108864`):
# room in /dev/shm for backends that use it, unlimited pinned memory, and the stack size the frameworks expect.
SHM_SIZE = "1g"
STACK_BYTES = 67108864


def container_spec(s: ServeSettings, trt_cache: Path | None = None) -> dict[str, Any]:
    """Keyword arguments for docker's `containers.create`: only the GPUs asked for, the repository read-only (a TensorRT
    EP engine cache writable beside it, when a model asks for one), never privileged, as this user, ports published on
    the host address asked for."""
    from docker.types import Ulimit

    selinux = procs.selinux_enforcing() if s.selinux is None else s.selinux
    volumes = procs.bind(s.repo, CONTAINER_REPO, "ro", selinux)
    if trt_cache is not None:
        volumes.update(procs.bind(trt_cache, TRT_CACHE_IN_CONTAINER, "rw", selinux))
    return {
        "image": s.image,
        "command": ["tritonserver", f"--model-repository={CONTAINER_REPO}", "--log-verbose=0",
                    f"--exit-timeout-secs={EXIT_TIMEOUT_S}"],
        "name": f"{s.name}-{s.http_port}",
        "labels": {CONTAINER_LABEL: "1", f"{CONTAINER_LABEL}.url": s.url},
        "detach": True,
        "privileged": False,
        "user": procs.container_user(),
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
                procs.stream_container(self.container, on_line, self.alive, poll_s=poll_s, since=int(time.time()))
            except procs.StopRequested as stop:
                return stop.name
        return None

    def stop(self, timeout_s: float = 15.0) -> StopResult:
        result = _stop_container(self.container.name, timeout_s, self.container)
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
        raise procs.docker_error(exc, image) from exc


def start_docker(s: ServeSettings, client: Any = None) -> DockerServer:
    """Start the NGC image and wait until it is ready. `client`: a docker client (tests hand in a stand-in)."""
    client = client or docker_client()
    _check_image(client, s.image)
    cache = _prepare_trt_cache(s, read_repository(s.repo))
    server = DockerServer(s, procs.start_container(client, container_spec(s, cache)))
    try:
        wait_ready(s.url, s.timeout_s, server.alive, server.log)
    except BaseException:
        with procs.signals_deferred():
            server.container.remove(force=True)
        raise
    return server


def _stop_container(name: str, timeout_s: float, container: Any = None) -> StopResult:
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


# ---------------------------------------------------------------- either


RunningServer = LocalServer | DockerServer


def start(s: ServeSettings) -> RunningServer:
    return start_docker(s) if s.runtime == "docker" else start_local(s)


def stop_record(record: ServerRecord, timeout_s: float) -> StopResult:
    """Stop a server `serve` started in another process, found through its record."""
    # Forgotten first: a foreground `serve` that sees its server go then knows it was asked to, not a crash.
    record.path().unlink(missing_ok=True)
    try:
        if record.runtime == "docker" and record.container:
            return _stop_container(record.container, timeout_s)
        return _stop_local_record(record, timeout_s)
    except BaseException:
        record.save()  # not stopped: still findable for the next try
        raise
