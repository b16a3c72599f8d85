"""serve / status / stop against the real local Triton, driven through the CLI as a user would."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TRITONCTL, assert_one_line_error, free_ports, run_cli

from tritonctl import procs
from tritonctl.endpoint import parse_endpoint
from tritonctl.errors import BadInput
from tritonctl.server import (
    STUB,
    DockerServer,
    ServerRecord,
    ServeSettings,
    container_spec,
    diagnose,
    find_records,
    is_ready,
    port_free,
    records,
    shm_regions,
    start_local,
    sweep_orphans,
)
from tritonctl.status import summarize_stats

pytestmark = pytest.mark.server


def _ports() -> list[str]:
    h, g, m = free_ports(3)
    return ["--http-port", str(h), "--grpc-port", str(g), "--metrics-port", str(m)]


def test_serve_detach_status_infer_stop(tiny_repo: Path, tiny_onnx: Path) -> None:
    import onnxruntime as ort
    import tritonclient.http as http

    ports = _ports()
    url = f"127.0.0.1:{ports[1]}"
    started = run_cli("serve", "--repo", str(tiny_repo), *ports, "--detach")
    assert started.returncode == 0, started.stderr
    try:
        server_id = _server_id(url)
        status = run_cli("status", "--url", f"http://localhost:{ports[1]}/", "--json")  # any spelling of the endpoint
        assert status.returncode == 0, status.stderr
        [data] = json.loads(status.stdout)  # a list, even for one server
        assert data["ready"] and data["version"].startswith("2.")
        assert [(m["name"], m["state"], m["platform"], m["max_batch"]) for m in data["models"]] == \
            [("tiny", "READY", "python", 8)]
        assert "system_shared_memory" in data["extensions"]

        x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
        inp = http.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = http.InferenceServerClient(url).infer("tiny", [inp]).as_numpy("output0")
        want = ort.InferenceSession(str(tiny_onnx)).run(None, {"images": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert STUB in _names(server_id) and shm_regions(server_id)  # what stop must clean up
    finally:
        stopped = run_cli("stop", "--url", url)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped in "), stopped.stdout
    assert not is_ready(url)
    _assert_nothing_left(server_id, int(ports[1]))
    after = run_cli("status", "--url", url)
    assert after.returncode == 4 and len(after.stderr.strip().splitlines()) == 1


def test_stacked_requests_match_single(triton: object, tiny_onnx: Path) -> None:
    """Concurrent requests are batched by Triton and split back per request by the CPU runner."""
    import onnxruntime as ort
    import tritonclient.http as http

    client = http.InferenceServerClient(triton.url, concurrency=8)  # type: ignore[attr-defined]
    xs = [np.full((1, 3, 32, 32), i / 10, np.float32) for i in range(12)]
    pending = []
    for x in xs:
        inp = http.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        pending.append(client.async_infer("tiny", [inp]))
    session = ort.InferenceSession(str(tiny_onnx))
    for x, p in zip(xs, pending, strict=False):
        np.testing.assert_allclose(p.get_result().as_numpy("output0"), session.run(None, {"images": x})[0], atol=1e-6)
    stats = client.get_inference_statistics("tiny")["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_count"])  # some requests ran together


def test_model_that_fails_to_load(tmp_path: Path, tiny_repo: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "broken")
    (repo / "broken" / "config.pbtxt").write_text((repo / "broken" / "config.pbtxt").read_text().replace("tiny", "broken"))
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    result = run_cli("serve", "--repo", str(repo), *_ports(), "--detach", "--timeout", "60")
    assert_one_line_error(result, 5, "broken", "failed to load")


def test_port_in_use(tiny_repo: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        h, g = free_ports(2)
        result = run_cli("serve", "--repo", str(tiny_repo), "--http-port", str(h), "--grpc-port", str(g),
                         "--metrics-port", str(port), "--detach")
    assert_one_line_error(result, 2, f"port {port}", "already in use")


def test_server_that_never_becomes_ready(tmp_path: Path, tiny_repo: Path) -> None:
    """A model whose initialize outlasts --timeout: serve gives up, says so, and leaves no server behind."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "slow")
    cfg = repo / "slow" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"tiny"', '"slow"'))
    (repo / "slow" / "1" / "model.py").write_text(
        "import time\nclass TritonPythonModel:\n    def initialize(self, args):\n        time.sleep(60)\n")
    ports = _ports()
    result = run_cli("serve", "--repo", str(repo), *ports, "--detach", "--timeout", "3")
    assert_one_line_error(result, 4, "not ready", "after 3 s")
    assert not is_ready(f"127.0.0.1:{ports[1]}")
    with socket.socket() as sock:  # the port was given back: the server is gone
        sock.bind(("127.0.0.1", int(ports[1])))


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--repo", "/no/such/repo"], 2, ["/no/such/repo", "does not exist"]),
        (["--runtime", "podman"], 2, ["podman"]),
        (["--http-port", "70000"], 2, ["65535"]),
        (["--runtime", "docker", "--gpus", "first"], 2, ["--gpus"]),
    ],
)
def test_bad_input(tiny_repo: Path, args: list[str], code: int, words: list[str]) -> None:
    base = ["--repo", str(tiny_repo)] if "--repo" not in args else []
    assert_one_line_error(run_cli("serve", *base, *args), code, *words)


def test_docker_unavailable_is_one_line(tiny_repo: Path) -> None:
    """No Docker engine runs on these machines: the docker runtime must say so in one line."""
    result = run_cli("serve", "--runtime", "docker", "--repo", str(tiny_repo), *_ports(),
                     env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert_one_line_error(result, 3, "Docker")


def test_container_spec(tiny_repo: Path) -> None:
    """The container handed to the docker SDK (no engine here to run it): GPUs asked for, read-only repo, loopback."""
    h, g, m = free_ports(3)
    s = ServeSettings.create(runtime="docker", repo=tiny_repo, http_port=h, grpc_port=g, metrics_port=m, gpus="0,1")
    spec = container_spec(s)
    assert spec["privileged"] is False
    assert spec["volumes"] == {str(tiny_repo.resolve()): {"bind": "/models", "mode": "ro"}}
    assert spec["ports"] == {"8000/tcp": ("127.0.0.1", h), "8001/tcp": ("127.0.0.1", g), "8002/tcp": ("127.0.0.1", m)}
    [request] = spec["device_requests"]
    assert request["DeviceIDs"] == ["0", "1"] and request["Capabilities"] == [["gpu"]]
    assert "--model-repository=/models" in spec["command"]
    assert spec["labels"]["tritonctl"] == "1"
    all_gpus = container_spec(ServeSettings.create(runtime="docker", repo=tiny_repo, http_port=h, grpc_port=g,
                                                   metrics_port=m))
    assert all_gpus["device_requests"][0]["Count"] == -1


def test_gpus_validation() -> None:
    from tritonctl.server import gpu_ids

    assert gpu_ids("all") is None and gpu_ids("0, 2") == ["0", "2"]
    with pytest.raises(BadInput):
        gpu_ids("a,b")


def test_diagnose_reads_tritons_own_lines() -> None:
    log = (
        "I1125 05:00:00.000 1 server.cc:1] started\n"
        "E1125 05:00:01.000 1 model_lifecycle.cc:654] failed to load 'yolo' version 1: Invalid argument: "
        "unexpected inference output 'out', allowed outputs are: output0\n"
        "| yolo  | 1       | UNAVAILABLE: Invalid argument: unexpected inference output |\n"
    )
    assert diagnose(log) == ("model 'yolo' (version 1) failed to load: Invalid argument: unexpected inference output "
                             "'out', allowed outputs are: output0")
    assert diagnose("E1125 05:00:00.000 1 server.cc:2] bind failed\n") == "bind failed"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_foreground_serve_ends_the_whole_server_on_a_stop_signal(tiny_repo: Path, signum: int) -> None:
    """Ctrl-C, and what systemd, Docker, Kubernetes or a closed terminal send: no tritonserver, no stub, no shared
    memory and no busy port are left."""
    ports = _ports()
    url = f"127.0.0.1:{ports[1]}"
    proc = subprocess.Popen([*TRITONCTL, "serve", "--repo", str(tiny_repo), *ports], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the foreground loop has started once it says how to stop it
            if "Ctrl-C stops the server" in line:
                break
        assert is_ready(url)
        server_id = _server_id(url)
        assert "tritonserver" in _names(server_id) and STUB in _names(server_id)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    assert signal.Signals(signum).name in stderr and "stopped in" in stdout, (stdout, stderr)
    _assert_nothing_left(server_id, int(ports[1]))


def test_foreground_serve_killed_takes_its_server_along(tiny_repo: Path) -> None:
    """SIGKILL cannot be caught: the kernel sends tritonserver SIGTERM when its foreground `serve` dies."""
    ports = _ports()
    url = f"127.0.0.1:{ports[1]}"
    proc = subprocess.Popen([*TRITONCTL, "serve", "--repo", str(tiny_repo), *ports], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C stops the server" in line:
                break
        server_id = _server_id(url)
    finally:
        proc.kill()
        proc.wait()
    _assert_nothing_left(server_id, int(ports[1]), timeout_s=30)
    assert not find_records(parse_endpoint(url))  # its record is pruned once read


def test_stop_tells_how_it_went() -> None:
    """Triton's own shutdown lines (its format, 2.51) become the words `stop` prints."""
    from tritonctl.server import StopResult, _shutdown_notes

    log = ("Signal (15) received.\n"
           'I1125 20:44:16.979006 6622 http_server.cc:248] "Timeout 10: Found 12 HTTP service connections"\n'
           'I1125 20:44:25.980413 6622 http_server.cc:248] "Timeout 1: Found 3 HTTP service connections"\n'
           'E1125 20:44:26.981461 6622 main.cc:535] "failed to stop server: Internal - Exit timeout expired. '
           'Exiting immediately."\nSignal (11) received.\n')
    notes = _shutdown_notes(log, exit_code=-11, killed=False)
    assert notes == ("Triton's 10 s exit timeout expired waiting for 3 open HTTP client connections",
                     "tritonserver crashed while exiting (signal 11)")
    forced = StopResult(True, 12.94, ("triton_python_backend_stub (pid 7)",), regions_removed=2, notes=notes)
    assert forced.describe().startswith("stopped (forced after 12.9 s: SIGKILL to triton_python_backend_stub (pid 7); "
                                        "Triton's 10 s exit timeout")
    assert "removed 2 shared-memory region(s)" in forced.describe()
    assert StopResult(True, 1.23).describe() == "stopped in 1.2 s"
    assert _shutdown_notes("Signal (15) received.\n", exit_code=0, killed=False) == ()
    assert StopResult(False, notes=_shutdown_notes("", -9, False)).describe() == "already gone (tritonserver ended by SIGKILL)"


def test_killed_server_leaves_no_stub_and_no_shared_memory(tiny_repo: Path) -> None:
    """tritonserver SIGKILLed under load: its stubs can hang on the way out (parent init, ~600 MB each, SIGTERM
    ignored) and its regions stay in /dev/shm. The next start (here: the sweep it runs) and stop() end them."""
    import tritonclient.http as http

    h, g, m = free_ports(3)
    server = start_local(ServeSettings.create(runtime="local", repo=tiny_repo, http_port=h, grpc_port=g, metrics_port=m))
    server_id = server.server_id
    running = threading.Event()
    running.set()

    def load() -> None:
        client = http.InferenceServerClient(server.url, concurrency=4)
        x = np.zeros((4, 3, 32, 32), np.float32)
        while running.is_set():
            inp = http.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                for pending in [client.async_infer("tiny", [inp]) for _ in range(4)]:
                    pending.get_result()
            except Exception:
                time.sleep(0.05)
        client.close()

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        assert STUB in _names(server_id) and shm_regions(server_id)
        server.process.kill()
        server.process.wait()
        time.sleep(0.5)
        sweep_orphans()  # what the next start_local does first
        assert not procs.marked(procs.MARK_ENV, server_id) and not shm_regions(server_id)
    finally:
        running.clear()
        for t in threads:
            t.join()
        result = server.stop()
    assert not result.found and not result.left
    _assert_nothing_left(server_id, h)


def test_stop_after_the_server_was_killed(tiny_repo: Path) -> None:
    """`tritonctl stop` on a detached server whose tritonserver was SIGKILLed: says so, leaves nothing."""
    ports = _ports()
    url = f"127.0.0.1:{ports[1]}"
    started = run_cli("serve", "--repo", str(tiny_repo), *ports, "--detach")
    assert started.returncode == 0, started.stderr
    [record] = find_records(parse_endpoint(url))
    assert record.pid is not None and STUB in _names(record.server_id)
    procs.kill_all([record.pid])
    stopped = run_cli("stop", "--url", url, "--timeout", "5")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("already gone"), stopped.stdout
    assert not record.path().exists()
    _assert_nothing_left(record.server_id, int(ports[1]))


def test_records_of_dead_servers_are_pruned(tmp_path: Path) -> None:
    """A server that died without `stop`: its record is forgotten when read, and what it left is removed."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    server_id = procs.new_mark()
    region = Path("/dev/shm") / f"tritonctl_{server_id}_0123"
    region.write_bytes(b"x")
    record = ServerRecord("local", f"127.0.0.1:{free_ports(1)[0]}", pid=dead.pid, server_id=server_id)
    record.save()
    try:
        assert record.path().exists()
        assert all(r.server_id != server_id for r in records())
        assert not record.path().exists() and not region.exists()
    finally:
        region.unlink(missing_ok=True)
        record.path().unlink(missing_ok=True)


def test_status_averages_are_weighted_across_versions() -> None:
    """Triton's statistics hold total ns per version; two versions give one row weighted by their requests."""
    stats = {"model_stats": [
        {"name": "m", "version": "1", "inference_count": 30, "execution_count": 10,
         "inference_stats": {"success": {"count": 30, "ns": 0}, "queue": {"count": 30, "ns": 30 * 1_000_000},
                             "compute_infer": {"count": 30, "ns": 30 * 10_000_000}}},
        {"name": "m", "version": "2", "inference_count": 10, "execution_count": 10,
         "inference_stats": {"success": {"count": 10, "ns": 0}, "queue": {"count": 10, "ns": 10 * 5_000_000},
                             "compute_infer": {"count": 10, "ns": 10 * 20_000_000}}},
    ]}
    both = summarize_stats(stats)
    assert (both.inference_count, both.execution_count) == (40, 20)
    assert both.avg_queue_ms == pytest.approx((30 * 1 + 10 * 5) / 40)
    assert both.avg_compute_ms == pytest.approx((30 * 10 + 10 * 20) / 40)
    v2 = summarize_stats(stats, version="2")
    assert (v2.inference_count, v2.avg_queue_ms, v2.avg_compute_ms) == (10, pytest.approx(5.0), pytest.approx(20.0))
    idle = summarize_stats({"model_stats": [{"name": "m", "version": "1"}]})
    assert idle.inference_count == 0 and idle.avg_queue_ms is None


def test_status_reads_the_url_as_typed(triton: object) -> None:
    url = triton.url  # type: ignore[attr-defined]
    port = url.rsplit(":", 1)[1]
    for typed in (f"http://{url}", f"http://localhost:{port}/", url):
        result = run_cli("status", "--url", typed, "--json")
        assert result.returncode == 0, (typed, result.stderr)
        [data] = json.loads(result.stdout)
        assert data["ready"] and [m["name"] for m in data["models"]] == ["tiny"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["status", "--url", "http://::::"], ["--url", "brackets"]),
        (["status", "--url", "a b"], ["--url"]),
        (["status", "--url", "127.0.0.1:99999"], ["65535"]),
        (["stop", "--url", "http://host:port"], ["--url", "port"]),
        (["stop", "--url", "[::1"], ["--url"]),
        (["stop", "--timeout", "-1"], ["--timeout"]),
        (["serve", "--host", "http://example.com"], ["--host"]),
        (["serve", "--host", "10.0.0.1:8000"], ["--host"]),
    ],
)
def test_bad_endpoints_are_one_line(tiny_repo: Path, args: list[str], words: list[str]) -> None:
    extra = ["--repo", str(tiny_repo)] if args[0] == "serve" else []
    assert_one_line_error(run_cli(*args, *extra), 2, *words)


class _DyingContainer:
    """The docker SDK's container, as far as DockerServer uses it: it dies while its log stream stays open."""

    name = "tritonctl-test"

    def __init__(self) -> None:
        self.status = "running"
        self.released = threading.Event()

    def reload(self) -> None:
        pass

    def logs(self, stream: bool = False, follow: bool = False, **_: object) -> object:
        if not stream:
            return b"I1125 started\n"
        return self._stream()

    def _stream(self) -> object:
        yield b"I1125 started\n"
        self.released.wait(30)


def test_foreground_docker_server_notices_its_container_dying(tiny_repo: Path) -> None:
    """No Docker engine here: the container is a stand-in with the SDK's shape; the poll is what is tested."""
    h, g, m = free_ports(3)
    settings = ServeSettings.create(runtime="docker", repo=tiny_repo, http_port=h, grpc_port=g, metrics_port=m)
    container = _DyingContainer()
    server = DockerServer(settings, container)
    threading.Timer(0.5, lambda: setattr(container, "status", "exited")).start()
    seen: list[str] = []
    t0 = time.monotonic()
    try:
        assert server.follow(seen.append, poll_s=0.1) is None  # ended by the container, not by a signal
    finally:
        container.released.set()
    assert time.monotonic() - t0 < 5 and not server.alive()


# ---------------------------------------------------------------- helpers


def _server_id(url: str) -> str:
    [record] = find_records(parse_endpoint(url))
    assert record.server_id
    return record.server_id


def _names(server_id: str) -> list[str]:
    """The program names of a server's live processes (tritonserver, its stubs)."""
    return [Path(args[0]).name for pid in procs.marked(procs.MARK_ENV, server_id) if (args := procs.cmdline(pid))]


def _assert_nothing_left(server_id: str, http_port: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while procs.marked(procs.MARK_ENV, server_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _names(server_id) == []
    assert shm_regions(server_id) == []
    assert port_free("127.0.0.1", http_port)
