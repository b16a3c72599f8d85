"""Containers tritonctl starts through the docker SDK (the Triton server, trtexec, perf_analyzer): the client, the
GPU request, bind mounts, Docker's refusals as one line, and running a container to completion with its log streamed.

Below both the model (build-engine runs trtexec in a container) and serving (the NGC server image), so the image name
and the GPU request live here, not in either of them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonctl.core.errors import BadInput, ServerError, ToolMissing, TritonctlError
from tritonctl.core.procs import Finished

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"  # the NGC image `serve` runs and `build-engine` builds in


def gpu_ids(gpus: str) -> list[str] | None:
    """`all` -> None (every GPU); `0,1` -> ['0', '1']."""
    if gpus == "all":
        return None
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise BadInput(f"--gpus {gpus!r}: use all, or GPU indexes such as 0 or 0,1")
    return ids


def gpu_request(gpus: str) -> Any:
    """A docker DeviceRequest for exactly the GPUs asked for (`all`, or indexes such as `0,1`)."""
    from docker.types import DeviceRequest

    ids = gpu_ids(gpus)
    if ids is None:
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    return DeviceRequest(device_ids=ids, capabilities=[["gpu"]])


def docker_client() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise ToolMissing("the docker Python package is missing: `pip install docker` (or use --runtime local)") from exc
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise ToolMissing(f"cannot reach the Docker daemon ({exc.__class__.__name__}): start Docker, "
                          "or use --runtime local") from exc
    return client


def stream_container(container: Any, on_line: Callable[[str], None], running: Callable[[], bool],
                     poll_s: float = 1.0, since: int | None = None) -> None:
    """A container's log, line by line, until it ends. The log is read in a thread; this thread polls the
    container, so a container that dies without closing the log stream is still noticed."""
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        try:
            pending = ""
            for chunk in container.logs(stream=True, follow=True, **({} if since is None else {"since": since})):
                pending += chunk.decode(errors="replace")
                *complete, pending = pending.split("\n")
                for line in complete:
                    lines.put(line.rstrip("\r"))
            if pending:
                lines.put(pending)
        except Exception:  # the daemon went away: the poll below reports it
            pass
        finally:
            lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    next_poll = time.monotonic() + poll_s
    while True:
        try:
            line = lines.get(timeout=min(poll_s, 0.2))
        except queue.Empty:
            line = ""
        if line is None:
            return
        if line:
            on_line(line)
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + poll_s
            if not running():
                return


def container_user() -> str:
    """This user's uid:gid: what a container writes into the user's folders (an engine, a cache, results) is the
    user's to delete, not root's."""
    return f"{os.getuid()}:{os.getgid()}"


SELINUX_ENFORCE = Path("/sys/fs/selinux/enforce")


def selinux_enforcing(path: Path = SELINUX_ENFORCE) -> bool:
    """Whether SELinux enforces here: then a bind mount needs the `z` label, or the container cannot read it."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


def bind(host: Path, target: str, mode: str, selinux: bool = False) -> dict[str, dict[str, str]]:
    """One docker SDK `volumes` entry; `selinux` adds the shared `z` label (docker's `-v host:target:mode,z`)."""
    return {str(host.resolve()): {"bind": target, "mode": f"{mode},z" if selinux else mode}}


def selinux_labelled(volumes: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The same bind mounts with the `z` label added where they carry no label yet."""
    def label(mode: str) -> str:
        return mode if {"z", "Z"} & set(mode.split(",")) else f"{mode},z"

    return {host: {**v, "mode": label(v.get("mode", "rw"))} for host, v in volumes.items()}


def _explanation(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return " ".join(text.split())  # one line, whatever the engine sent


def docker_error(exc: BaseException, image: str = "", name: str = "") -> TritonctlError:
    """What the Docker engine refused, as one line that says what to do. The messages matched are the engine's
    and the NVIDIA Container Toolkit's own (tests/fixtures/docker_errors.json)."""
    text = _explanation(exc)
    low = text.lower()
    if "could not select device driver" in low:
        return ToolMissing("Docker cannot give the container a GPU: the NVIDIA Container Toolkit is missing or not "
                           "configured (install nvidia-container-toolkit, run `sudo nvidia-ctk runtime configure "
                           "--runtime=docker`, restart Docker), or use --runtime local")
    if "unsatisfied condition: cuda>=" in low or "please update your driver" in low:
        need = re.search(r"cuda>=([0-9.]+)", low)
        return ServerError(f"the host's NVIDIA driver is too old for {image or 'this image'}"
                           f"{f' (it needs CUDA {need.group(1)})' if need else ''}: upgrade the driver or pick an "
                           "older --image (README, `serve`: which tag needs which driver)")
    if exc.__class__.__name__ == "ImageNotFound" or "manifest unknown" in low or "pull access denied" in low \
            or ("manifest for" in low and "not found" in low):
        return ToolMissing(f"image {image} is not on this host and cannot be pulled under that name: check the tag, "
                           f"then `docker pull {image}`, or pass --image")
    if "invalid reference format" in low:
        return BadInput(f"--image {image!r} is not a valid image name (e.g. nvcr.io/nvidia/tritonserver:25.10-py3)")
    if "port is already allocated" in low or "address already in use" in low:
        return BadInput(f"a port asked for is already in use ({text}): stop what holds it or pick other ports")
    if "conflict" in low and "already in use by container" in low:
        return ServerError(f"a container named {name or '?'} already exists: `tritonctl stop` it, or "
                           f"`docker rm -f {name or '<name>'}` if tritonctl does not know it")
    return ServerError(f"Docker refused the container: {text}")


def start_container(client: Any, spec: dict[str, Any]) -> Any:
    """Create, then start: a container whose start fails (no GPU runtime, a port taken) is removed here instead of
    being left behind under its name. Docker's refusals become one line (`docker_error`)."""
    import docker.errors

    kwargs = {k: v for k, v in spec.items() if k != "remove"}  # `remove` belongs to `run` only; we remove ourselves
    image, name = str(spec.get("image", "")), str(spec.get("name", ""))
    try:
        container = client.containers.create(**kwargs)
    except docker.errors.DockerException as exc:
        raise docker_error(exc, image, name) from exc
    try:
        container.start()
    except docker.errors.DockerException as exc:
        with contextlib.suppress(Exception):
            container.remove(force=True)
        raise docker_error(exc, image, name) from exc
    return container


def run_container(spec: dict[str, Any], on_line: Callable[[str], None], log_file: Path | None = None,
                  keep_lines: bool = False, client: Any = None) -> Finished:
    """Run a container to completion, its log streamed to `on_line` and `log_file`; removed whatever happens.
    It runs as this user unless the spec says otherwise (it writes into the user's folders), and its bind mounts
    get the SELinux `z` label where SELinux enforces."""
    client = client or docker_client()
    spec = {"user": container_user(), **spec}
    if selinux_enforcing():
        spec["volumes"] = selinux_labelled(spec.get("volumes", {}))
    container = start_container(client, spec)
    kept: list[str] = []
    try:
        with open(log_file, "w") if log_file else contextlib.nullcontext() as log:
            def line_out(line: str) -> None:
                if log is not None:
                    log.write(line + "\n")
                if keep_lines:
                    kept.append(line)
                on_line(line)

            def running() -> bool:
                container.reload()
                return bool(container.status in ("created", "running"))

            stream_container(container, line_out, running)
        return Finished(int(container.wait().get("StatusCode", 1)), kept)
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)
