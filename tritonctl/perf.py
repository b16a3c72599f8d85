"""perf_analyzer: where it comes from (PATH, the Triton SDK image through docker, or the project's own install that
`make setup` provides), how it is called, and what its verbose CSV says."""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonctl import procs
from tritonctl.errors import ToolMissing

SDK_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3-sdk"


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
    try:
        import docker
    except ImportError:
        return None, "the docker package is not installed"
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        return None, f"no Docker daemon ({type(exc).__name__})"
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


def run(tool: PerfTool, args: list[str], out_dir: Path, on_line: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run perf_analyzer with args (paths inside out_dir); returns its exit code and output lines."""
    if tool.kind == "docker":
        return _run_docker(args, out_dir, on_line)
    done = procs.run([*tool.command, *args], on_line, cwd=out_dir, keep_lines=True)
    return (1 if done.exit_code is None else done.exit_code), done.lines


def docker_spec(args: list[str], out_dir: Path) -> dict[str, Any]:
    return {"image": SDK_IMAGE, "command": ["perf_analyzer", *args], "network_mode": "host", "detach": True,
            "privileged": False, "working_dir": "/out", "volumes": {str(out_dir.resolve()): {"bind": "/out", "mode": "rw"}}}


def _run_docker(args: list[str], out_dir: Path, on_line: Callable[[str], None]) -> tuple[int, list[str]]:
    done = procs.run_container(docker_spec(args, out_dir), on_line, keep_lines=True)
    return (1 if done.exit_code is None else done.exit_code), done.lines


_LIVE = re.compile(r"Concurrency: (\d+), throughput: ([0-9.]+) infer/sec, latency (\d+) usec")


def live_figure(line: str) -> tuple[int, float, float] | None:
    """perf_analyzer's per-concurrency result line -> (concurrency, infer/s, latency ms)."""
    m = _LIVE.search(line)
    return (int(m.group(1)), float(m.group(2)), int(m.group(3)) / 1000) if m else None


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("Concurrency")]


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
