"""`tritonctl build-engine`: the seed's trtexec command, run for the user (in the Triton image or a local trtexec),
its log streamed and kept, its performance summary and exportTimes JSON parsed.

trtexec is first found and asked its TensorRT version where the build will run (`probe`): the command depends on
it (TensorRT 11 builds strongly typed networks only and has no `--fp16`), and an engine only runs under the
TensorRT version and GPU architecture it was built for, so where it was built is recorded beside it and `--time`
runs there again. Reading what trtexec prints is trtexec.py's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonctl.core import containers, procs
from tritonctl.core.errors import BadInput, ModelError, ToolMissing
from tritonctl.core.files import commit
from tritonctl.model.metadata import ModelMeta, read_onnx
from tritonctl.model.trtexec import (
    DEFAULT_WARMUP_MS,
    PROBE_SCRIPT,
    Trtexec,
    TrtexecSummary,
    find_trtexec,
    parse_probe,
    parse_summary,
    parse_times,
    tensorrt_version,
)

WORK_IN = "/work/in"
WORK_OUT = "/work/out"
WORK_ENGINE = "/work/engine"
STRONGLY_TYPED_FROM = 11  # TensorRT 11 removed weakly typed networks, and `--fp16` with them ("Unknown option: --fp16")


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
    onnx_fp16: bool = False  # the ONNX already carries FP16 (what a strongly typed build keeps)

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
        kw.setdefault("onnx_fp16", onnx_is_fp16(onnx, meta))
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


def onnx_is_fp16(path: Path, meta: ModelMeta | None = None) -> bool:
    """Whether the ONNX computes in FP16: tritonctl's own stamp, else FP16 weights or an FP16 image input."""
    import onnx

    meta = meta or read_onnx(path)
    model = onnx.load(str(path), load_external_data=False)
    if any(p.key == "tritonctl" for p in model.metadata_props):
        return meta.precision == "fp16"
    fp16 = onnx.TensorProto.FLOAT16
    return any(t.data_type == fp16 for t in model.graph.initializer) or \
        any(i.type.tensor_type.elem_type == fp16 for i in model.graph.input)


# ---------------------------------------------------------------- which trtexec, which TensorRT


def probe(runtime: str, image: str, gpus: str, on_line: Callable[[str], None]) -> Trtexec:
    """Find trtexec and its TensorRT version in the place the build (or timing) runs: this host or the image."""
    if runtime == "local":
        path = find_trtexec()
        done = procs.run([path, "--help"], on_line, keep_lines=True, timeout_s=60)
        return Trtexec(path, tensorrt_version(done.lines), None)
    spec = container_spec(image, gpus, ["sh", "-c", PROBE_SCRIPT], {}, "probe")
    done = containers.run_container(spec, on_line, keep_lines=True)
    return parse_probe(done.lines, spec["image"])


# ---------------------------------------------------------------- the commands


def precision_flags(s: EngineSettings, tensorrt: str | None) -> list[str]:
    """The seed's `--fp16`, where the TensorRT that builds still has it. From TensorRT 11 on, networks are strongly
    typed: the ONNX's own types decide, so FP16 comes from an FP16 export and FP32 from an FP32 one."""
    major = int(tensorrt.split(".")[0]) if tensorrt else None
    if major is None or major < STRONGLY_TYPED_FROM:
        return ["--fp16"] if s.precision == "fp16" else []
    if s.precision == "fp16" and not s.onnx_fp16:
        raise BadInput(f"TensorRT {tensorrt} builds strongly typed networks only (no --fp16): {s.onnx.name} is FP32, "
                       "so the engine would be FP32; pass the FP16 export (`tritonctl export` writes model_fp16.onnx) "
                       "or use --precision fp32")
    if s.precision == "fp32" and s.onnx_fp16:
        raise BadInput(f"TensorRT {tensorrt} builds strongly typed networks only: {s.onnx.name} is FP16, so the engine "
                       "would be FP16; pass the FP32 export (model_fp32.onnx) for --precision fp32")
    return []


def build_command(s: EngineSettings, trtexec: str, onnx: str, engine: str, tensorrt: str | None = None) -> list[str]:
    """The seed's command line: min/opt/max shapes, --shapes at opt, --fp16 where the TensorRT version has it."""
    cmd = [
        trtexec, f"--onnx={onnx}", f"--saveEngine={engine}",
        f"--optShapes={s.shape(s.opt_batch)}", f"--minShapes={s.shape(s.min_batch)}",
        f"--maxShapes={s.shape(s.max_batch)}", f"--shapes={s.shape(s.opt_batch)}",
        *precision_flags(s, tensorrt),
    ]
    if s.workspace_mb:
        cmd.append(f"--memPoolSize=workspace:{s.workspace_mb}M")  # `--workspace` is gone since TensorRT 10
    return cmd


def timing_command(trtexec: str, engine: str, shape: str, times: str) -> list[str]:
    """The seed's timing run of a built engine."""
    return [trtexec, f"--loadEngine={engine}", f"--shapes={shape}", f"--exportTimes={times}"]


def container_spec(image: str, gpus: str, command: list[str], volumes: dict[str, dict[str, str]],
                   purpose: str) -> dict[str, Any]:
    """docker `containers.run` kwargs: the image (default: the one `serve` uses), the GPUs asked for, no network."""
    from tritonctl.core.containers import DEFAULT_IMAGE, gpu_request

    return {"image": image or DEFAULT_IMAGE, "command": command, "detach": True, "privileged": False,
            "device_requests": [gpu_request(gpus)], "labels": {"tritonctl": "build-engine", "tritonctl.step": purpose},
            "volumes": volumes, "network_disabled": True}


def engine_container_spec(s: EngineSettings, command: list[str]) -> dict[str, Any]:
    """The build's container: the ONNX folder read-only, the output folder writable."""
    volumes = {str(s.onnx.parent.resolve()): {"bind": WORK_IN, "mode": "ro"},
               str(s.out_dir.resolve()): {"bind": WORK_OUT, "mode": "rw"}}
    return container_spec(s.image, s.gpus, command, volumes, "build")


# ---------------------------------------------------------------- running it


def run_local(command: list[str], log_file: Path, on_line: Callable[[str], None]) -> int:
    """trtexec on this host; its log streamed and kept; on Ctrl-C its whole process group ends with us."""
    code = procs.run(command, on_line, log_file=log_file).exit_code
    return 1 if code is None else code


def run_docker(spec: dict[str, Any], log_file: Path, on_line: Callable[[str], None]) -> int:
    code = containers.run_container(spec, on_line, log_file).exit_code
    return 1 if code is None else code


@dataclass
class EngineResult:
    engine: Path
    log_file: Path
    summary: TrtexecSummary
    command: list[str]
    trtexec: Trtexec


def _builders() -> tuple[bool, bool]:
    """(a local trtexec exists, a Docker engine answers)."""
    try:
        find_trtexec()
        local = True
    except ToolMissing:
        local = False
    try:
        containers.docker_client()
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
    # "Docker" alone would be wrong where the docker CLI is installed and only its engine is missing.
    raise ToolMissing("no Docker engine answers and no trtexec is on PATH: a TensorRT engine is built on a GPU host. "
                      f"Without one, serve the FP32 ONNX on the local runtime: tritonctl config --name NAME --model "
                      f"{_cpu_onnx(s.onnx)} && tritonctl serve --detach")


def _cpu_onnx(onnx: Path) -> Path:
    """What the local runtime should serve: the FP32 export beside the FP16 one when there is one (ONNX Runtime
    computes FP32 faster than FP16 on a CPU; README)."""
    fp32 = onnx.with_name("model_fp32.onnx")
    return fp32 if fp32.is_file() else onnx


def _failed(code: int, summary: TrtexecSummary, log_file: Path) -> ModelError:
    said = f": {summary.error}" if summary.error else ""
    return ModelError(f"trtexec failed (exit {code}){said}; its log is in {log_file}")


def build(s: EngineSettings, on_line: Callable[[str], None]) -> EngineResult:
    check_builder(s)
    trt = probe(s.runtime, s.image, s.gpus, on_line)
    precision_flags(s, trt.version)  # refused here, before anything is written
    s.out_dir.mkdir(parents=True, exist_ok=True)
    engine = s.out_dir / "model.plan"
    partial = s.out_dir / ".model.plan.partial"
    log_file = s.out_dir / "trtexec_build.log"
    if s.runtime == "local":
        command = build_command(s, trt.path, str(s.onnx.resolve()), str(partial.resolve()), trt.version)
        code = run_local(command, log_file, on_line)
    else:
        command = build_command(s, trt.path, f"{WORK_IN}/{s.onnx.name}", f"{WORK_OUT}/{partial.name}", trt.version)
        code = run_docker(engine_container_spec(s, command), log_file, on_line)
    summary = parse_summary(log_file.read_text(errors="replace").splitlines())
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise _failed(code, summary, log_file)
    commit(partial, engine)
    trt = dataclasses.replace(trt, version=summary.tensorrt or trt.version)  # the build's own log has the last word
    _record(s, trt, command, summary, engine)
    return EngineResult(engine, log_file, summary, command, trt)


def _record(s: EngineSettings, trt: Trtexec, command: list[str], summary: TrtexecSummary, engine: Path) -> None:
    """engine.json and model.json: what was built, and where (TensorRT version, image), for `--time` and `serve`."""
    meta: ModelMeta = read_onnx(s.onnx)
    meta.precision = s.precision
    meta.extra = {**meta.extra, "trt_batch": [s.min_batch, s.opt_batch, s.max_batch], "onnx": s.onnx.name,
                  "tensorrt": trt.version, "image": trt.image}
    meta.write(s.out_dir)
    (s.out_dir / "engine.json").write_text(json.dumps({
        "trtexec": trt.path, "tensorrt": trt.version, "image": trt.image, "runtime": s.runtime, "gpus": s.gpus,
        "command": command, "summary": summary.to_dict()}, indent=2))
    if s.repo is not None and s.name is not None:
        version = s.repo / s.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copy2(engine, version / "model.plan")
        meta.write(s.repo / s.name)


# ---------------------------------------------------------------- timing a built engine (`build-engine --time`)


@dataclass(frozen=True)
class TimingSettings:
    """Where and how to time an engine: by default where it was built (its image, or this host), as recorded."""

    engine: Path
    out_dir: Path
    shape: str
    runtime: str
    image: str
    gpus: str
    built_with: str | None  # the TensorRT version recorded at build time
    built_in: str | None  # the image recorded at build time (None: this host, or not recorded)
    recorded: bool

    @classmethod
    def create(cls, engine: Path, out_dir: Path, batch: int, runtime: str | None = None, image: str = "",
               gpus: str = "all") -> TimingSettings:
        from tritonctl.model.metadata import read_sidecar

        if not engine.is_file():
            raise BadInput(f"engine {engine} does not exist: build one with `tritonctl build-engine`")
        meta = read_sidecar(engine)
        if meta is None or not meta.inputs:
            raise BadInput(f"no model.json beside {engine}: it tells the input name and size")
        lo, _, hi = (meta.extra.get("trt_batch") or [1, batch, batch])[:3]
        if not lo <= batch <= hi:
            raise BadInput(f"--batch {batch}: {engine.name} was built for batch {lo}..{hi}")
        h, w = meta.imgsz or meta.inputs[0].shape[2:4]
        record = _build_record(engine, meta)
        built_in = record.get("image")
        chosen = runtime or record.get("runtime") or ("docker" if built_in else "local")
        if chosen not in ("docker", "local"):
            raise BadInput(f"--runtime {chosen!r}: choose docker or local")
        return cls(engine, out_dir, f"{meta.inputs[0].name}:{batch}x3x{h}x{w}", chosen, image or built_in or "",
                   gpus, record.get("tensorrt"), built_in, bool(record))


def _build_record(engine: Path, meta: ModelMeta) -> dict[str, Any]:
    """Where the engine was built: engine.json beside it, else the keys build-engine put into model.json."""
    path = engine.parent / "engine.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise BadInput(f"{path} is not build-engine's engine.json ({exc})") from exc
    if isinstance(data, dict) and ("tensorrt" in data or "image" in data):
        return data
    return {k: meta.extra[k] for k in ("tensorrt", "image") if k in meta.extra}


@dataclass
class TimingResult:
    summary: TrtexecSummary
    times: dict[str, Any]
    log_file: Path
    command: list[str]
    trtexec: Trtexec
    notes: list[str]


def _check_same_tensorrt(t: TimingSettings, trt: Trtexec) -> None:
    if t.built_with and trt.version and t.built_with != trt.version:
        built = f" in {t.built_in}" if t.built_in else " on this host"
        raise ModelError(f"{t.engine.name} was built with TensorRT {t.built_with}{built}; the trtexec found ({trt.describe()}) "
                         "cannot load it: engines do not move across TensorRT versions. Time it where it was built "
                         "(leave --runtime/--image out) or build it again here")


def time_engine(t: TimingSettings, on_line: Callable[[str], None]) -> TimingResult:
    """The seed's timing run, in the same image (or host) and TensorRT version the engine was built with."""
    unknown = f"no record of where {t.engine.name} was built (engine.json): timed with --runtime {t.runtime}"
    notes = [] if t.recorded else [unknown]
    trt = probe(t.runtime, t.image, t.gpus, on_line)
    _check_same_tensorrt(t, trt)
    t.out_dir.mkdir(parents=True, exist_ok=True)
    times = t.out_dir / "inference_times.json"
    log_file = t.out_dir / "trtexec_time.log"
    if t.runtime == "local":
        command = timing_command(trt.path, str(t.engine.resolve()), t.shape, str(times.resolve()))
        code = run_local(command, log_file, on_line)
    else:
        command = timing_command(trt.path, f"{WORK_ENGINE}/{t.engine.name}", t.shape, f"{WORK_OUT}/{times.name}")
        volumes = {str(t.engine.parent.resolve()): {"bind": WORK_ENGINE, "mode": "ro"},
                   str(t.out_dir.resolve()): {"bind": WORK_OUT, "mode": "rw"}}
        code = run_docker(container_spec(t.image, t.gpus, command, volumes, "time"), log_file, on_line)
    summary = parse_summary(log_file.read_text(errors="replace").splitlines())
    if code != 0 or not times.is_file():
        raise _failed(code, summary, log_file)
    parsed = parse_times(times, summary.warmup_ms if summary.warmup_ms is not None else DEFAULT_WARMUP_MS)
    (t.out_dir / "timing.json").write_text(json.dumps({
        "engine": str(t.engine), "trtexec": trt.path, "tensorrt": trt.version, "image": trt.image, "command": command,
        "summary": summary.to_dict(), "times": parsed}, indent=2))
    return TimingResult(summary, parsed, log_file, command, trt, notes)
