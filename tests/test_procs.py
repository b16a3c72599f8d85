"""The child-process helper, with real processes: groups, markers, SIGTERM then SIGKILL, signals, log streaming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tritonctl.core import containers, procs
from tritonctl.core.errors import ToolMissing

# A shell that ignores SIGTERM and starts a child that ignores it too: only SIGKILL ends them.
STUBBORN = ["sh", "-c", "trap '' TERM; echo started; sh -c \"trap '' TERM; while :; do sleep 0.1; done\" & wait"]


def _gone(pids: set[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(procs.alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_run_streams_lines_to_callback_and_log(tmp_path: Path) -> None:
    seen: list[str] = []
    log = tmp_path / "tool.log"
    done = procs.run(["sh", "-c", "echo one; echo two >&2; printf 'three'; exit 3"], seen.append, log_file=log,
                     keep_lines=True)
    assert done.exit_code == 3
    assert sorted(seen) == ["one", "three", "two"] and sorted(done.lines) == sorted(seen)
    assert sorted(log.read_text().splitlines()) == ["one", "three", "two"]


def test_run_timeout_ends_the_whole_group() -> None:
    t0 = time.monotonic()
    done = procs.run(STUBBORN, timeout_s=1, stop_timeout_s=0.5)
    assert done.exit_code is None and time.monotonic() - t0 < 10
    assert _gone(set(_leftover_sleepers()), timeout_s=0)


def _leftover_sleepers() -> list[int]:
    return [p for p in procs._pids() if procs.alive(p) and "trap '' TERM" in " ".join(procs.cmdline(p))]


def test_missing_tool_is_tool_missing(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing, match="no-such-tool"):
        procs.run([str(tmp_path / "no-such-tool")])
    text = tmp_path / "not-executable"
    text.write_text("hello")
    with pytest.raises(ToolMissing):
        procs.run([str(text)])


def test_stop_sigterm_then_sigkill_of_everything_it_started() -> None:
    child = procs.spawn(STUBBORN, stdout=subprocess.PIPE)
    try:
        assert child.popen.stdout is not None and child.popen.stdout.readline().strip() == b"started"
        _wait_for(lambda: len(child.members()) >= 2)
        members = child.members()
        assert procs.pgrp(child.pid) == child.pid  # its own group
    finally:
        ended = child.stop(timeout_s=0.5, settle_s=0.2)
    assert ended.found and ended.forced and len(ended.killed) >= 2 and not ended.left
    assert ended.exit_code == -signal.SIGKILL
    assert _gone(members)


def test_stop_in_time_is_not_forced() -> None:
    child = procs.spawn(["sleep", "30"])
    ended = child.stop(timeout_s=5)
    assert ended.found and not ended.forced and ended.exit_code == -signal.SIGTERM and ended.seconds < 5


def test_stop_finds_a_descendant_that_left_the_group_by_its_marker() -> None:
    """A daemonizing grandchild (its own session) is out of the group, but carries the marker."""
    child = procs.spawn([sys.executable, "-c", "import subprocess, time\n"
                         "subprocess.Popen(['sleep', '60'], start_new_session=True)\ntime.sleep(60)"])
    try:
        _wait_for(lambda: len(child.members()) == 2)
        members = child.members()
        assert len({procs.pgrp(p) for p in members}) == 2
    finally:
        ended = child.stop(timeout_s=5, settle_s=0.2)
    assert any("sleep" in k for k in ended.killed)  # the grandchild ignored nothing, but nobody told it to stop
    assert _gone(members)


def test_terminate_members_of_processes_we_did_not_start() -> None:
    """A detached server is not our child: found through its marker, SIGTERMed as a group, the rest SIGKILLed."""
    mark = procs.new_mark()
    launcher = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys\n"
         f"p = subprocess.Popen({STUBBORN!r}, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
         "print(p.pid)"],
        env={**os.environ, procs.MARK_ENV: mark}, capture_output=True, text=True, check=True)
    leader = int(launcher.stdout)

    def members() -> set[int]:
        return set(procs.marked(procs.MARK_ENV, mark))

    try:
        _wait_for(lambda: len(members()) >= 2)
    finally:
        ended = procs.terminate_members(members, leader, timeout_s=0.5, settle_s=0.2)
    assert ended.found and len(ended.killed) >= 2 and not members()


def test_stop_on_signals_raises_stop_requested() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(procs.StopRequested) as info, procs.stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.name == "SIGTERM" and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) == before  # put back


def test_signals_deferred_until_the_cleanup_is_done() -> None:
    finished = False
    with pytest.raises(KeyboardInterrupt), procs.signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        finished = True
    assert finished


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed by SIGKILL cannot stop its children: the kernel sends them SIGTERM for it."""
    pid_file = tmp_path / "pid"
    parent = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tritonctl.core import procs\n"
                               f"c = procs.spawn(['sleep', '60'])\nopen({str(pid_file)!r}, 'w').write(str(c.pid))\n"
                               "time.sleep(60)"])
    try:
        _wait_for(lambda: pid_file.exists() and pid_file.read_text())
        orphan = int(pid_file.read_text())
        assert procs.alive(orphan)
    finally:
        parent.kill()
        parent.wait()
    assert _gone({orphan})


def test_follow_file_until_the_writer_stops(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("before\n")
    running = threading.Event()
    running.set()

    def writer() -> None:
        with open(log, "a") as f:
            for i in range(5):
                f.write(f"line {i}\n")
                f.flush()
                time.sleep(0.05)
            f.write("last, without newline")
        running.clear()

    seen: list[str] = []
    thread = threading.Thread(target=writer)
    thread.start()
    procs.follow_file(log, running.is_set, seen.append, poll_s=0.02, from_end=False)
    thread.join()
    assert seen == ["before"] + [f"line {i}" for i in range(5)] + ["last, without newline"]
    tail: list[str] = []
    procs.follow_file(log, lambda: False, tail.append)  # from the end: what was there before is not shown again
    assert tail == []


class _Container:
    """A container whose log stream never ends although the container has died (as a daemon can leave it)."""

    def __init__(self) -> None:
        self.status = "running"
        self.released = threading.Event()

    def logs(self, stream: bool, follow: bool, **_: object) -> object:
        yield b"hello\n"
        self.released.wait(30)

    def reload(self) -> None:
        pass


def test_stream_container_notices_a_dead_container() -> None:
    container = _Container()
    seen: list[str] = []
    threading.Timer(0.5, lambda: setattr(container, "status", "exited")).start()
    t0 = time.monotonic()
    try:
        containers.stream_container(container, seen.append, lambda: container.status == "running", poll_s=0.1)
    finally:
        container.released.set()
    assert seen == ["hello"] and time.monotonic() - t0 < 5


# ---------------------------------------------------------------- docker: a stand-in client, the engine's refusals

DOCKER_ERRORS = json.loads((Path(__file__).parent / "fixtures" / "docker_errors.json").read_text())


def api_error(case: str) -> Exception:
    """The docker SDK's own exception for one refusal of the engine, as the SDK builds it from the HTTP answer."""
    import docker.errors

    return docker.errors.APIError(f"{DOCKER_ERRORS[case]['status']} Server Error", explanation=DOCKER_ERRORS[case]["explanation"])


class FakeContainer:
    def __init__(self, spec: dict[str, Any], start_error: Exception | None, logs: bytes, exit_status: str) -> None:
        self.spec, self.name, self.status = spec, spec.get("name", "c"), "created"
        self.start_error, self.output, self.exit_status = start_error, logs, exit_status
        self.removed = False
        self.attrs: dict[str, Any] = {"State": {"ExitCode": 0}}

    def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.status = self.exit_status

    def reload(self) -> None:
        import docker.errors

        if self.removed:
            raise docker.errors.NotFound("No such container")

    def logs(self, stream: bool = False, **_: Any) -> Any:
        return iter(self.output.splitlines(keepends=True)) if stream else self.output

    def wait(self) -> dict[str, int]:
        return {"StatusCode": 0}

    def remove(self, force: bool = False) -> None:
        self.removed = True


class FakeImages:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, name: str) -> object:
        if self.error is not None:
            raise self.error
        return object()


class FakeDocker:
    """Stands in for docker.DockerClient, because no Docker engine runs on these machines: the calls tritonctl makes
    are recorded, each spec goes through the real SDK's own conversion into the engine's request (so a keyword the SDK
    rejects fails here too), and the engine's refusals are replayed from fixtures/docker_errors.json."""

    def __init__(self, start_error: Exception | None = None, create_error: Exception | None = None,
                 image_error: Exception | None = None, logs: bytes = b"", exit_status: str = "running") -> None:
        self.containers = self
        self.images = FakeImages(image_error)
        self.created: list[FakeContainer] = []
        self.start_error, self.create_error, self.output, self.exit_status = start_error, create_error, logs, exit_status

    def create(self, **spec: Any) -> FakeContainer:
        from docker.constants import DEFAULT_DOCKER_API_VERSION
        from docker.models.containers import _create_container_args

        _create_container_args({**spec, "version": DEFAULT_DOCKER_API_VERSION})
        if self.create_error is not None:
            raise self.create_error
        container = FakeContainer(spec, self.start_error, self.output, self.exit_status)
        self.created.append(container)
        return container


@pytest.mark.parametrize("case", [k for k in DOCKER_ERRORS if not k.startswith("_")])
def test_dockers_refusals_are_one_line_that_says_what_to_do(case: str) -> None:
    from tritonctl.core import errors

    mapped = containers.docker_error(api_error(case), "nvcr.io/nvidia/tritonserver:25.13-py3", "tritonctl-8000")
    assert type(mapped) is getattr(errors, DOCKER_ERRORS[case]["error"])
    assert "\n" not in str(mapped)
    for word in DOCKER_ERRORS[case]["words"]:
        assert word in str(mapped), str(mapped)


def test_a_container_whose_start_fails_is_removed_not_left_under_its_name() -> None:
    """`containers.run` would leave the created container behind (and its name taken) when start fails."""
    client = FakeDocker(start_error=api_error("no_gpu_runtime"))
    with pytest.raises(ToolMissing, match="NVIDIA Container Toolkit"):
        containers.start_container(client, {"image": "img", "name": "tritonctl-8000", "detach": True, "remove": False})
    [container] = client.created
    assert container.removed and "remove" not in container.spec


def test_run_container_runs_as_this_user(tmp_path: Path) -> None:
    client = FakeDocker(logs=b"built\n")
    done = containers.run_container({"image": "img", "command": ["trtexec"], "detach": True,
                                "volumes": containers.bind(tmp_path, "/work/out", "rw")}, lambda _: None, client=client)
    [container] = client.created
    assert done.exit_code == 0 and container.spec["user"] == f"{os.getuid()}:{os.getgid()}" and container.removed


def test_selinux_label_only_where_selinux_enforces(tmp_path: Path) -> None:
    enforce = tmp_path / "enforce"
    assert not containers.selinux_enforcing(enforce)  # no SELinux at all
    enforce.write_text("0\n")
    assert not containers.selinux_enforcing(enforce)  # permissive
    enforce.write_text("1\n")
    assert containers.selinux_enforcing(enforce)
    assert containers.bind(tmp_path, "/models", "ro", selinux=True) == \
        {str(tmp_path.resolve()): {"bind": "/models", "mode": "ro,z"}}
    assert containers.selinux_labelled({"/a": {"bind": "/b", "mode": "rw"}, "/c": {"bind": "/d", "mode": "ro,Z"}}) == \
        {"/a": {"bind": "/b", "mode": "rw,z"}, "/c": {"bind": "/d", "mode": "ro,Z"}}
