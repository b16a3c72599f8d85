"""Triton model repositories: a structured config (Triton's own ModelConfig protobuf) written as config.pbtxt.

We never template protobuf text: the config is built as a message and printed by protobuf's text_format,
which is exactly what Triton parses.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonctl.errors import BadInput
from tritonctl.metadata import ModelMeta, load_meta

PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx", "local_onnx")
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "local_onnx": "model.onnx"}


@dataclass(frozen=True)
class ConfigSettings:
    name: str
    model_file: Path
    repo: Path
    platform: str
    max_batch: int = 16
    preferred_batch: tuple[int, ...] = (4, 8)
    queue_delay_us: int = 500
    instances: int = 1
    kind: str = "cpu"
    gpus: tuple[int, ...] = ()
    warmup: bool = True
    pinned_memory: bool | None = None  # None: Triton's default (enabled)
    threads: int = 0
    trt_accelerator: bool = False
    precision: str | None = None  # what the user expects; checked against the model

    @classmethod
    def create(cls, *, name: str, model_file: Path, repo: Path, platform: str = "auto", kind: str | None = None,
               **kw: Any) -> ConfigSettings:
        """Validate raw flags into settings; every contradiction is refused here, before anything is written."""
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise BadInput(f"model name {name!r} must be letters, digits, '-', '_' or '.' (a folder name for Triton)")
        if not model_file.is_file():
            raise BadInput(f"model file {model_file} does not exist: pass the .onnx or .plan to serve with --model")
        if platform == "auto":
            if model_file.suffix == ".plan" or model_file.suffix == ".engine":
                platform = "tensorrt_plan"
            elif model_file.suffix == ".onnx":
                platform = "onnxruntime_onnx" if kind == "gpu" else "local_onnx"
            elif model_file.suffix in (".pt", ".pth"):
                raise BadInput(f"{model_file.name} is a PyTorch checkpoint: export it first (tritonctl export --model-path "
                               f"{model_file}), then pass model_fp32.onnx or model_fp16.onnx to --model")
            else:
                raise BadInput(f"cannot tell the platform of {model_file.name}: use a .onnx or .plan file, or --platform")
        if platform not in PLATFORMS:
            raise BadInput(f"unknown platform {platform!r}: choose one of {', '.join(PLATFORMS)}")
        kind = kind or ("gpu" if platform == "tensorrt_plan" else "cpu")
        if platform == "local_onnx" and kw.get("instances") is None:
            # One single-threaded ONNX Runtime session per core: 129 vs 94 fps for `detect` on 2 cores against one
            # session with 2 threads, which synchronises on every operator (see README, measured figures).
            kw["instances"] = max(1, min(8, os.cpu_count() or 1))
            kw["threads"] = 1 if kw.get("threads") is None else kw["threads"]
        kw = {k: v for k, v in kw.items() if v is not None}
        settings = cls(name=name, model_file=model_file, repo=repo, platform=platform, kind=kind, **kw)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.kind not in ("cpu", "gpu"):
            raise BadInput(f"--kind {self.kind!r}: choose cpu or gpu")
        if self.platform == "tensorrt_plan" and self.kind != "gpu":
            raise BadInput("a TensorRT plan runs only on a GPU: drop --kind cpu")
        if self.platform == "local_onnx" and self.kind != "cpu":
            raise BadInput("the local runtime's ONNX runner is CPU-only: use --platform onnxruntime_onnx for a GPU")
        if self.max_batch < 0:
            raise BadInput("--max-batch must be 0 (no batching) or more")
        bad = [b for b in self.preferred_batch if b < 1 or b > self.max_batch]
        if bad:
            raise BadInput(f"--preferred-batch {bad} lies outside 1..--max-batch {self.max_batch}: lower it or raise --max-batch")
        if self.instances < 1:
            raise BadInput("--instances must be at least 1")
        if self.queue_delay_us < 0:
            raise BadInput("--queue-delay-us cannot be negative")
        if self.trt_accelerator and self.platform != "onnxruntime_onnx":
            raise BadInput("--trt-accelerator applies to --platform onnxruntime_onnx only")
        if self.precision not in (None, "fp16", "fp32"):
            raise BadInput(f"--precision {self.precision!r}: choose fp16 or fp32")


def _check_model(settings: ConfigSettings, meta: ModelMeta) -> None:
    input_types = {t.dtype for t in meta.inputs}
    if settings.precision == "fp32" and "FP16" in input_types:
        raise BadInput(f"{settings.model_file.name} takes FP16 inputs but --precision fp32 was asked: "
                       "pick the FP32 model or drop --precision")
    if settings.precision == "fp16" and "FP32" in input_types and meta.precision != "fp16":
        raise BadInput(f"{settings.model_file.name} is an FP32 model but --precision fp16 was asked: use model_fp16.onnx")
    if settings.max_batch > 0 and meta.inputs and not meta.dynamic_batch:
        fixed = meta.inputs[0].shape[0] if meta.inputs[0].shape else 0
        if settings.max_batch > fixed:
            raise BadInput(f"{settings.model_file.name} has a fixed batch of {fixed}: use --max-batch {fixed} or export "
                           "without --static")


def build_config(settings: ConfigSettings, meta: ModelMeta) -> Any:
    """The ModelConfig message for this model and these settings."""
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=settings.name, max_batch_size=settings.max_batch)
    if settings.platform == "local_onnx":
        cfg.backend = "python"
        cfg.parameters["onnx_file"].string_value = MODEL_FILES["local_onnx"]
        cfg.parameters["intra_op_threads"].string_value = str(settings.threads)
    else:
        cfg.platform = settings.platform
        cfg.default_model_filename = MODEL_FILES[settings.platform]
    strip = 1 if settings.max_batch > 0 else 0
    for t in meta.inputs:
        cfg.input.add(name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.dtype}"), dims=list(t.shape[strip:]))
    for t in meta.outputs:
        out = cfg.output.add(name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.dtype}"), dims=list(t.shape[strip:]))
        if meta.names:
            out.label_filename = "labels.txt"
    if settings.max_batch > 0:
        cfg.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch)
        cfg.dynamic_batching.max_queue_delay_microseconds = settings.queue_delay_us
    group = cfg.instance_group.add(count=settings.instances)
    group.kind = mc.ModelInstanceGroup.KIND_GPU if settings.kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    group.gpus.extend(settings.gpus)
    if settings.warmup:
        warm = cfg.model_warmup.add(name="zeros", batch_size=1 if settings.max_batch > 0 else 0)
        for t in meta.inputs:
            entry = warm.inputs[t.name]
            entry.data_type = mc.DataType.Value(f"TYPE_{t.dtype}")
            entry.dims.extend(d if d > 0 else 1 for d in t.shape[strip:])
            entry.zero_data = True
    if settings.pinned_memory is not None:
        cfg.optimization.input_pinned_memory.enable = settings.pinned_memory
        cfg.optimization.output_pinned_memory.enable = settings.pinned_memory
    if settings.trt_accelerator:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP16" if meta.precision == "fp16" else "FP32"
    # Lets `detect` learn class names and input size from a remote server's config alone.
    cfg.parameters["tritonctl"].string_value = json.dumps(
        {"names": {str(k): v for k, v in meta.names.items()}, "imgsz": meta.imgsz, "task": meta.task,
         "precision": meta.precision})
    return cfg


def config_text(cfg: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(cfg))


def parse_config(text: str) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(text, mc.ModelConfig())


def write_model(settings: ConfigSettings) -> Path:
    """Write <repo>/<name>/{config.pbtxt, labels.txt, model.json, 1/<model file>} all at once; returns the model folder."""
    meta = load_meta(settings.model_file)
    _check_model(settings, meta)
    cfg = build_config(settings, meta)
    try:
        settings.repo.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{settings.name}.", dir=settings.repo))
    except OSError as exc:
        raise BadInput(f"cannot write to the repository {settings.repo} ({exc.strerror}): pick a writable --repo") from exc
    try:
        version = staging / "1"
        version.mkdir()
        shutil.copy2(settings.model_file, version / MODEL_FILES[settings.platform])
        if settings.platform == "local_onnx":
            shutil.copy2(Path(__file__).parent / "backend" / "model.py", version / "model.py")
        (staging / "config.pbtxt").write_text(config_text(cfg))
        if meta.names:
            (staging / "labels.txt").write_text("".join(f"{meta.names[i]}\n" for i in sorted(meta.names)))
        meta.write(staging)
        target = settings.repo / settings.name
        if target.exists():
            old = settings.repo / f".{settings.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
