"""The `tritonctl` command line: parses flags into settings and hands them to the module that does the work.

Heavy libraries (ultralytics, torch, onnxruntime, cv2, docker, tritonclient) are imported inside the commands,
so that `tritonctl --help` stays instant.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from tritonctl.errors import TritonctlError

app = typer.Typer(
    help="From a YOLO checkpoint to real-time object detection on NVIDIA Triton Inference Server.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
err = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Our own errors become one red line and their exit code; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TritonctlError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from tritonctl.errors import BadInput

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInput(f"{flag} {text!r}: give whole numbers separated by commas, e.g. 4,8") from None
    return values


# ---------------------------------------------------------------- serve / status / stop


@app.command()
@command
def serve(
    runtime: str = typer.Option("local", help="local: the bundled tritonserver on the CPU; docker: the NGC image on GPUs"),
    repo: Path = typer.Option(Path("model_repository"), help="Triton model repository"),
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)"),
    http_port: int = typer.Option(8000),
    grpc_port: int = typer.Option(8001),
    metrics_port: int = typer.Option(8002),
    detach: bool = typer.Option(False, "--detach", "-d", help="return once ready; stop it with `tritonctl stop`"),
    log_file: Path | None = typer.Option(None, help="server log (default: the state folder)"),
    timeout: float = typer.Option(120.0, help="seconds to wait for readiness"),
    image: str = typer.Option("", help="Triton image for --runtime docker"),
    gpus: str = typer.Option("all", help="GPUs for --runtime docker: all, or indexes such as 0,1"),
) -> None:
    """Launch Triton on a model repository and wait until it is ready."""
    from tritonctl import server
    from tritonctl.status import query, render

    s = server.ServeSettings.create(
        runtime=runtime, repo=repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        detach=detach, log_file=log_file, timeout_s=timeout, image=image or server.DEFAULT_IMAGE, gpus=gpus)
    t0 = time.monotonic()
    with err.status(f"starting Triton ({s.runtime}) on {s.url} …"):
        if s.runtime == "docker":
            container = server.start_docker(s)
            record = server.ServerRecord("docker", s.url, container=container.name, repo=str(s.repo))
            log_path = None
        else:
            local = server.start_local(s)
            record = server.ServerRecord("local", s.url, pid=local.process.pid, log_file=str(local.log_file),
                                         repo=str(s.repo))
            log_path = local.log_file
    record.save()
    out.print(f"[green]ready[/] in {time.monotonic() - t0:.1f} s: http {s.url}, grpc {s.host}:{s.grpc_port}, "
              f"metrics {s.host}:{s.metrics_port}" + (f", log {log_path}" if log_path else ""))
    render(query(s.url))
    if s.detach:
        out.print("stop it with [bold]tritonctl stop[/]")
        return
    _follow(record, local if s.runtime == "local" else None)


def _follow(record: Any, local: Any) -> None:
    """Foreground mode: show the server log until it exits or Ctrl-C, then stop it."""
    from tritonctl import server

    out.print("[dim]serving in the foreground; Ctrl-C stops the server[/]")
    try:
        if local is None:
            while True:
                time.sleep(1)
        with open(local.log_file, errors="replace") as log:
            log.seek(0, 2)
            while local.alive():
                line = log.readline()
                if line:
                    out.print(line.rstrip(), markup=False, highlight=False)
                else:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        err.print("[yellow]stopping Triton …[/]")
    finally:
        server.stop_record(record, timeout_s=15)


@app.command()
@command
def status(
    url: str = typer.Option("", help="host:port of Triton's HTTP endpoint (default: every server `serve` started)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON for scripts"),
) -> None:
    """Health, version and the model table of a running Triton."""
    from tritonctl import server
    from tritonctl.errors import ServerError
    from tritonctl.status import query, render

    urls = [url] if url else [r.url for r in server.records()] or ["127.0.0.1:8000"]
    results = [query(u) for u in urls] if url or len(urls) == 1 else _query_known(urls)
    if not results:
        raise ServerError("no server that `tritonctl serve` started is answering: start one, or pass --url")
    if as_json:
        print(json.dumps([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict(), indent=2))
        return
    for result in results:
        render(result)


def _query_known(urls: list[str]) -> list[Any]:
    from tritonctl.errors import ServerError
    from tritonctl.status import query

    results = []
    for u in urls:
        try:
            results.append(query(u))
        except ServerError as exc:
            err.print(f"[yellow]{exc}[/]")
    return results


@app.command()
@command
def stop(
    url: str = typer.Option("", help="host:port of the server to stop (default: every server `serve --detach` started)"),
    timeout: float = typer.Option(15.0, help="seconds to wait after SIGTERM before SIGKILL"),
) -> None:
    """Stop what `tritonctl serve --detach` started: gracefully, then firmly after --timeout."""
    from tritonctl import server
    from tritonctl.errors import BadInput

    targets = [r for r in server.records() if not url or r.url == url]
    if not targets:
        raise BadInput(f"no server started by `tritonctl serve --detach` {'at ' + url if url else 'is recorded'}")
    for record in targets:
        stopped = server.stop_record(record, timeout)
        out.print(f"{'stopped' if stopped else 'already gone'}: {record.runtime} server at {record.url}")


# ---------------------------------------------------------------- config


@app.command()
@command
def config(
    name: str = typer.Option(..., help="model name in the repository"),
    model: Path = typer.Option(..., help="the .onnx or .plan file to serve"),
    repo: Path = typer.Option(Path("model_repository")),
    platform: str = typer.Option("auto", help="tensorrt_plan, onnxruntime_onnx, local_onnx (the local runtime's CPU "
                                              "runner), or auto: from the file and --kind"),
    max_batch: int = typer.Option(16),
    preferred_batch: str = typer.Option("4,8", help="preferred batch sizes for the dynamic batcher"),
    queue_delay_us: int = typer.Option(500),
    instances: int = typer.Option(1),
    kind: str | None = typer.Option(None, help="cpu or gpu (default: gpu for plans, cpu otherwise)"),
    gpus: str = typer.Option("", help="GPU indexes for the instance group, e.g. 0,1"),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup"),
    pinned_memory: bool = typer.Option(False, "--pinned-memory"),
    threads: int = typer.Option(0, help="ONNX Runtime threads of the CPU runner (0: its default)"),
    trt_accelerator: bool = typer.Option(False, "--trt-accelerator", help="TensorRT EP for onnxruntime_onnx"),
    precision: str | None = typer.Option(None, help="fp16 or fp32: refuse a model of the other precision"),
) -> None:
    """Write config.pbtxt, the model file and labels.txt into a Triton model repository."""
    from tritonctl.repository import ConfigSettings, write_model

    settings = ConfigSettings.create(
        name=name, model_file=model, repo=repo, platform=platform, kind=kind, max_batch=max_batch,
        preferred_batch=_int_list(preferred_batch, "--preferred-batch") if max_batch > 0 else (),
        queue_delay_us=queue_delay_us, instances=instances, gpus=_int_list(gpus, "--gpus"), warmup=warmup,
        pinned_memory=pinned_memory, threads=threads, trt_accelerator=trt_accelerator, precision=precision)
    folder = write_model(settings)
    out.print(f"[green]wrote[/] {folder}/config.pbtxt ({settings.platform}, max batch {settings.max_batch})")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out.print(f"  {path.relative_to(folder.parent)}  [dim]{path.stat().st_size:,} B[/]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
