"""Triton model repositories: a structured config (Triton's own ModelConfig protobuf) written as config.pbtxt.

We never template protobuf text: the config is built as a message and printed by protobuf's text_format,
which is exactly what Triton parses.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonctl.core.errors import BadInput
from tritonctl.model.metadata import SIDECAR, ModelMeta, load_meta, read_sidecar

PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx", "local_onnx")
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "local_onnx": "model.onnx"}
OWN_FILES = ("config.pbtxt", "labels.txt", SIDECAR)  # besides 1/<model file>: what `config` writes, and so may replace
DEFAULT_MAX_BATCH = 16
DEFAULT_PREFERRED = (4, 8)
# Where ONNX Runtime's TensorRT EP keeps the engines it builds, inside the container: `serve --runtime docker`
# mounts a writable host folder here (the repository itself is mounted read-only).
TRT_CACHE_IN_CONTAINER = "/trt_cache"


@dataclass(frozen=True)
class ConfigSettings:
    name: str
    model_file: Path
    repo: Path
    platform: str
    max_batch: int = DEFAULT_MAX_BATCH
    preferred_batch: tuple[int, ...] = DEFAULT_PREFERRED
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
        # onnxruntime_onnx is what the NGC image runs on its GPUs; the CPU runner is the local runtime's
        kind = kind or ("cpu" if platform == "local_onnx" else "gpu")
        kw = {k: v for k, v in _defaults(platform, model_file, kw).items() if v is not None}
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
        if self.trt_accelerator and self.kind != "gpu":
            raise BadInput("--trt-accelerator runs TensorRT on a GPU instance: drop --kind cpu")
        if self.precision not in (None, "fp16", "fp32"):
            raise BadInput(f"--precision {self.precision!r}: choose fp16 or fp32")


def _defaults(platform: str, model_file: Path, kw: dict[str, Any]) -> dict[str, Any]:
    """The flags left out, filled in for this model."""
    kw = dict(kw)
    if kw.get("max_batch") is None:  # a plan: the largest batch its engine was built for
        kw["max_batch"] = _engine_batch(model_file)[2] if platform == "tensorrt_plan" else DEFAULT_MAX_BATCH
    if kw.get("preferred_batch") is None:
        kw["preferred_batch"] = tuple(b for b in DEFAULT_PREFERRED if b <= kw["max_batch"])
    if platform == "local_onnx" and kw.get("instances") is None:
        # One single-threaded ONNX Runtime session per core: 129 vs 94 fps for `detect` on 2 cores against one
        # session with 2 threads, which synchronises on every operator (see README, measured figures).
        kw["instances"] = max(1, min(8, os.cpu_count() or 1))
        kw["threads"] = 1 if kw.get("threads") is None else kw["threads"]
    return kw


def _engine_batch(model_file: Path) -> tuple[int, int, int]:
    """The batch profile (min, opt, max) a plan was built with (`build-engine` records it in its model.json),
    or (1, DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH) when nothing says."""
    meta = read_sidecar(model_file)
    return _trt_batch(meta) or (1, DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH)


def _trt_batch(meta: ModelMeta | None) -> tuple[int, int, int] | None:
    batch = (meta.extra if meta else {}).get("trt_batch")
    if not (isinstance(batch, list | tuple) and len(batch) == 3 and all(isinstance(b, int) for b in batch)):
        return None
    return int(batch[0]), int(batch[1]), int(batch[2])


def _check_engine_batch(settings: ConfigSettings, meta: ModelMeta) -> None:
    """TensorRT refuses a max_batch_size above the engine's profile, and Triton sends batches of 1 (warmup, a lone
    request, perf_analyzer -b 1), which an engine whose profile starts above 1 cannot run."""
    batch = _trt_batch(meta) if settings.platform == "tensorrt_plan" else None
    if batch is None:
        return
    low, _, high = batch
    name = settings.model_file.name
    if low > 1:
        raise BadInput(f"{name} was built for batches {low}..{high}, but Triton also sends batches of 1 (warmup, single "
                       f"requests, perf_analyzer -b 1): rebuild it with `tritonctl build-engine --min-batch 1`")
    if settings.max_batch > high:
        raise BadInput(f"--max-batch {settings.max_batch} is above the {high} that {name} was built for: use --max-batch "
                       f"{high} (the default), or rebuild with `tritonctl build-engine --max-batch {settings.max_batch}`")


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
    _check_engine_batch(settings, meta)


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
        # Triton requires batch_size >= 1, also without batching (it skips a warmup of batch 0)
        warm = cfg.model_warmup.add(name="zeros", batch_size=1)
        for t in meta.inputs:
            entry = warm.inputs[t.name]
            entry.data_type = mc.DataType.Value(f"TYPE_{t.dtype}")
            entry.dims.extend(d if d > 0 else 1 for d in t.shape[strip:])
            entry.zero_data = True
    if settings.pinned_memory is not None:
        cfg.optimization.input_pinned_memory.enable = settings.pinned_memory
        cfg.optimization.output_pinned_memory.enable = settings.pinned_memory
    if settings.trt_accelerator:
        _tensorrt_accelerator(cfg, settings, meta)
    # Lets `detect` learn class names and input size from a remote server's config alone.
    cfg.parameters["tritonctl"].string_value = json.dumps(
        {"names": {str(k): v for k, v in meta.names.items()}, "imgsz": meta.imgsz, "task": meta.task,
         "precision": meta.precision})
    return cfg


def _tensorrt_accelerator(cfg: Any, settings: ConfigSettings, meta: ModelMeta) -> None:
    """ONNX Runtime's TensorRT EP (onnxruntime_backend README, parameter mapping). Without an engine cache it builds
    its engines at every load, which can outlast the readiness timeout; without profiles it rebuilds them for every
    new batch size. The cache goes to a folder `serve` mounts writable (one per model)."""
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    acc.parameters["precision_mode"] = "FP16" if meta.precision == "fp16" else "FP32"
    acc.parameters["trt_engine_cache_enable"] = "1"
    acc.parameters["trt_engine_cache_path"] = f"{TRT_CACHE_IN_CONTAINER}/{settings.name}"
    for key, shapes in trt_profile_shapes(settings, meta).items():
        acc.parameters[key] = shapes


def trt_profile_shapes(settings: ConfigSettings, meta: ModelMeta) -> dict[str, str]:
    """`trt_profile_{min,opt,max}_shapes` from the batch range: `images:1x3x640x640` (inputs comma-separated).
    Only for a batching model whose other axes are fixed; otherwise ONNX Runtime takes shapes as they come."""
    if settings.max_batch <= 0 or not meta.inputs or any(d <= 0 for t in meta.inputs for d in t.shape[1:]):
        return {}
    batches = {"min": 1, "opt": max(settings.preferred_batch, default=settings.max_batch), "max": settings.max_batch}

    def shapes(batch: int) -> str:
        return ",".join(f"{t.name}:{'x'.join(str(d) for d in (batch, *t.shape[1:]))}" for t in meta.inputs)

    return {f"trt_profile_{k}_shapes": shapes(b) for k, b in batches.items()}


def config_text(cfg: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(cfg))


def parse_config(text: str) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(text, mc.ModelConfig())


def _keep_foreign_files(old: Path, staging: Path) -> None:
    """Carry into the new folder every file `config` did not write (a model.plan that `build-engine --repo` put
    there, the user's own files): only config.pbtxt, labels.txt, model.json and 1/<model file> are ours to replace."""
    for path in sorted(old.rglob("*")):
        rel = path.relative_to(old)
        dest = staging / rel
        if (path.is_dir() and not path.is_symlink()) or dest.exists() or rel.as_posix() in OWN_FILES:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest, follow_symlinks=False)  # the old folder goes away next: a link moves even a large plan
        except OSError:
            shutil.copy2(path, dest, follow_symlinks=False)


def _staging_folder(repo: Path, name: str) -> Path:
    """A new folder to build the model in, renamed into place at the end. Made with mkdir, not mkdtemp: it becomes
    the model folder, which should have the usual mode (0o777 & ~umask), not mkdtemp's private 0700."""
    staging = repo / f".{name}.{secrets.token_hex(8)}"
    staging.mkdir()
    return staging


def write_model(settings: ConfigSettings) -> Path:
    """Write <repo>/<name>/{config.pbtxt, labels.txt, model.json, 1/<model file>} all at once, keeping the files of the
    folder it did not write; returns the model folder."""
    meta = load_meta(settings.model_file)
    _check_model(settings, meta)
    cfg = build_config(settings, meta)
    try:
        settings.repo.mkdir(parents=True, exist_ok=True)
        staging = _staging_folder(settings.repo, settings.name)
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
            _keep_foreign_files(target, staging)
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


# ---------------------------------------------------------------- what a repository holds


@dataclass(frozen=True)
class RepoModel:
    """One model of a repository, as `serve` checks it: its parsed config and the model.json beside it."""

    name: str
    folder: Path
    config: Any  # ModelConfig
    meta: ModelMeta | None

    @property
    def platform(self) -> str:
        """tensorrt_plan, onnxruntime_onnx, local_onnx (our CPU runner on the python backend), or Triton's own name."""
        if self.config.backend == "python" and "onnx_file" in self.config.parameters:
            return "local_onnx"
        return str(self.config.platform or self.config.backend)

    def gpu_ids(self) -> list[int]:
        return sorted({g for group in self.config.instance_group for g in group.gpus})

    def trt_cache_path(self) -> str | None:
        """The TensorRT EP engine cache folder (inside the container) its config asks for, if any."""
        for acc in self.config.optimization.execution_accelerators.gpu_execution_accelerator:
            if acc.name == "tensorrt" and acc.parameters.get("trt_engine_cache_enable", "0").lower() in ("1", "true"):
                return acc.parameters.get("trt_engine_cache_path") or None
        return None


def read_repository(repo: Path) -> list[RepoModel]:
    """The models of a repository whose config.pbtxt parses (one that does not is Triton's to report, by name)."""
    from google.protobuf import text_format

    models = []
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            cfg = parse_config((folder / "config.pbtxt").read_text())
        except (OSError, UnicodeDecodeError, text_format.ParseError):
            continue
        try:
            meta = read_sidecar(folder / SIDECAR)
        except BadInput:  # not ours: nothing to check against it
            meta = None
        models.append(RepoModel(folder.name, folder, cfg, meta))
    return models
