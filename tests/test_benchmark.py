"""`tritonctl benchmark`: real perf_analyzer against the real local Triton."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import Triton, assert_one_line_error, free_ports, run_cli, start_server

from tritonctl.measure.benchmark import COLUMNS, Row, pick_best, pick_sweet_spot
from tritonctl.model.repository import parse_config

pytestmark = pytest.mark.server
FAST = ["--measurement-interval", "400", "--stability-percentage", "60"]


@pytest.fixture(scope="module")
def sweep(triton: Triton, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("bench")
    result = run_cli("benchmark", "-m", "tiny", "--url", triton.url, "--batch-sizes", "1,2,4,16", "--concurrency", "1:2",
                     *FAST, "--out-dir", str(out), "--latency-budget-ms", "1000", timeout=600)
    return out, result


def test_sweep_writes_perf_analyzers_csvs(sweep: tuple[Path, object]) -> None:
    out, result = sweep
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    for b in (1, 2, 4):
        with open(out / f"results_batch_{b}.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert {"Concurrency", "Inferences/Second", "p95 latency", "Server Queue"} <= set(reader.fieldnames or [])
            assert [r["Concurrency"] for r in reader] == ["1", "2"]
    assert not (out / "results_batch_16.csv").exists()  # above the tiny model's max batch (8): skipped
    assert "skipped batch sizes [16]" in result.stdout  # type: ignore[attr-defined]
    assert result.stderr == ""  # type: ignore[attr-defined]  # not a terminal: no progress bar left behind


def test_each_batch_size_is_announced_when_it_starts(sweep: tuple[Path, object]) -> None:
    """perf_analyzer reports a concurrency only once its windows are stable: a line says which batch size runs
    before its first figure, and the figure's latency says it is the average."""
    lines = sweep[1].stdout.splitlines()  # type: ignore[attr-defined]
    for b in (1, 2, 4):
        start = lines.index(f"batch {b}: concurrency 1..2 …")
        live = [i for i, line in enumerate(lines) if line.strip().startswith(f"batch {b} concurrency ")]
        assert live and start < min(live), lines
        assert all(" infer/s, avg " in lines[i] and lines[i].endswith(" ms") for i in live), lines
    assert "batch 16:" not in sweep[1].stdout  # type: ignore[attr-defined]  # skipped, never started


def test_the_output_says_what_best_and_sweet_spot_mean(sweep: tuple[Path, object]) -> None:
    stdout = " ".join(sweep[1].stdout.split())  # type: ignore[attr-defined]
    assert "6 runs: batch sizes [1, 2, 4] x concurrency 1..2" in stdout
    assert "best: the highest infer/s whose p95 latency fits the budget" in stdout
    assert "sweet spot: the largest batch size whose lowest p95 fits the budget" in stdout
    assert "sweet spot: batch " in stdout


def test_summary_numbers_come_from_the_csvs(sweep: tuple[Path, object]) -> None:
    out, _ = sweep
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["batch"], r["concurrency"]) for r in summary["rows"]] == [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)]
    for b in (1, 2, 4):
        with open(out / f"results_batch_{b}.csv", newline="") as f:
            for raw in csv.DictReader(f):
                row = next(r for r in summary["rows"] if r["batch"] == b and r["concurrency"] == int(raw["Concurrency"]))
                assert row["infer_per_s"] == pytest.approx(float(raw["Inferences/Second"]))
                assert row["p95_ms"] == pytest.approx(float(raw["p95 latency"]) / 1000)
    with open(out / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6
    best = summary["best"]
    assert best["infer_per_s"] == max(r["infer_per_s"] for r in summary["rows"] if r["p95_ms"] <= 1000)


def test_plot_is_a_png(sweep: tuple[Path, object]) -> None:
    out, _ = sweep
    import cv2

    image = cv2.imread(str(out / "throughput_vs_latency.png"))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 500


def _row(batch: int, conc: int, ips: float, p95: float) -> Row:
    return Row(batch, conc, ips, {"p95_ms": p95})


def test_best_honours_the_budget() -> None:
    rows = [_row(1, 1, 100, 5), _row(4, 1, 300, 12), _row(8, 1, 500, 22), _row(8, 4, 600, 80)]
    assert pick_best(rows, 20) is rows[1]
    assert pick_best(rows, None) is rows[3]
    assert pick_best(rows, 1) is None
    assert pick_sweet_spot(rows, 20) is rows[1]
    assert pick_sweet_spot(rows, None) is rows[2]  # per-image p95 still falls at batch 8 (22/8 < 12/4)
    rows[2].values["p95_ms"] = 30
    assert pick_sweet_spot(rows, None) is rows[1]  # ... and no longer when it rises to 30/8


def test_apply_changes_only_batching_and_the_server_loads_it(triton: Triton, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(triton.repo / "tiny", repo / "tiny")
    config = repo / "tiny" / "config.pbtxt"
    before = parse_config(config.read_text())
    dry = run_cli("benchmark", "-m", "tiny", "--url", triton.url, "--batch-sizes", "2", "--concurrency", "2", *FAST,
                  "--out-dir", str(tmp_path / "b1"), "--apply", "--dry-run", "--repo", str(repo), timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert "+++" in dry.stdout and parse_config(config.read_text()) == before  # dry run: shown, not written
    applied = run_cli("benchmark", "-m", "tiny", "--url", triton.url, "--batch-sizes", "2", "--concurrency", "2", *FAST,
                      "--out-dir", str(tmp_path / "b2"), "--apply", "--repo", str(repo), timeout=300)
    assert applied.returncode == 0, applied.stderr
    after = parse_config(config.read_text())
    assert list(after.dynamic_batching.preferred_batch_size) == [2, 4]
    said = " ".join(applied.stdout.split())
    assert "preferred_batch_size [2, 4]: the best setting's batch 2, and batch x concurrency = 4" in said
    assert f"max_queue_delay_microseconds {after.dynamic_batching.max_queue_delay_microseconds}: the server queue time" in said
    a, b = type(after)(), type(before)()
    a.CopyFrom(after)
    b.CopyFrom(before)
    a.ClearField("dynamic_batching")
    b.ClearField("dynamic_batching")
    assert a == b  # nothing but the batching fields changed
    server = start_server(repo)
    try:
        import tritonclient.http as http

        loaded = http.InferenceServerClient(server.settings.url).get_model_config("tiny")  # type: ignore[attr-defined]
        assert loaded["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    finally:
        server.stop()  # type: ignore[attr-defined]


def test_apply_with_nothing_in_the_budget_fails_and_changes_nothing(triton: Triton, tmp_path: Path) -> None:
    """`--latency-budget-ms 30 --apply` with nothing fitting printed "no setting fits" and exited 0."""
    repo = tmp_path / "repo"
    shutil.copytree(triton.repo / "tiny", repo / "tiny")
    before = (repo / "tiny" / "config.pbtxt").read_bytes()
    result = run_cli("benchmark", "-m", "tiny", "--url", triton.url, "--batch-sizes", "1", "--concurrency", "1", *FAST,
                     "--out-dir", str(tmp_path / "b"), "--latency-budget-ms", "0.001", "--apply", "--repo", str(repo),
                     timeout=300)
    assert_one_line_error(result, 6, "no setting fits the 0.001 ms p95 budget", "nothing applied")
    assert (repo / "tiny" / "config.pbtxt").read_bytes() == before


def test_bad_inputs(triton: Triton, tmp_path: Path) -> None:
    url = ["--url", triton.url, "--out-dir", str(tmp_path / "o")]
    assert_one_line_error(run_cli("benchmark", "-m", "tiny", *url, "--batch-sizes", "0,2"), 2, "at least 1")
    assert_one_line_error(run_cli("benchmark", "-m", "tiny", *url, "--batch-sizes", "64"), 2, "the max batch of model 'tiny' (8)")
    assert_one_line_error(run_cli("benchmark", "-m", "nosuch", *url), 5, "nosuch")
    assert_one_line_error(run_cli("benchmark", "-m", "tiny", "--url", f"127.0.0.1:{free_ports(1)[0]}"), 4, "no Triton")
    assert_one_line_error(run_cli("benchmark", "-m", "tiny", *url, env={"TRITONCTL_PERF_ANALYZER": str(tmp_path / "none")}), 3,
              "perf_analyzer")
    assert_one_line_error(run_cli("benchmark", "-m", "tiny", *url, "--concurrency", "4:1"), 2, "--concurrency")


def test_doctor_names_the_choice() -> None:
    result = run_cli("benchmark", "--doctor")
    assert result.returncode == 0 and "benchmark will use: project" in result.stdout


def test_columns_cover_perf_analyzers_csv() -> None:
    assert {"Inferences/Second", "p50 latency", "p95 latency", "p99 latency", "Server Queue"} <= set(COLUMNS)


def test_url_and_report_folder_are_checked_first(tmp_path: Path) -> None:
    """A port typo raised ValueError; a file where the report folder goes failed only after the server was asked."""
    assert_one_line_error(run_cli("benchmark", "-m", "tiny", "--url", "127.0.0.1:1910O"), 2, "not a number")
    assert_one_line_error(run_cli("benchmark", "-m", "tiny", "--url", "http://"), 2, "not an endpoint")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    dead = f"127.0.0.1:{free_ports(1)[0]}"  # nothing is asked of the server before the folder is checked
    for out in (notes, notes / "report"):
        assert_one_line_error(run_cli("benchmark", "-m", "tiny", "--url", dead, "--out-dir", str(out)), 2, "is a file")
    assert notes.read_text() == "keep me"


def test_a_url_pasted_with_its_scheme_works(triton: Triton, tmp_path: Path) -> None:
    result = run_cli("benchmark", "-m", "tiny", "--url", f"http://{triton.url}/", "--batch-sizes", "1", *FAST,
                     "--out-dir", str(tmp_path / "b"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["url"] == triton.url
    # the default searches concurrency too, and best is picked over all of it (the seed's loop stopped at 1)
    assert [r["concurrency"] for r in summary["rows"]] == [1, 2, 3, 4]
    assert summary["best"]["infer_per_s"] == max(r["infer_per_s"] for r in summary["rows"])


# ---------------------------------------------------------------- GPU columns and CUDA shared memory (issue 10)


def test_gpu_columns_are_read_per_gpu(tmp_path: Path) -> None:
    """perf_analyzer writes each GPU metric as `uuid:value;` per GPU (perf_analyzer src/report_writer.cc,
    WriteGpuMetrics; header and column order from GenerateReport with --verbose-csv and --collect-metrics);
    they parsed as empty. The fixture is that format for a two-GPU server."""
    from tritonctl.measure.benchmark import BenchmarkResult, parse_rows, write_summary
    from tritonctl.measure.perf import per_gpu

    fixture = Path(__file__).parent / "fixtures" / "perf_gpu_metrics.csv"
    first, second = parse_rows(fixture, 8)
    a, b = "GPU-5a1e0f2c-8a43-6d21-b9a0-3f4c2e7d9b10", "GPU-9c07d6e1-2b58-41f3-a7c6-0e8d1f5b3a24"
    assert first.per_gpu["gpu_util"] == {a: 0.4125, b: 0.0}
    assert first.values["gpu_util"] == pytest.approx(0.20625)  # the mean over GPUs (a fraction)
    assert first.values["gpu_power_w"] == pytest.approx(187.114 + 68.402)  # the sum
    assert second.values["gpu_mem_bytes"] == 3112173568 + 551550976 and first.per_gpu["gpu_mem_total_bytes"][b] == 85520809984
    assert first.p95_ms == pytest.approx(20.104) and second.infer_per_s == pytest.approx(781.402)
    assert per_gpu("") == {} and per_gpu("a:1;z:100;") == {"a": 1.0, "z": 100.0}  # report_writer's own test values
    from tritonctl.measure.benchmark import BenchmarkSettings

    s = BenchmarkSettings.create(model="m", batch_sizes="8", concurrency="1:2", out_dir=tmp_path)
    write_summary(BenchmarkResult(tmp_path, [first, second], [], second, second, 16), s)
    with open(tmp_path / "summary.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["gpu_util"]) == pytest.approx(0.20625) and float(row["gpu_power_w"]) == pytest.approx(255.516)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["rows"][1]["per_gpu"]["gpu_power_w"] == {a: 291.53, b: 68.517}
    assert saved["gpu_columns"]["gpu_util"] == "mean"


def test_perf_container_shares_what_shared_memory_needs(tmp_path: Path) -> None:
    """The SDK container: system shm lives in the host's IPC namespace (--ipc=host); CUDA shm needs a GPU and the
    host's PID namespace too (the client README: CUDA IPC with --pid host across containers)."""
    from tritonctl.measure.perf import docker_spec

    none, system, cuda = (docker_spec(["-m", "m"], tmp_path, shm) for shm in ("none", "system", "cuda"))
    assert "ipc_mode" not in none and "pid_mode" not in none and "device_requests" not in none
    assert system["ipc_mode"] == "host" and "pid_mode" not in system and "device_requests" not in system
    assert cuda["ipc_mode"] == "host" and cuda["pid_mode"] == "host" and cuda["privileged"] is False
    assert cuda["device_requests"][0]["Capabilities"] == [["gpu"]] and cuda["device_requests"][0]["Count"] == -1


NO_DRIVER = ("#!/bin/sh\necho 'NVIDIA-SMI has failed because it couldn'\"'\"'t communicate with the NVIDIA driver. Make sure "
             "that the latest NVIDIA driver is installed and running.'\nexit 9\n")
ONE_GPU = "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5a1e0f2c-8a43-6d21-b9a0-3f4c2e7d9b10)'\n"


def _nvidia_smi(folder: Path, script: str) -> dict[str, str]:
    """A PATH whose only nvidia-smi is this stand-in (the real one needs a GPU host): what the checks see."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nvidia-smi").write_text(script)
    (folder / "nvidia-smi").chmod(0o755)
    return {"PATH": str(folder), "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def _cudart_loads() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcudart.so")
        return True
    except OSError:
        return False


def test_cuda_shared_memory_is_refused_in_one_line_when_it_cannot_work(tmp_path: Path) -> None:
    """Checked before the server is asked anything: no GPU (nvidia-smi), no libcudart.so for the project's
    perf_analyzer (it dlopens exactly that name: perf_analyzer src/cuda_runtime_library_manager.cc), a remote server."""
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    args = ["benchmark", "-m", "tiny", "--url", dead, "--shared-memory", "cuda", "--out-dir", str(tmp_path / "o")]
    result = run_cli(*args, env=_nvidia_smi(tmp_path / "nogpu", NO_DRIVER))
    assert_one_line_error(result, 3, "--shared-memory cuda cannot work", "NVIDIA driver", "--shared-memory system")
    if not _cudart_loads():
        result = run_cli(*args, env=_nvidia_smi(tmp_path / "gpu", ONE_GPU))
        assert_one_line_error(result, 3, "--shared-memory cuda cannot work", "libcudart.so")
    remote = run_cli("benchmark", "-m", "tiny", "--url", "10.1.2.3:8000", "--shared-memory", "cuda")
    assert_one_line_error(remote, 2, "CUDA IPC does not cross machines")


def test_doctor_says_whether_cuda_shared_memory_can_work(tmp_path: Path) -> None:
    result = run_cli("benchmark", "--doctor", env=_nvidia_smi(tmp_path / "nogpu", NO_DRIVER))
    said = " ".join(result.stdout.split())
    assert result.returncode == 0 and "benchmark will use: project" in said
    assert "--shared-memory cuda: cannot work with project" in said and "no GPU: nvidia-smi lists no GPU" in said
    gpu = " ".join(run_cli("benchmark", "--doctor", env=_nvidia_smi(tmp_path / "gpu", ONE_GPU)).stdout.split())
    assert "ok GPU: 1 visible: GPU 0: NVIDIA H100 80GB HBM3" in gpu
    if not _cudart_loads():
        assert "no libcudart: perf_analyzer opens libcudart.so" in gpu and "cannot work" in gpu
