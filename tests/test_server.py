"""serve / status / stop against the real local Triton, driven through the CLI as a user would."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, free_ports, run_cli

from tritonctl.errors import BadInput
from tritonctl.server import ServeSettings, container_spec, diagnose, is_ready

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
        status = run_cli("status", "--url", url, "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
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
    finally:
        stopped = run_cli("stop", "--url", url)
    assert stopped.returncode == 0, stopped.stderr
    assert not is_ready(url)
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


def test_foreground_serve_stops_on_ctrl_c(tiny_repo: Path) -> None:
    import signal
    import subprocess

    from conftest import ROOT, TRITONCTL

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
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert not is_ready(url)
