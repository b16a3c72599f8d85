"""Before a server starts: the host's GPUs and driver against the NGC image (NVIDIA's release notes), the models
against the runtime (its backends, the GPUs the container sees, the TensorRT a plan was built with)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tritonctl.core import procs
from tritonctl.core.containers import gpu_ids
from tritonctl.core.errors import BadInput, ServerError, ToolMissing
from tritonctl.model.repository import RepoModel, read_repository
from tritonctl.serving.settings import ServeSettings


@dataclass(frozen=True)
class HostGpu:
    """One GPU as nvidia-smi reports it."""

    driver: str  # e.g. 575.57.08
    compute_cap: float | None  # e.g. 9.0; None where the driver cannot say

    @property
    def branch(self) -> int:
        return int(self.driver.split(".")[0])

    @property
    def driver_version(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.driver.split("."))


_DRIVER = re.compile(r"\d+(?:\.\d+)+")
_CAP = re.compile(r"\d+\.\d+")


def parse_nvidia_smi(text: str) -> list[HostGpu]:
    """`nvidia-smi --query-gpu=driver_version,compute_cap --format=csv,noheader`: one `575.57.08, 9.0` line per GPU,
    in index order. Its error messages yield no GPU; an old driver's `[N/A]` yields no compute capability."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if not _DRIVER.fullmatch(fields[0]):
            continue
        cap = fields[1] if len(fields) > 1 else ""
        gpus.append(HostGpu(fields[0], float(cap) if _CAP.fullmatch(cap) else None))
    return gpus


def host_gpus() -> list[HostGpu] | None:
    """This host's GPUs; None without nvidia-smi, or when it cannot talk to a driver."""
    for query in ("driver_version,compute_cap", "driver_version"):  # drivers before R510 cannot query compute_cap
        try:
            done = procs.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], keep_lines=True,
                             timeout_s=30)
        except ToolMissing:
            return None
        gpus = parse_nvidia_smi("\n".join(done.lines))
        if gpus:
            return gpus
    return None


@dataclass(frozen=True)
class ImageNeeds:
    release: str  # the NGC tag's yy.mm
    cuda: str
    min_driver: int  # the driver branch the release notes ask for
    min_cap: float  # the lowest compute capability it supports


# NVIDIA's Triton release notes, "Driver Requirements" and "GPU Requirements" of each release; newest first.
RELEASES = (
    ImageNeeds("25.10", "13.0.2", 575, 7.5),
    ImageNeeds("25.08", "13.0.0", 575, 7.5),
    ImageNeeds("25.06", "12.9.1", 575, 7.5),
    ImageNeeds("25.04", "12.9.0", 575, 7.5),
    ImageNeeds("25.03", "12.8.1", 560, 7.5),
    ImageNeeds("24.10", "12.6.2", 560, 6.0),
    ImageNeeds("24.04", "12.4", 545, 6.0),
    ImageNeeds("23.08", "12.2.1", 535, 6.0),
)
# The older drivers the same notes accept on data-center GPUs, through CUDA forward compatibility.
FORWARD_COMPATIBLE = ((470, 57), (525, 85), (535, 86), (545, 23))
_TAG = re.compile(r"tritonserver:(\d{2}\.\d{2})")


def image_needs(image: str) -> ImageNeeds | None:
    """What an NGC Triton image needs of the host; None for a tag the release notes above do not place (a later
    tag than the newest listed is taken to need at least as much)."""
    m = _TAG.search(image)
    if not m:
        return None
    release = m.group(1)
    if release > RELEASES[0].release:
        return ImageNeeds(release, f"{RELEASES[0].cuda} or later", RELEASES[0].min_driver, RELEASES[0].min_cap)
    return next((r for r in RELEASES if r.release == release), None)


def _forward_compatible(gpu: HostGpu) -> bool:
    return any(gpu.branch == branch and gpu.driver_version[1:2] >= (minor,) for branch, minor in FORWARD_COMPATIBLE)


def fitting_image(image: str, gpus: list[HostGpu]) -> str | None:
    """The newest listed release these GPUs and their driver run, named like `image`."""
    for r in RELEASES:
        if all(g.branch >= r.min_driver and (g.compute_cap or r.min_cap) >= r.min_cap for g in gpus):
            return _TAG.sub(f"tritonserver:{r.release}", image)
    return None


def check_host(image: str, gpus: list[HostGpu]) -> list[str]:
    """The image against the host's GPUs (those handed to the container): refuses what cannot run, returns a warning
    for what runs only on data-center GPUs through forward compatibility."""
    needs = image_needs(image)
    if needs is None or not gpus:
        return []
    fit = fitting_image(image, gpus)
    instead = f"use --image {fit} (build the engine with the same image)" if fit else "no release listed fits this host"
    caps = sorted(g.compute_cap for g in gpus if g.compute_cap is not None and g.compute_cap < needs.min_cap)
    if caps:
        raise ServerError(f"{image} supports GPUs of compute capability {needs.min_cap} and later, and this GPU is "
                          f"{caps[0]}: {instead}")
    old = [g for g in gpus if g.branch < needs.min_driver]
    if not old:
        return []
    what = (f"the NVIDIA driver here ({old[0].driver}) is older than the R{needs.min_driver} that {image} "
            f"(CUDA {needs.cuda}) needs")
    if all(_forward_compatible(g) for g in old):
        return [f"{what}: it runs only on a data-center GPU, through CUDA forward compatibility; otherwise {instead}"]
    raise ServerError(f"{what}: upgrade the driver, or {instead}")


def _container_gpus(gpus: list[HostGpu], flag: str) -> list[HostGpu]:
    ids = gpu_ids(flag)
    return gpus if ids is None else [gpus[int(i)] for i in ids if int(i) < len(gpus)]


def check_gpu_ids(models: list[RepoModel], flag: str, host_count: int | None) -> None:
    """Instance groups name GPUs as the container numbers them: `--gpus 1` makes host GPU 1 the container's device 0,
    and Triton refuses a config that asks for GPU 1 ("invalid or unsupported gpu id")."""
    ids = gpu_ids(flag)
    visible = len(ids) if ids is not None else host_count
    if visible is None:
        return
    for m in models:
        bad = [g for g in m.gpu_ids() if g >= visible]
        if not bad:
            continue
        g = bad[0]
        if ids is not None and str(g) in ids:
            how = f"--gpus {flag} exposes host GPU {g} as device {ids.index(str(g))}: write `tritonctl config --name " \
                  f"{m.name} --gpus {ids.index(str(g))} …`"
        else:
            how = f"it sees devices 0..{visible - 1}: write `tritonctl config --name {m.name} --gpus` with those"
        raise BadInput(f"model '{m.name}' asks for GPU {g}, which the container does not have: {how}")


def check_docker_models(models: list[RepoModel]) -> None:
    """The NGC image has no tritonctl: the local runtime's CPU runner (a python-backend model) cannot load there."""
    local = [m.name for m in models if m.platform == "local_onnx"]
    if local:
        names = ", ".join(f"'{n}'" for n in local)
        raise BadInput(f"model {names} runs on the local runtime's CPU runner (python backend), which the NGC image does "
                       "not have: for --runtime docker write it with `tritonctl config --platform onnxruntime_onnx` or "
                       "serve a TensorRT plan from `tritonctl build-engine`; or serve it with --runtime local")


def engine_warnings(models: list[RepoModel], image: str) -> list[str]:
    """Plans built in another image than the one starting: a TensorRT engine loads only under the TensorRT that
    built it."""
    warnings = []
    for m in models:
        extra = m.meta.extra if m.meta else {}
        built_in = str(extra.get("image") or "")
        if m.platform == "tensorrt_plan" and built_in and built_in != image:
            trt = f" (TensorRT {extra['tensorrt']})" if extra.get("tensorrt") else ""
            warnings.append(f"model '{m.name}': its model.plan was built in {built_in}{trt}, not in {image}; engines do "
                            f"not move across TensorRT versions: rebuild it with `tritonctl build-engine --image {image}`")
    return warnings


def check_docker(s: ServeSettings, models: list[RepoModel], gpus: list[HostGpu] | None) -> list[str]:
    """Everything knowable before the container starts: refuses what cannot work, returns warnings."""
    check_docker_models(models)
    check_gpu_ids(models, s.gpus, len(gpus) if gpus else None)
    return check_host(s.image, _container_gpus(gpus or [], s.gpus)) + engine_warnings(models, s.image)


# The backend each platform runs on (Triton's model configuration); a platform not named here (an ensemble) needs none.
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                     "tensorflow_graphdef": "tensorflow", "tensorflow_savedmodel": "tensorflow"}


def check_local_models(models: list[RepoModel], backends: set[str]) -> None:
    """The local runtime has only the backends the nvidia-pytriton wheel bundles (python): a model written for the
    NGC image would fail to load only after the server started ("unable to find backend library for backend …")."""
    needs = {m.name: (m.platform, m.config.backend or PLATFORM_BACKENDS.get(m.config.platform, "")) for m in models}
    lacking = {name: pair for name, pair in needs.items() if pair[1] and pair[1] not in backends}
    if not lacking:
        return
    names = ", ".join(f"'{name}' ({platform})" for name, (platform, _) in lacking.items())
    wanted = ", ".join(sorted({backend for _, backend in lacking.values()}))
    name = next(iter(lacking)) if len(lacking) == 1 else "NAME"
    raise BadInput(f"model {names} needs Triton's {wanted} backend, which the local runtime does not have (it has "
                   f"{', '.join(sorted(backends)) or 'none'}): the local runtime runs local_onnx (the CPU runner): "
                   f"tritonctl config --name {name} --model build/export/model_fp32.onnx --platform local_onnx; or serve "
                   "it with --runtime docker on a GPU host")


def preflight(s: ServeSettings) -> list[str]:
    """Before anything starts: the local runtime's backends against the models; for docker, `check_docker` with this
    host's GPUs (nvidia-smi)."""
    if s.runtime == "local":
        from tritonctl.serving.runtime import find_local_runtime

        backend_dir = find_local_runtime().backend_dir
        check_local_models(read_repository(s.repo), {p.name for p in backend_dir.iterdir() if p.is_dir()})
        return []
    remote = os.environ.get("DOCKER_HOST", "").startswith(("tcp://", "ssh://"))  # its GPUs are not this host's
    return check_docker(s, read_repository(s.repo), None if remote else host_gpus())
