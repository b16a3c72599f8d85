"""serve / status / stop against the real local Triton, driven through the CLI as a user would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TRITONCTL, Triton, assert_one_line_error, free_ports, run_cli

from tritonctl.core import procs
from tritonctl.core.endpoint import parse_endpoint
from tritonctl.core.errors import BadInput
from tritonctl.inference.client import REGION_PREFIX, InferSlot, Upstream, fetch_model_info
from tritonctl.serving.container import DockerServer, container_spec
from tritonctl.serving.leftovers import STUB, shm_regions, sweep_orphans
from tritonctl.serving.local import start_local
from tritonctl.serving.readiness import diagnose, is_ready
from tritonctl.serving.records import ServerRecord, find_records, records
from tritonctl.serving.settings import ServeSettings, port_free
from tritonctl.serving.status import summarize_stats

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
    """Named with the meaningful line of Triton's error: not the Python backend's traceback that Triton logs after it
    (escaped newlines, "At:", file names), nor the log's closing quote."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "broken")
    (repo / "broken" / "config.pbtxt").write_text((repo / "broken" / "config.pbtxt").read_text().replace("tiny", "broken"))
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    result = run_cli("serve", "--repo", str(repo), *_ports(), "--detach", "--timeout", "60")
    assert_one_line_error(result, 5, "model 'broken' (version 1) failed to load", "Protobuf parsing failed.")
    line = result.stderr.strip()
    assert "At:" not in line and "\\n" not in line and ".py(" not in line and line.endswith("parsing failed."), line


def test_local_runtime_refuses_models_it_has_no_backend_for(tmp_path: Path, tiny_onnx: Path) -> None:
    """A config written for the NGC image (onnxruntime_onnx, a plan) cannot load on the local runtime, which has only
    the python backend: refused before anything starts, naming the model and what the local runtime runs instead."""
    from tritonctl.model.repository import ConfigSettings, write_model

    repo = tmp_path / "repo"
    write_model(ConfigSettings.create(name="gpu_onnx", model_file=tiny_onnx, repo=repo, platform="onnxruntime_onnx"))
    write_model(ConfigSettings.create(name="cpu_onnx", model_file=tiny_onnx, repo=repo))
    t0 = time.monotonic()
    result = run_cli("serve", "--repo", str(repo), *_ports(), "--detach")
    assert_one_line_error(result, 2, "model 'gpu_onnx' (onnxruntime_onnx) needs Triton's onnxruntime backend",
                          "tritonctl config --name gpu_onnx --model build/export/model_fp32.onnx --platform local_onnx")
    assert "cpu_onnx" not in result.stderr and time.monotonic() - t0 < 30


def test_detached_server_outlives_a_reader_that_leaves(tiny_repo: Path) -> None:
    """`serve -d 2>&1 | grep -m1 ready`: the reader closes the pipe after the ready line. The server, ready and
    recorded by then, stays up and `tritonctl stop` stops it; `serve` exits 0 without a word more."""
    ports = _ports()
    url = f"127.0.0.1:{ports[1]}"
    proc = subprocess.Popen([*TRITONCTL, "serve", "--repo", str(tiny_repo), *ports, "--detach"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # before the model table that follows the ready line
        assert proc.wait(timeout=60) == 0
        assert first.startswith("ready in ") and is_ready(url), first
        server_id = _server_id(url)
    finally:
        proc.kill()
        proc.wait()
        stopped = run_cli("stop", "--url", url)
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped in "), (stopped.stdout, stopped.stderr)
    _assert_nothing_left(server_id, int(ports[1]))


def test_foreground_serve_stops_its_server_when_its_reader_leaves(tiny_repo: Path) -> None:
    """`serve | head -1`: as a Unix tool whose reader went away, it ends quietly with 141 (128 + SIGPIPE), and, being in
    the foreground, stops its server on the way out."""
    ports = _ports()
    url = f"127.0.0.1:{ports[1]}"
    proc = subprocess.Popen([*TRITONCTL, "serve", "--repo", str(tiny_repo), *ports], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("ready in ")
        server_id = _server_id(url)
        proc.stdout.close()
        assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert stderr == "", stderr
    assert not find_records(parse_endpoint(url), prune=False)
    _assert_nothing_left(server_id, int(ports[1]))


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


def test_docker_unavailable_is_one_line(tmp_path: Path) -> None:
    """No Docker engine runs on these machines: the docker runtime must say so in one line (for a repository the NGC
    image can serve: a local_onnx one is refused before Docker is asked)."""
    result = run_cli("serve", "--runtime", "docker", "--repo", str(_gpu_repo(tmp_path)), *_ports(),
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
    from tritonctl.core.containers import gpu_ids

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


def test_diagnose_keeps_the_first_line_of_a_python_backend_error() -> None:
    """Triton quotes the message and escapes its newlines; the Python backend appends the stub's traceback."""
    log = ('E1125 21:33:03.709912 31723 model_lifecycle.cc:642] "failed to load \'shapes\' version 1: Internal: '
           'InvalidProtobuf: Load model from /r/shapes/1/model.onnx failed:Protobuf parsing failed.\\n\\nAt:\\n  '
           '/venv/onnxruntime_inference_collection.py(753): _create_inference_session\\n  '
           '/work/tritonctl/model/cpu_runner.py(32): initialize\\n"\n')
    assert diagnose(log) == ("model 'shapes' (version 1) failed to load: Internal: InvalidProtobuf: Load model from "
                             "/r/shapes/1/model.onnx failed:Protobuf parsing failed.")
    quoted = 'E1125 21:33:03.709912 1 model_lifecycle.cc:642] "failed to load \'m\' version 1: Invalid argument: x"\n'
    assert diagnose(quoted) == "model 'm' (version 1) failed to load: Invalid argument: x"


def _foreground_serve(repo: Path, ports: list[str], stderr: int) -> subprocess.Popen[str]:
    """`tritonctl serve` in the foreground, returned once its loop has started (it says how to stop it)."""
    proc = subprocess.Popen([*TRITONCTL, "serve", "--repo", str(repo), *ports], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ctrl-C stops the server" in line:
            break
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_foreground_serve_ends_the_whole_server_on_a_stop_signal(tiny_repo: Path, signum: int) -> None:
    """Ctrl-C, and what systemd, Docker, Kubernetes or a closed terminal send: no tritonserver, no stub, no shared
    memory and no busy port are left."""
    ports = _ports()
    url = f"127.0.0.1:{ports[1]}"
    proc = _foreground_serve(tiny_repo, ports, subprocess.PIPE)
    try:
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
    proc = _foreground_serve(tiny_repo, ports, subprocess.DEVNULL)
    try:
        server_id = _server_id(url)
    finally:
        proc.kill()
        proc.wait()
    _assert_nothing_left(server_id, int(ports[1]), timeout_s=30)
    assert not find_records(parse_endpoint(url))  # its record is pruned once read


def test_stop_tells_how_it_went() -> None:
    """Triton's own shutdown lines (its format, 2.51) become the words `stop` prints."""
    from tritonctl.serving.stopping import StopResult, _shutdown_notes

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


def test_status_says_when_it_forgets_a_dead_server(tmp_path: Path) -> None:
    """A record whose server died without `stop` is dropped by `status`: said once, in yellow on stderr, not an error
    of its own."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    env = {"TRITONCTL_STATE_DIR": str(tmp_path)}
    url = f"127.0.0.1:{free_ports(1)[0]}"
    record = ServerRecord("local", url, pid=dead.pid, server_id=procs.new_mark(), log_file=str(tmp_path / "triton.log"))
    (tmp_path / record.path().name).write_text(json.dumps(record.__dict__))
    first = run_cli("status", env=env)
    said = [line for line in first.stderr.splitlines() if line.startswith("forgot")]
    assert said == [f"forgot the server at {url}: its process is gone (log: {tmp_path / 'triton.log'})"], first.stderr
    assert "Traceback" not in first.stderr and not list(tmp_path.glob("server-*.json"))
    assert "forgot" not in run_cli("status", env=env).stderr


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
        (["stop", "--all", "--url", "127.0.0.1:8000"], ["--url", "--all"]),
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


# ---------------------------------------------------------------- what a server's clean-up may touch, which servers `stop` ends


def _shm_files(slot: InferSlot) -> list[Path]:
    return [Path("/dev/shm") / r.key.lstrip("/") for r in (slot._in, slot._out) if r is not None]


def _serve_and_stop(repo: Path) -> None:
    """Another local server, started and stopped as a user does: both run the orphan sweep and a clean-up."""
    ports = _ports()
    started = run_cli("serve", "--repo", str(repo), *ports, "--detach")
    assert started.returncode == 0, started.stderr
    stopped = run_cli("stop", "--url", f"127.0.0.1:{ports[1]}")
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped"), (stopped.stdout, stopped.stderr)


def test_another_server_starting_and_stopping_leaves_a_clients_regions_alone(triton: Triton, tiny_repo: Path) -> None:
    """Client regions were named `tritonctl_<pid>_…`, which the servers' clean-up (prefix `tritonctl_`) took for a
    dead server's: any `serve`/`stop` on the host removed every running client's regions."""
    info = fetch_model_info("http", parse_endpoint(triton.url), "tiny")
    slot = InferSlot(info, 2, "http", use_shm=True)
    ep = Upstream(parse_endpoint(triton.url))
    try:
        slot.inputs[:] = 0.25
        first = slot.infer(ep, 2).copy()
        regions = _shm_files(slot)
        assert len(regions) == 2 and all(r.exists() for r in regions)
        _serve_and_stop(tiny_repo)
        assert [r for r in regions if not r.exists()] == []
        assert not set(regions) & set(shm_regions())  # no server's to clean up
        np.testing.assert_array_equal(slot.infer(ep, 2), first)
    finally:
        problems = slot.close()
    assert problems == [] and not any(r.exists() for r in regions)


def test_a_detect_run_keeps_its_regions_while_another_server_starts_and_stops(triton: Triton, tiny_repo: Path,
                                                                             tmp_path: Path) -> None:
    """The issue's run: a detect with shared memory while an unrelated `serve --detach` and `stop` ran lost every
    region and ended with a `destroy …: FileNotFoundError` line per region and resource_tracker warnings."""
    from tritonctl.vision.synthetic import write_video

    video = tmp_path / "v.mp4"
    write_video(video, n_frames=300, width=64, height=48, seed=4)
    summary = tmp_path / "s.json"
    proc = subprocess.Popen([*TRITONCTL, "detect", str(video), "-m", "tiny", "--url", triton.url, "--shm", "system",
                             "--summary-json", str(summary)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        regions = _wait_for_regions(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)  # held mid-run, regions registered, while the other server comes and goes
        try:
            _serve_and_stop(tiny_repo)
            assert [r for r in regions if not r.exists()] == []
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    for word in ("FileNotFoundError", "resource_tracker", "leaked", "removed by another", "refused shared memory"):
        assert word not in stdout + stderr, stdout + stderr
    data = json.loads(summary.read_text())
    assert data["problems"] == [] and data["shared_memory"] and data["frames"]["inferred"] == 300


def _wait_for_regions(pid: int, timeout_s: float = 60) -> list[Path]:
    """A client's regions in /dev/shm, once it has made them (their names carry its pid)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if list(Path("/dev/shm").glob(f"{REGION_PREFIX}{pid}_*")):
            time.sleep(0.2)  # every worker's
            return list(Path("/dev/shm").glob(f"{REGION_PREFIX}{pid}_*"))
        time.sleep(0.02)
    raise AssertionError(f"process {pid} made no shared-memory region")


def _cli_in(folder: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tritonctl` run from another folder (another checkout), with its own state folder."""
    return subprocess.run([*TRITONCTL, *args], capture_output=True, text=True, timeout=180, cwd=folder,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TRITONCTL_STATE_DIR": str(state)},
                          stdin=subprocess.DEVNULL)


def test_stop_without_url_stops_only_this_folders_servers(tmp_path: Path, tiny_repo: Path, tiny_onnx: Path) -> None:
    """Two checkouts, each serving its own `model_repository` (the default, typed relative): `stop` in one stopped
    both, and `config` in one told to restart the other's server."""
    state, urls = tmp_path / "state", {}
    for name in ("a", "b"):
        shutil.copytree(tiny_repo, tmp_path / name / "model_repository")
        ports = _ports()
        started = _cli_in(tmp_path / name, state, "serve", *ports, "--detach")
        assert started.returncode == 0, started.stderr
        urls[name] = f"127.0.0.1:{ports[1]}"
    try:
        written = sorted(json.loads(p.read_text())["repo"] for p in state.glob("server-*.json"))
        config = _cli_in(tmp_path / "a", state, "config", "--name", "second", "--model", str(tiny_onnx))
        assert config.returncode == 0, config.stderr
        said = " ".join(config.stdout.split())
        assert f"stop --url {urls['a']}" in said and urls["b"] not in said, said
        assert f"--http-port {urls['a'].split(':')[1]}" in said  # the restart keeps its ports

        stopped = _cli_in(tmp_path / "a", state, "stop")
        assert stopped.returncode == 0, stopped.stderr
        said = " ".join(stopped.stdout.split())
        assert said.startswith("stopped in ") and f"server at {urls['a']}" in said, said
        assert f"left running: {urls['b']} ({(tmp_path / 'b' / 'model_repository').resolve()})" in said, said
        assert "tritonctl stop --all" in said
        assert not is_ready(urls["a"]) and is_ready(urls["b"])
        assert written == [str((tmp_path / n / "model_repository").resolve()) for n in ("a", "b")]  # absolute

        again = _cli_in(tmp_path / "a", state, "stop")
        assert again.returncode == 0 and again.stdout.startswith("nothing to stop"), again.stdout
        assert is_ready(urls["b"])
    finally:
        everything = _cli_in(tmp_path, state, "stop", "--all")
    assert everything.returncode == 0 and f"server at {urls['b']}" in everything.stdout, everything.stdout
    assert not is_ready(urls["b"])


def test_a_record_with_a_relative_repository_is_no_folders_server(tmp_path: Path, tiny_onnx: Path) -> None:
    """Records written before repositories were resolved kept `model_repository` as typed: it named a repository in
    whichever folder read it. Such a server (here docker's: nothing tells where it was started) is stopped only by
    --url or --all, and `config` says nothing of it."""
    state, folder = tmp_path / "state", tmp_path / "checkout"
    (folder / "model_repository").mkdir(parents=True)
    url = f"127.0.0.1:{free_ports(1)[0]}"
    state.mkdir()
    record = ServerRecord("docker", url, container="tritonctl-elsewhere", repo="model_repository")
    (state / record.path().name).write_text(json.dumps({k: v for k, v in record.__dict__.items() if k != "serve_flags"}))
    stopped = _cli_in(folder, state, "stop")
    assert stopped.returncode == 0, stopped.stderr
    said = " ".join(stopped.stdout.split())
    assert said.startswith("nothing to stop") and f"left running: {url} (repository unknown)" in said, said
    config = _cli_in(folder, state, "config", "--name", "m", "--model", str(tiny_onnx))
    assert config.returncode == 0 and "restart" not in config.stdout, config.stdout
    assert list(state.glob("server-*.json"))  # still findable by --url and --all


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


# ---------------------------------------------------------------- the docker runtime, checked as data (no Docker engine here)

FIXTURES = Path(__file__).parent / "fixtures"


def _docker_run_kwargs(command: str) -> dict[str, object]:
    """The docker SDK keywords that a `docker run` command line stands for (the flags NVIDIA's command uses)."""
    import shlex

    from docker.types import Ulimit

    from tritonctl.core.containers import gpu_request

    tokens = shlex.split(command)[2:]
    kw: dict[str, object] = {"ports": {}, "volumes": {}, "ulimits": []}
    while tokens[0].startswith("-"):
        token = tokens.pop(0)
        if token.startswith(("-p", "-v")):  # attached values: -p8000:8000, -v/host:/container
            host, target = token[2:].rsplit(":", 1)
            if token.startswith("-p"):
                kw["ports"][f"{target}/tcp"] = int(host)  # type: ignore[index]
            else:
                kw["volumes"][host] = {"bind": target, "mode": "rw"}  # type: ignore[index]
            continue
        flag, eq, value = token.partition("=")
        if flag == "--rm":
            continue
        value = value if eq else tokens.pop(0)
        if flag == "--gpus":
            kw["device_requests"] = [gpu_request(value.strip('"').removeprefix("device="))]
        elif flag == "--ipc":
            kw["ipc_mode"] = value
        elif flag == "--shm-size":
            kw["shm_size"] = value
        elif flag == "--ulimit":
            name, limit = value.split("=")
            kw["ulimits"].append(Ulimit(name=name, soft=int(limit), hard=int(limit)))  # type: ignore[attr-defined]
    kw["image"], kw["command"] = tokens[0], tokens[1:]
    return kw


def _engine_request(kw: dict[str, object]) -> dict[str, object]:
    """What the docker SDK sends the engine for these keywords (its own conversion: the HostConfig and the rest)."""
    from docker.constants import DEFAULT_DOCKER_API_VERSION
    from docker.models.containers import _create_container_args

    return dict(_create_container_args({**kw, "version": DEFAULT_DOCKER_API_VERSION}))


def test_container_spec_is_nvidias_documented_docker_run(tiny_repo: Path) -> None:
    """Golden spec: NVIDIA's `docker run` for Triton (fixtures/docker_triton_run.txt) against what `serve` hands the SDK.
    Deliberate differences: ports on the address asked for (loopback), the repository read-only, this user, a name."""
    from tritonctl.core.containers import DEFAULT_IMAGE

    golden_line = next(ln for ln in (FIXTURES / "docker_triton_run.txt").read_text().splitlines() if ln.startswith("docker"))
    golden = _engine_request(_docker_run_kwargs(golden_line))
    h, g, m = free_ports(3)
    ours = _engine_request(container_spec(ServeSettings.create(runtime="docker", repo=tiny_repo, http_port=h, grpc_port=g,
                                                               metrics_port=m, gpus="0", selinux=False)))
    want, got = golden["host_config"], ours["host_config"]
    for key in ("ShmSize", "Ulimits", "IpcMode", "DeviceRequests"):
        assert got[key] == want[key], key
    assert got["ShmSize"] == 1 << 30 and got["IpcMode"] == "host"
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in got["Ulimits"]] == [("memlock", -1, -1), ("stack", 67108864, 67108864)]
    assert sorted(got["PortBindings"]) == sorted(want["PortBindings"])  # the same three container ports
    assert got["PortBindings"]["8000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(h)}]
    assert want["Binds"] == ["/full/path/to/model_repository:/models:rw"]
    assert got["Binds"] == [f"{tiny_repo.resolve()}:/models:ro"]
    assert ours["image"] == golden["image"] == DEFAULT_IMAGE
    assert ours["command"][:2] == golden["command"]  # tritonserver --model-repository=/models, then our log and exit flags
    assert ours["user"] == f"{os.getuid()}:{os.getgid()}" and not got.get("Privileged")


def test_container_mounts_get_the_selinux_label_when_asked(tiny_repo: Path) -> None:
    h, g, m = free_ports(3)
    s = ServeSettings.create(runtime="docker", repo=tiny_repo, http_port=h, grpc_port=g, metrics_port=m, selinux=True)
    assert container_spec(s, tiny_repo.parent / "cache")["volumes"] == {
        str(tiny_repo.resolve()): {"bind": "/models", "mode": "ro,z"},
        str((tiny_repo.parent / "cache").resolve()): {"bind": "/trt_cache", "mode": "rw,z"}}


NVIDIA_SMI = json.loads((FIXTURES / "server_nvidia_smi.json").read_text())


def test_nvidia_smi_output_is_read_as_nvidia_smi_writes_it() -> None:
    from tritonctl.serving.preflight import HostGpu, parse_nvidia_smi

    assert parse_nvidia_smi(NVIDIA_SMI["h100_r580"]) == [HostGpu("580.95.05", 9.0)]
    assert parse_nvidia_smi(NVIDIA_SMI["two_rtx_r550"]) == [HostGpu("550.127.05", 8.6)] * 2
    assert parse_nvidia_smi(NVIDIA_SMI["not_available"]) == [HostGpu("470.256.02", None)]
    assert parse_nvidia_smi(NVIDIA_SMI["no_driver"]) == [] and parse_nvidia_smi(NVIDIA_SMI["old_driver"]) == []


@pytest.mark.parametrize(
    ("host", "image", "verdict", "words"),
    [
        ("h100_r580", "nvcr.io/nvidia/tritonserver:25.10-py3", "ok", []),
        ("two_rtx_r550", "nvcr.io/nvidia/tritonserver:25.10-py3", "refused",
         ["550.127.05", "R575", "CUDA 13.0.2", "--image nvcr.io/nvidia/tritonserver:24.04-py3"]),
        ("two_rtx_r550", "nvcr.io/nvidia/tritonserver:24.04-py3", "ok", []),
        ("a100_r535", "nvcr.io/nvidia/tritonserver:25.10-py3", "warned", ["data-center GPU", "forward compatibility"]),
        ("v100_r575", "nvcr.io/nvidia/tritonserver:25.10-py3", "refused", ["compute capability 7.5", "7.0",
                                                                            "--image nvcr.io/nvidia/tritonserver:24.10-py3"]),
        # a tag later than the newest listed needs at least as much
        ("v100_r575", "nvcr.io/nvidia/tritonserver:26.01-py3", "refused", ["compute capability 7.5"]),
        ("h100_r580", "my.registry/custom-triton:1", "ok", []),  # not an NGC tag: nothing known to check
    ],
)
def test_the_image_against_the_hosts_driver_and_gpus(host: str, image: str, verdict: str, words: list[str]) -> None:
    """Figures from NVIDIA's release notes: 25.10 is CUDA 13.0.2, driver R575+ (or data-center forward compatibility),
    compute capability 7.5+."""
    from tritonctl.core.errors import ServerError
    from tritonctl.serving.preflight import check_host, parse_nvidia_smi

    gpus = parse_nvidia_smi(NVIDIA_SMI[host])
    if verdict == "refused":
        with pytest.raises(ServerError) as info:
            check_host(image, gpus)
        text = str(info.value)
    else:
        warnings = check_host(image, gpus)
        assert len(warnings) == (verdict == "warned")
        text = " ".join(warnings)
    for word in words:
        assert word in text, text


def _docker_settings(repo: Path, **kw: object) -> ServeSettings:
    h, g, m = free_ports(3)
    return ServeSettings.create(runtime="docker", repo=repo, http_port=h, grpc_port=g, metrics_port=m, **kw)


def _gpu_repo(tmp_path: Path, gpus: tuple[int, ...] = (), **extra: object) -> Path:
    """A repository with one TensorRT plan model, as build-engine and config leave it (a stand-in plan: no TensorRT here)."""
    from tritonctl.model.metadata import ModelMeta, TensorInfo
    from tritonctl.model.repository import ConfigSettings, write_model

    engine = tmp_path / "engine"
    engine.mkdir(parents=True, exist_ok=True)
    (engine / "model.plan").write_bytes(b"\0" * 64)
    ModelMeta(inputs=[TensorInfo("images", "FP16", (-1, 3, 64, 64))], outputs=[TensorInfo("output0", "FP16", (-1, 8, 256))],
              precision="fp16", extra={"trt_batch": [1, 8, 16], **extra}).write(engine)
    write_model(ConfigSettings.create(name="yolo", model_file=engine / "model.plan", repo=tmp_path / "repo", gpus=gpus))
    return tmp_path / "repo"


def test_docker_serve_refuses_the_local_runtimes_python_backend_models(tiny_repo: Path) -> None:
    """The NGC image has no tritonctl: a local_onnx model (python backend importing tritonctl) cannot load there."""
    result = run_cli("serve", "--runtime", "docker", "--repo", str(tiny_repo), *_ports())
    assert_one_line_error(result, 2, "'tiny'", "python backend", "--platform onnxruntime_onnx", "build-engine")


@pytest.mark.parametrize(
    ("flag", "config_gpus", "words"),
    [("1", (1,), ["asks for GPU 1", "--gpus 1 exposes host GPU 1 as device 0", "--gpus 0"]),
     ("2,3", (3,), ["--gpus 2,3 exposes host GPU 3 as device 1", "--gpus 1"]),
     ("0", (2,), ["asks for GPU 2", "devices 0..0"])],
)
def test_instance_group_gpus_are_the_containers_indexes(tmp_path: Path, flag: str, config_gpus: tuple[int, ...],
                                                        words: list[str]) -> None:
    from tritonctl.model.repository import read_repository
    from tritonctl.serving.preflight import check_docker

    s = _docker_settings(_gpu_repo(tmp_path, gpus=config_gpus), gpus=flag)
    with pytest.raises(BadInput) as info:
        check_docker(s, read_repository(s.repo), None)
    for word in words:
        assert word in str(info.value), str(info.value)
    fine = _docker_settings(_gpu_repo(tmp_path / "b", gpus=(0,)), gpus=flag)
    assert check_docker(fine, read_repository(fine.repo), None) == []


def test_gpu_ids_against_all_of_the_hosts_gpus(tmp_path: Path) -> None:
    from tritonctl.model.repository import read_repository
    from tritonctl.serving.preflight import check_docker, parse_nvidia_smi

    s = _docker_settings(_gpu_repo(tmp_path, gpus=(1,)))  # --gpus all on a host with two GPUs: device 1 exists
    two_gpus = parse_nvidia_smi("580.95.05, 8.6\n580.95.05, 8.6\n")
    assert check_docker(s, read_repository(s.repo), two_gpus) == []
    with pytest.raises(BadInput, match="asks for GPU 1"):
        check_docker(s, read_repository(s.repo), parse_nvidia_smi(NVIDIA_SMI["h100_r580"]))


def test_a_plan_built_in_another_image_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """Engines do not move across TensorRT versions: one yellow line per plan, then serve goes on (here to Docker,
    which is missing, so it ends there with its own line)."""
    repo = _gpu_repo(tmp_path, image="nvcr.io/nvidia/tritonserver:25.08-py3", tensorrt="10.11.0")
    result = run_cli("serve", "--runtime", "docker", "--repo", str(repo), *_ports(),
                     env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 3, result.stderr
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith("warning: model 'yolo': its model.plan was built in nvcr.io/nvidia/tritonserver:25.08-py3 "
                              "(TensorRT 10.11.0), not in nvcr.io/nvidia/tritonserver:25.10-py3"), warning
    assert "Docker" in error and "Traceback" not in result.stderr
    same = _gpu_repo(tmp_path / "same", image="nvcr.io/nvidia/tritonserver:25.10-py3")
    from tritonctl.model.repository import read_repository
    from tritonctl.serving.preflight import engine_warnings

    assert engine_warnings(read_repository(same), "nvcr.io/nvidia/tritonserver:25.10-py3") == []


def test_missing_gpu_runtime_is_one_line_and_leaves_no_container(tmp_path: Path) -> None:
    from test_procs import FakeDocker, api_error

    from tritonctl.core.errors import ToolMissing
    from tritonctl.serving.container import start_docker

    client = FakeDocker(start_error=api_error("no_gpu_runtime"))
    with pytest.raises(ToolMissing) as info:
        start_docker(_docker_settings(_gpu_repo(tmp_path)), client)
    assert "NVIDIA Container Toolkit" in str(info.value) and "\n" not in str(info.value)
    assert [c.removed for c in client.created] == [True]


def test_an_image_that_is_not_here_is_one_line(tmp_path: Path) -> None:
    import docker.errors
    from test_procs import FakeDocker

    from tritonctl.core.errors import ToolMissing
    from tritonctl.serving.container import start_docker

    client = FakeDocker(image_error=docker.errors.ImageNotFound("No such image: nvcr.io/nvidia/tritonserver:25.10-py3"))
    with pytest.raises(ToolMissing, match=r"is not on this host: `docker pull nvcr.io/nvidia/tritonserver:25.10-py3`"):
        start_docker(_docker_settings(_gpu_repo(tmp_path)), client)
    assert client.created == []


def test_trt_engine_cache_is_a_writable_mount(tmp_path: Path) -> None:
    """The repository is mounted read-only: ONNX Runtime's TensorRT engines get a host folder of their own (per image),
    mounted where the config points, created before the container starts."""
    from onnx_models import tiny_detector
    from test_procs import FakeDocker

    from tritonctl.core.errors import ServerError
    from tritonctl.model.repository import ConfigSettings, write_model
    from tritonctl.serving.container import start_docker

    repo = tmp_path / "repo"
    write_model(ConfigSettings.create(name="ort", model_file=tiny_detector(tmp_path / "m.onnx"), repo=repo,
                                      platform="onnxruntime_onnx", trt_accelerator=True))
    client = FakeDocker(logs=b"E1125 00:00:00.000 1 server.cc:1] no GPU here\n", exit_status="exited")
    s = _docker_settings(repo, cache_dir=tmp_path / "cache", selinux=False, timeout_s=10)
    with pytest.raises(ServerError, match="no GPU here"):
        start_docker(s, client)
    [container] = client.created
    cache = tmp_path / "cache" / "nvcr.io-nvidia-tritonserver-25.10-py3"
    assert container.spec["volumes"][str(cache.resolve())] == {"bind": "/trt_cache", "mode": "rw"}
    assert (cache / "ort").is_dir() and container.removed
    plain = FakeDocker(logs=b"E1125 00:00:00.000 1 server.cc:1] stop\n", exit_status="exited")
    with pytest.raises(ServerError):
        start_docker(_docker_settings(_gpu_repo(tmp_path / "plan"), cache_dir=tmp_path / "c2"), plain)
    assert list(plain.created[0].spec["volumes"].values()) == [{"bind": "/models", "mode": "ro"}]  # nothing to cache
