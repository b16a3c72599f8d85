"""`tritonctl build-engine`: the seed's trtexec command, run for the user (in the Triton image or a local trtexec),
its log streamed and kept, its performance summary and exportTimes JSON parsed."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonctl import procs
from tritonctl.errors import BadInput, ToolMissing
from tritonctl.metadata import ModelMeta, read_onnx

TRTEXEC_IN_IMAGE = "/usr/src/tensorrt/bin/trtexec"
WORK_IN = "/work/in"
WORK_OUT = "/work/out"


@dataclass(frozen=True)
class EngineSettings:
    onnx: Path
    out_dir: Path
    runtime: str = "docker"
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    workspace_mb: int | None = None
    image: str = ""
    gpus: str = "all"
    input_name: str = "images"
    imgsz: tuple[int, int] = (640, 640)
    repo: Path | None = None
    name: str | None = None

    @classmethod
    def create(cls, **kw: Any) -> EngineSettings:
        onnx: Path = kw["onnx"]
        if not onnx.is_file():
            raise BadInput(f"ONNX model {onnx} does not exist: run `tritonctl export` first, or pass --onnx")
        meta = read_onnx(onnx)
        if not meta.inputs or len(meta.inputs[0].shape) != 4:
            raise BadInput(f"{onnx.name} has no [B,3,H,W] image input: build-engine takes a YOLO ONNX export")
        inp = meta.inputs[0]
        kw.setdefault("input_name", inp.name)
        kw.setdefault("imgsz", meta.imgsz or (inp.shape[2], inp.shape[3]))
        s = cls(**kw)
        if s.runtime not in ("docker", "local"):
            raise BadInput(f"--runtime {s.runtime!r}: choose docker (trtexec in the Triton image) or local")
        if s.precision not in ("fp16", "fp32"):
            raise BadInput(f"--precision {s.precision!r}: choose fp16 or fp32")
        if not 1 <= s.min_batch <= s.opt_batch <= s.max_batch:
            raise BadInput(f"batch sizes must satisfy 1 <= min ({s.min_batch}) <= opt ({s.opt_batch}) <= max ({s.max_batch})")
        if inp.shape[0] != -1 and s.max_batch != inp.shape[0]:
            raise BadInput(f"{onnx.name} has a fixed batch of {inp.shape[0]}: export without --static for a batch range")
        if (s.repo is None) != (s.name is None):
            raise BadInput("--repo and --name go together: both put model.plan into <repo>/<name>/1/")
        return s

    def shape(self, batch: int) -> str:
        return f"{self.input_name}:{batch}x3x{self.imgsz[0]}x{self.imgsz[1]}"


def build_command(s: EngineSettings, trtexec: str, onnx: str, engine: str) -> list[str]:
    """The seed's command line: min/opt/max shapes, --shapes at opt, --fp16 unless FP32."""
    cmd = [
        trtexec, f"--onnx={onnx}", f"--saveEngine={engine}",
        f"--optShapes={s.shape(s.opt_batch)}", f"--minShapes={s.shape(s.min_batch)}",
        f"--maxShapes={s.shape(s.max_batch)}", f"--shapes={s.shape(s.opt_batch)}",
    ]
    if s.precision == "fp16":
        cmd.append("--fp16")
    if s.workspace_mb:
        cmd.append(f"--memPoolSize=workspace:{s.workspace_mb}M")
    return cmd


def timing_command(trtexec: str, engine: str, shape: str, times: str) -> list[str]:
    """The seed's timing run of a built engine."""
    return [trtexec, f"--loadEngine={engine}", f"--shapes={shape}", f"--exportTimes={times}"]


def engine_container_spec(s: EngineSettings, command: list[str]) -> dict[str, Any]:
    """docker `containers.run` kwargs: the same image as `serve`, the GPUs asked for, ONNX folder read-only."""
    from docker.types import DeviceRequest

    from tritonctl.server import DEFAULT_IMAGE, gpu_ids

    ids = gpu_ids(s.gpus)
    request = DeviceRequest(count=-1, capabilities=[["gpu"]]) if ids is None else \
        DeviceRequest(device_ids=ids, capabilities=[["gpu"]])
    return {
        "image": s.image or DEFAULT_IMAGE, "command": command, "detach": True, "privileged": False,
        "device_requests": [request], "labels": {"tritonctl": "build-engine"},
        "volumes": {str(s.onnx.parent.resolve()): {"bind": WORK_IN, "mode": "ro"},
                    str(s.out_dir.resolve()): {"bind": WORK_OUT, "mode": "rw"}},
        "network_disabled": True,
    }


# ---------------------------------------------------------------- parsing trtexec's output

_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([0-9.eE+-]+)\s*ms")
_SUMMARY_KEYS = {"Latency": "latency", "Enqueue Time": "enqueue", "H2D Latency": "h2d", "GPU Compute Time": "gpu_compute",
                 "D2H Latency": "d2h"}


@dataclass
class Stats:
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    median: float | None = None
    percentiles: dict[str, float] = field(default_factory=dict)


@dataclass
class TrtexecSummary:
    throughput_qps: float | None = None
    stats: dict[str, Stats] = field(default_factory=dict)
    host_walltime_s: float | None = None
    gpu_compute_total_s: float | None = None
    passed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_summary(log: Iterable[str]) -> TrtexecSummary:
    """trtexec's `=== Performance summary ===` lines, with or without their `[date] [I]` prefixes."""
    summary = TrtexecSummary()
    for raw in log:
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", raw.strip())
        if line.startswith("Throughput:"):
            summary.throughput_qps = float(line.split()[1])
        elif line.startswith("Total Host Walltime:"):
            summary.host_walltime_s = float(line.split(":")[1].split()[0])
        elif line.startswith("Total GPU Compute Time:"):
            summary.gpu_compute_total_s = float(line.split(":")[1].split()[0])
        elif "&&&& PASSED" in line:
            summary.passed = True
        elif "&&&& FAILED" in line:
            summary.passed = False
        else:
            head = line.split(":", 1)[0]
            if head in _SUMMARY_KEYS and "=" in line:
                summary.stats[_SUMMARY_KEYS[head]] = _parse_stats(line)
    return summary


def _parse_stats(line: str) -> Stats:
    stats = Stats()
    for name, pct, value in _STAT.findall(line):
        if pct:
            stats.percentiles[f"p{pct}"] = float(value)
        else:
            setattr(stats, name, float(value))
    return stats


def _describe(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return {"mean": statistics.fmean(ordered), "median": statistics.median(ordered), "p99": p99,
            "min": ordered[0], "max": ordered[-1]}


def parse_times(path: Path) -> dict[str, Any]:
    """Summarise trtexec's --exportTimes JSON (one record per inference): H2D, compute, D2H and latency in ms."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} is not trtexec --exportTimes JSON ({exc.__class__.__name__})") from exc
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        raise BadInput(f"{path} holds no timing records: run trtexec with --exportTimes")
    keys = {"h2d": ("h2dMs", "inMs"), "compute": ("computeMs",), "d2h": ("d2hMs", "outMs"), "latency": ("latencyMs",)}
    out: dict[str, Any] = {"inferences": len(records)}
    for name, options in keys.items():
        key = next((k for k in options if k in records[0]), None)
        if key is not None:
            out[name] = _describe([float(r[key]) for r in records])
    return out


# ---------------------------------------------------------------- running it


def find_trtexec() -> str:
    for candidate in (shutil.which("trtexec"), TRTEXEC_IN_IMAGE):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ToolMissing("no trtexec on PATH (TensorRT is not installed here): use --runtime docker on a GPU host, "
                      "or install TensorRT")


def run_local(command: list[str], log_file: Path, on_line: Callable[[str], None]) -> int:
    """trtexec on this host; its log streamed and kept; on Ctrl-C its whole process group ends with us."""
    code = procs.run(command, on_line, log_file=log_file).exit_code
    return 1 if code is None else code


def run_docker(spec: dict[str, Any], log_file: Path, on_line: Callable[[str], None]) -> int:
    code = procs.run_container(spec, on_line, log_file).exit_code
    return 1 if code is None else code


@dataclass
class EngineResult:
    engine: Path
    log_file: Path
    summary: TrtexecSummary
    command: list[str]


def _builders() -> tuple[bool, bool]:
    """(a local trtexec exists, a Docker engine answers)."""
    try:
        find_trtexec()
        local = True
    except ToolMissing:
        local = False
    try:
        procs.docker_client()
        docker = True
    except ToolMissing:
        docker = False
    return local, docker


def check_builder(s: EngineSettings) -> None:
    """Refuse before anything is written when the runtime asked for cannot build, naming what can, never pointing
    from one missing tool to the other."""
    local, docker = _builders()
    if (s.runtime == "local" and local) or (s.runtime == "docker" and docker):
        return
    if local or docker:
        missing = "no trtexec on PATH" if s.runtime == "local" else "no Docker engine answers"
        raise ToolMissing(f"--runtime {s.runtime} cannot build here ({missing}); --runtime {'local' if local else 'docker'} can")
    raise ToolMissing("neither Docker nor TensorRT's trtexec is on this host: a TensorRT engine is built on a GPU host. "
                      f"Without one, serve the ONNX on the local runtime: tritonctl config --name NAME --model {s.onnx} "
                      "&& tritonctl serve")


def build(s: EngineSettings, on_line: Callable[[str], None]) -> EngineResult:
    from tritonctl.errors import ModelError

    check_builder(s)
    s.out_dir.mkdir(parents=True, exist_ok=True)
    engine = s.out_dir / "model.plan"
    partial = s.out_dir / ".model.plan.partial"
    log_file = s.out_dir / "trtexec_build.log"
    if s.runtime == "local":
        command = build_command(s, find_trtexec(), str(s.onnx.resolve()), str(partial.resolve()))
        code = run_local(command, log_file, on_line)
    else:
        command = build_command(s, TRTEXEC_IN_IMAGE, f"{WORK_IN}/{s.onnx.name}", f"{WORK_OUT}/{partial.name}")
        code = run_docker(engine_container_spec(s, command), log_file, on_line)
    summary = parse_summary(log_file.read_text(errors="replace").splitlines())
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ModelError(f"trtexec failed (exit {code}); its log is in {log_file}")
    partial.replace(engine)
    meta: ModelMeta = read_onnx(s.onnx)
    meta.precision = s.precision
    meta.extra = {**meta.extra, "trt_batch": [s.min_batch, s.opt_batch, s.max_batch], "onnx": s.onnx.name}
    meta.write(s.out_dir)
    (s.out_dir / "engine.json").write_text(json.dumps({"command": command, "summary": summary.to_dict()}, indent=2))
    if s.repo is not None and s.name is not None:
        version = s.repo / s.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copy2(engine, version / "model.plan")
        meta.write(s.repo / s.name)
    return EngineResult(engine, log_file, summary, command)
