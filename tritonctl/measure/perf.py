"""perf_analyzer: where it comes from (PATH, the Triton SDK image through docker, or the project's own install that
`make setup` provides), how it is called, and what its verbose CSV says."""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonctl.core import containers, procs
from tritonctl.core.errors import ToolMissing

SDK_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3-sdk"
CUDART = "libcudart.so"  # the exact name perf_analyzer dlopens for --shared-memory cuda (cuda_runtime_library_manager.cc)


@dataclass(frozen=True)
class PerfTool:
    kind: str  # path, docker, project
    command: tuple[str, ...]
    why: str


def _works(command: list[str]) -> bool:
    try:
        return procs.run([*command, "--version"], timeout_s=20).exit_code == 0
    except ToolMissing:
        return False


def candidates() -> list[tuple[str, PerfTool | None, str]]:
    """Every place perf_analyzer may come from, in the order we try them, with why each is or is not usable."""
    override = os.environ.get("TRITONCTL_PERF_ANALYZER")
    if override:  # the user's explicit choice wins, and is the only one tried
        ok = _works([override])
        return [("TRITONCTL_PERF_ANALYZER", PerfTool("env", (override,), f"{override} (TRITONCTL_PERF_ANALYZER)") if ok
                 else None, f"{override} does not run")]
    out: list[tuple[str, PerfTool | None, str]] = []
    project = Path(sys.executable).parent / "perf_analyzer"
    on_path = shutil.which("perf_analyzer")
    if on_path and Path(on_path).resolve() != project.resolve():
        ok = _works([on_path])
        out.append(("PATH", PerfTool("path", (on_path,), f"{on_path} on PATH") if ok else None,
                    f"{on_path}" + ("" if ok else " does not run (wrong glibc? see scripts/setup_tools.sh)")))
    else:
        out.append(("PATH", None, "no perf_analyzer on PATH"))
    out.append(("docker", *_docker_candidate()))
    if project.is_file():
        ok = _works([str(project)])
        out.append(("project", PerfTool("project", (str(project),), f"{project}, installed by `make setup`") if ok
                    else None, f"{project}" + ("" if ok else " does not run: re-run `make setup`")))
    else:
        out.append(("project", None, f"no {project}: run `make setup`"))
    return out


def _docker_candidate() -> tuple[PerfTool | None, str]:
    from tritonctl.core.containers import docker_client

    try:
        client = docker_client()
    except ToolMissing as exc:
        return None, str(exc)
    try:
        client.images.get(SDK_IMAGE)
    except Exception:
        return None, f"image {SDK_IMAGE} is not pulled (`docker pull {SDK_IMAGE}`)"
    return PerfTool("docker", ("docker-sdk",), f"{SDK_IMAGE} through docker, host network"), "ready"


def find_perf_analyzer(required: bool = True) -> PerfTool | None:
    for _, tool, _ in candidates():
        if tool is not None:
            return tool
    if required:
        raise ToolMissing("perf_analyzer is not available: run `make setup` (it installs one into .venv), put one on "
                          "PATH, or pull the Triton SDK image; `tritonctl benchmark --doctor` says more")
    return None


def run(tool: PerfTool, args: list[str], out_dir: Path, on_line: Callable[[str], None],
        shared_memory: str = "none") -> tuple[int, list[str]]:
    """Run perf_analyzer with args (paths inside out_dir); returns its exit code and output lines."""
    if tool.kind == "docker":
        return _run_docker(args, out_dir, on_line, shared_memory)
    done = procs.run([*tool.command, *args], on_line, cwd=out_dir, keep_lines=True)
    return (1 if done.exit_code is None else done.exit_code), done.lines


def docker_spec(args: list[str], out_dir: Path, shared_memory: str = "none") -> dict[str, Any]:
    """The SDK container. Shared memory with a server in another container needs the host's IPC namespace (system
    shm segments live there); CUDA shared memory also needs a GPU and the host's PID namespace (CUDA IPC refuses
    a handle whose source and destination PIDs look equal, which separate PID namespaces can make them)."""
    spec: dict[str, Any] = {
        "image": SDK_IMAGE, "command": ["perf_analyzer", *args], "network_mode": "host", "detach": True,
        "privileged": False, "working_dir": "/out", "volumes": {str(out_dir.resolve()): {"bind": "/out", "mode": "rw"}}}
    if shared_memory in ("system", "cuda"):
        spec["ipc_mode"] = "host"
    if shared_memory == "cuda":
        from docker.types import DeviceRequest

        spec["pid_mode"] = "host"
        spec["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return spec


def _run_docker(args: list[str], out_dir: Path, on_line: Callable[[str], None],
                shared_memory: str = "none") -> tuple[int, list[str]]:
    done = containers.run_container(docker_spec(args, out_dir, shared_memory), on_line, keep_lines=True)
    return (1 if done.exit_code is None else done.exit_code), done.lines


# ---------------------------------------------------------------- CUDA shared memory: can it work here?


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def gpu_check() -> Check:
    """A GPU this host's driver shows (`nvidia-smi -L`): CUDA shared memory is GPU memory."""
    try:
        done = procs.run(["nvidia-smi", "-L"], keep_lines=True, timeout_s=20)
    except ToolMissing:
        return Check("GPU", False, "no nvidia-smi: no NVIDIA driver on this host")
    gpus = [ln.strip() for ln in done.lines if ln.startswith("GPU ")]
    if done.exit_code != 0 or not gpus:
        last = next((ln.strip() for ln in reversed(done.lines) if ln.strip()), f"exit {done.exit_code}")
        return Check("GPU", False, f"nvidia-smi lists no GPU ({last})")
    return Check("GPU", True, f"{len(gpus)} visible: {gpus[0]}")


def cudart_check() -> Check:
    """perf_analyzer opens the CUDA runtime by its unversioned name, which only a CUDA toolkit (its development
    link) provides; the versioned runtime alone (libcudart.so.12) is not enough."""
    try:
        ctypes.CDLL(CUDART)
        return Check("libcudart", True, f"{CUDART} loads")
    except OSError:
        pass
    versioned = ctypes.util.find_library("cudart")
    hint = (f"{versioned} is installed but not the unversioned link: install the CUDA toolkit's cudart development "
            "package, or put a libcudart.so link on the library path") if versioned else "install a CUDA toolkit"
    return Check("libcudart", False, f"perf_analyzer opens {CUDART}, which does not load here: {hint}")


def container_check() -> Check:
    return Check("container", True, f"{SDK_IMAGE} brings libcudart; it runs with a GPU device request, "
                                    "--pid=host (CUDA IPC) and --ipc=host")


def cuda_checks(tool: PerfTool | None) -> list[Check]:
    """What `--shared-memory cuda` needs from the perf_analyzer that would run, each checked here."""
    checks = [gpu_check()]
    if tool is not None and tool.kind == "docker":
        return [*checks, container_check()]
    return [*checks, cudart_check()]


def require_cuda(tool: PerfTool) -> None:
    """Refuse `--shared-memory cuda` in one line when the chosen perf_analyzer cannot use it here."""
    failed = next((c for c in cuda_checks(tool) if not c.ok), None)
    if failed is not None:
        raise ToolMissing(f"--shared-memory cuda cannot work with {tool.why}: {failed.detail}; "
                          "use --shared-memory system or none (`tritonctl benchmark --doctor` says more)")


_LIVE = re.compile(r"Concurrency: (\d+), throughput: ([0-9.]+) infer/sec, latency (\d+) usec")


def live_figure(line: str) -> tuple[int, float, float] | None:
    """perf_analyzer's per-concurrency result line -> (concurrency, infer/s, latency ms)."""
    m = _LIVE.search(line)
    return (int(m.group(1)), float(m.group(2)), int(m.group(3)) / 1000) if m else None


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("Concurrency")]


def per_gpu(cell: str | None) -> dict[str, float]:
    """A GPU metrics cell of perf_analyzer's CSV: `uuid:value;` per GPU (report_writer.cc WriteGpuMetrics), empty
    when the metric was not collected."""
    values: dict[str, float] = {}
    for item in (cell or "").split(";"):
        uuid, sep, value = item.strip().rpartition(":")
        if not sep or not uuid:
            continue
        try:
            values[uuid] = float(value)
        except ValueError:
            continue
    return values


def run_sweep_point(tool: PerfTool, url: str, model: str, batch: int, concurrency: int,
                    measurement_ms: int = 2000) -> float:
    """Infer/s of one perf_analyzer run (for the benchmarks that compare against it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = ["-m", model, "-u", url, "-b", str(batch), "--concurrency-range", f"{concurrency}:{concurrency}",
                "--measurement-interval", str(measurement_ms), "--stability-percentage", "25", "-f", "r.csv"]
        code, _ = run(tool, args, Path(tmp), lambda _: None)
        rows = read_csv(Path(tmp) / "r.csv") if code == 0 and (Path(tmp) / "r.csv").exists() else []
    return float(rows[0]["Inferences/Second"]) if rows else 0.0
