"""A real RTSP camera for tests and benchmarks: `scripts/rtsp_server.py` (GStreamer's RTSP server) as a child process.

    with RtspServer.start({"cam0": h264_path}) as server:
        av.open(server.url("cam0"), options={"rtsp_transport": "tcp"})
        server.pause("cam0")    # a stalled camera: connected, no frames
        server.resume("cam0")
        server.stop()           # the camera goes away (killed: connections drop)
        server.restart()        # and comes back on the same port

The server runs under Debian's python (`/usr/bin/python3`), which has GStreamer's bindings; the venv has none.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
TEST_RUN_ENV = "TRITONCTL_TEST_RUN"  # the marker tests/conftest.py's leak check looks for in every process


def free_port() -> int:
    """A port nobody listens on now (the server binds it a moment later; `start` retries if someone else won)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    def __init__(self, media: dict[str, Path], port: int, host: str = "127.0.0.1", fps: float = 30.0) -> None:
        self.media = {name: Path(path) for name, path in media.items()}
        self.port, self.host, self.fps = port, host, fps
        self.proc: subprocess.Popen[str] | None = None
        self.stderr: IO[bytes] | None = None

    @classmethod
    def start(cls, media: dict[str, Path], port: int | None = None, timeout: float = 15.0) -> RtspServer:
        """Start serving each file at /NAME on `port` (a free one when None) and return once it listens."""
        for attempt in range(3):
            server = cls(media, port or free_port())
            try:
                server._launch(timeout)
                return server
            except RuntimeError as e:
                # a port picked here can be taken by someone else before the server binds it: pick another
                if port is not None or "cannot listen" not in str(e) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def url(self, name: str) -> str:
        if name not in self.media:
            raise KeyError(f"no mount {name!r}; serving {sorted(self.media)}")
        return f"rtsp://{self.host}:{self.port}/{name}"

    def pause(self, name: str) -> None:
        """The mount stops sending frames; its clients stay connected (a stalled camera)."""
        self._command("pause", name)

    def resume(self, name: str) -> None:
        self._command("resume", name)

    def stop(self) -> None:
        """Kill the server's process group and wait: its clients' connections drop, as when a camera loses power."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def restart(self, timeout: float = 15.0) -> None:
        """Stop (if running) and start again on the same port with the same media."""
        self.stop()
        self._launch(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> RtspServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _argv(self) -> list[str]:
        argv = [SYSTEM_PYTHON, str(SCRIPT), "--host", self.host, "--port", str(self.port), "--fps", str(self.fps),
                "--quit-on-eof"]  # if this process dies without stopping it, its stdin closes and it exits
        for name, path in self.media.items():
            argv += ["--media", f"{name}={path}"]
        return argv

    def _launch(self, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if k != TEST_RUN_ENV}
        if TEST_RUN_ENV in os.environ:  # carried so the session's leak check finds the server if it outlives a test
            env[TEST_RUN_ENV] = os.environ[TEST_RUN_ENV]
        # stderr to a file, not a pipe: nobody drains it while the server runs, and a full pipe would stall it
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; stop() closes it)
        # its own process group, so stop() can kill whatever it may start without touching pytest's group
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env, cwd=ROOT, start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() == "ready":
            return
        if ready:  # stdout closed or said something else: the server exited; its stderr says why
            self.proc.wait(timeout=5)
            why = f"exited with {self.proc.returncode}"
        else:
            why = f"not ready after {timeout:.0f} s"
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        raise RuntimeError(f"RTSP server on port {self.port} {why}: {self.stderr_text() or '(no stderr)'}")

    def stderr_text(self) -> str:
        """What the server (this run of it) wrote on stderr so far."""
        if self.stderr is None or self.stderr.closed:
            return ""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").strip()

    def _command(self, verb: str, name: str, timeout: float = 5.0) -> None:
        """Send one command and wait for the server's `ok VERB NAME`, so the change is in effect on return."""
        self.url(name)  # a KeyError for a mount it does not serve
        if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None or self.proc.stdout is None:
            raise RuntimeError("the RTSP server is not running")
        self.proc.stdin.write(f"{verb} {name}\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            answer = self.proc.stdout.readline().strip() if sel.select(timeout) else ""
        if answer != f"ok {verb} {name}":
            raise RuntimeError(f"RTSP server did not acknowledge {verb!r} {name!r} within {timeout} s: {answer!r}")
