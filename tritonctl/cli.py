"""The `tritonctl` command line: parses flags into settings and hands them to the module that does the work.

Heavy libraries (ultralytics, torch, onnxruntime, cv2, docker, tritonclient) are imported inside the commands,
so that `tritonctl --help` stays instant.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from tritonctl.core.errors import TritonctlError
from tritonctl.core.ui import console

app = typer.Typer(
    help="From a YOLO checkpoint to real-time object detection on NVIDIA Triton Inference Server.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = console(stderr=True)
out = console()
F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Our own errors become one red line and their exit code; Ctrl-C exits 130 without a traceback; a reader that
    closes our output (`| head -1`) ends the command quietly, as it ends any Unix tool."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return _reported(fn, *args, **kwargs)
            finally:
                sys.stdout.flush()  # what print() buffered (`status --json`) fails here, not at interpreter exit
        except BrokenPipeError:  # also when the red line itself cannot be written: stderr is the same pipe (2>&1)
            _silence_output()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None

    return wrapper  # type: ignore[return-value]


def _reported(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TritonctlError as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


# What a shell reports for a writer killed by SIGPIPE (`yes | head -1`); Python ignores SIGPIPE and raises instead.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null: what is still buffered for the closed pipe would otherwise fail again
    when the interpreter flushes at exit ("Exception ignored … BrokenPipeError", exit 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stream already closed or detached
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """Output that is only a report of work already done: a reader that leaves (`| grep -m1 ready`) changes nothing."""
    try:
        yield
    except BrokenPipeError:
        _silence_output()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from tritonctl import __version__

        try:
            installed = version("tritonctl")
        except PackageNotFoundError:  # run from a checkout without installing
            installed = __version__
        print(f"tritonctl {installed}")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit"),
) -> None:
    """From a YOLO checkpoint to real-time object detection on NVIDIA Triton Inference Server."""


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from tritonctl.core.errors import BadInput

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
    cache_dir: Path | None = typer.Option(None, help="--runtime docker: host folder for ONNX Runtime's TensorRT engine "
                                                     "cache (default: the state folder)"),
    selinux_label: bool | None = typer.Option(None, "--selinux-label/--no-selinux-label",
                                              help="--runtime docker: relabel the mounts for SELinux (default: when it "
                                                   "enforces)"),
) -> None:
    """Launch Triton on a model repository and wait until it is ready; in the foreground until Ctrl-C or SIGTERM."""
    from rich.markup import escape

    from tritonctl.core import procs
    from tritonctl.core.errors import ServerError
    from tritonctl.serving import server

    s = server.ServeSettings.create(
        runtime=runtime, repo=repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        detach=detach, log_file=log_file, timeout_s=timeout, image=image or server.DEFAULT_IMAGE, gpus=gpus,
        cache_dir=cache_dir, selinux=selinux_label)
    for warning in server.preflight(s):
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    t0 = time.monotonic()
    # From here SIGTERM/SIGHUP/SIGINT raise StopRequested: whatever we started is stopped on the way out.
    with procs.stop_on_signals():
        with err.status(f"starting Triton ({s.runtime}) on {s.url} …"):
            running = server.start(s)
        record = running.record()
        record.save()
        # Ready and recorded, a detached server is `tritonctl stop`'s to end: nothing that happens to our output
        # from here (a script reading only the ready line) may take it down.
        keep = s.detach
        try:
            with _reader_may_leave() if s.detach else contextlib.nullcontext():
                _report_ready(s, running, time.monotonic() - t0)
            if s.detach:
                return
            signame = _follow(running)
            stopped_elsewhere = signame is None and not record.path().exists()  # `tritonctl stop` from another shell
        finally:
            if not keep:
                result = running.stop()
    out.print(f"{result.describe()}: {s.runtime} server at {s.url}")
    if signame is None and not stopped_elsewhere and result.exit_code != 0:  # 0: a clean stop someone else asked for
        why = "; ".join(result.notes) or f"exit code {result.exit_code}"
        detail = f": {server.diagnose(running.log())}" if result.exit_code is None or result.exit_code > 0 else ""
        raise ServerError(f"Triton exited on its own ({why}){detail}")


def _report_ready(s: Any, running: Any, seconds: float) -> None:
    from rich.markup import escape

    from tritonctl.core.endpoint import parse_endpoint
    from tritonctl.inference.client import server_status
    from tritonctl.serving.status import render

    log_path = getattr(running, "log_file", None)
    out.print(f"[green]ready[/] in {seconds:.1f} s: http {s.url}, grpc {s.grpc_url}, metrics {s.metrics_url}"
              + (f", log {log_path}" if log_path else ""))
    render(server_status(parse_endpoint(s.url)))
    if s.detach:  # a bare `stop` stops the servers of this folder's default repository only
        how = "tritonctl stop" if s.repo.resolve() == Path("model_repository").resolve() else f"tritonctl stop --url {s.url}"
        out.print(f"stop it with [bold]{escape(how)}[/]")


def _follow(running: Any) -> str | None:
    """Foreground mode: the server's log until it exits (None) or a stop signal arrives (its name)."""
    out.print("[dim]serving in the foreground; Ctrl-C stops the server[/]")
    signame: str | None = running.follow(lambda line: out.print(line, markup=False, highlight=False))
    if signame:
        err.print(f"[yellow]{signame}: stopping Triton …[/]")
    return signame


@app.command()
@command
def status(
    url: str = typer.Option("", help="host:port of Triton's HTTP endpoint (default: every server `serve` started)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list (one object per server) for scripts"),
) -> None:
    """Health, version and the model table of a running Triton."""
    from tritonctl.core.endpoint import parse_endpoint
    from tritonctl.core.errors import ServerError
    from tritonctl.serving import server
    from tritonctl.serving.status import render

    if not url:
        _say_forgotten(server.forget_dead())
    urls = [parse_endpoint(url).url] if url else [r.url for r in server.records()] or ["127.0.0.1:8000"]
    results, errors = _query_all(urls)
    if as_json:  # always JSON for scripts: a server that does not answer is an entry with its error
        print(json.dumps([r.to_dict() for r in results] + [{"url": u, "live": False, "ready": False, "error": e}
                                                            for u, e in errors.items()], indent=2))
    else:
        for result in results:
            render(result)
        for message in errors.values() if results else ():
            err.print(f"[yellow]{message}[/]", highlight=False)
    if not results:  # nothing answered: the exit code says so, one line says why
        raise ServerError(errors[urls[0]] if len(urls) == 1 else
                          "no server that `tritonctl serve` started is answering: start one, or pass --url")


def _say_forgotten(records: list[Any]) -> None:
    """A server that died without `tritonctl stop` is forgotten here, once: said, since its record disappears."""
    from rich.markup import escape

    for r in records:
        log = f" (log: {r.log_file})" if r.log_file else ""
        err.print(f"[yellow]forgot the server at {escape(r.url)}: its process is gone{escape(log)}[/]", highlight=False,
                  soft_wrap=True)


def _query_all(urls: list[str]) -> tuple[list[Any], dict[str, str]]:
    """Each server's status, and for those that do not answer, the reason."""
    from tritonctl.core.endpoint import parse_endpoint
    from tritonctl.core.errors import ServerError
    from tritonctl.inference.client import server_status

    results, errors = [], {}
    for u in urls:
        try:
            results.append(server_status(parse_endpoint(u)))
        except ServerError as exc:
            errors[u] = str(exc)
    return results, errors


@app.command()
@command
def stop(
    url: str = typer.Option("", help="host:port of the server to stop (default: the servers of --repo)"),
    repo: Path | None = typer.Option(None, help="stop the servers serving this repository (default: model_repository "
                                                "in this folder, as for serve)"),
    all_servers: bool = typer.Option(False, "--all", help="stop every server `tritonctl serve` started, from any folder"),
    timeout: float = typer.Option(15.0, help="seconds to wait after SIGTERM before SIGKILL"),
) -> None:
    """Stop what `tritonctl serve` started: gracefully, then firmly after --timeout; its Python backend processes
    and shared memory included."""
    from tritonctl.core.endpoint import parse_endpoint
    from tritonctl.core.errors import BadInput, ServerError
    from tritonctl.serving import server

    if timeout < 0:
        raise BadInput(f"--timeout {timeout}: give the seconds to wait before SIGKILL (0 or more)")
    if sum((bool(url), repo is not None, all_servers)) > 1:
        raise BadInput("give one of --url, --repo and --all")
    endpoint = parse_endpoint(url) if url else None
    targets = server.find_records(endpoint, prune=False)
    others: list[Any] = []
    if endpoint is None and not all_servers:  # this folder's servers only: another checkout's are not ours to end
        repo = repo or Path("model_repository")  # serve's default
        others = [r for r in targets if not r.serves(repo) and r.running()]
        targets = [r for r in targets if r.serves(repo)]
    if not targets:  # nothing to stop is what cleanup scripts want: success, said once
        where = f"at {endpoint.url}" if endpoint else f"serves {repo.resolve()}" if repo else "is running"
        out.print(f"nothing to stop: no server started by `tritonctl serve` {where}", highlight=False, soft_wrap=True)
    stuck: list[str] = []
    for record in targets:
        result = server.stop_record(record, timeout)
        out.print(f"{result.describe()}: {record.runtime} server at {record.url}")
        stuck.extend(result.left)
    if others:
        listing = ", ".join(f"{r.url} ({r.repo_path() or 'repository unknown'})" for r in others)
        out.print(f"left running: {listing}; stop one with `tritonctl stop --url URL`, every one with "
                  "`tritonctl stop --all`", highlight=False, soft_wrap=True)
    if stuck:
        raise ServerError(f"still running after SIGKILL: {', '.join(stuck)}")


# ---------------------------------------------------------------- export


@app.command()
@command
def export(
    model_path: Path = typer.Option(..., help="YOLO detection checkpoint (.pt): YOLOv5u/v8/v9/v10/11"),
    out_dir: Path = typer.Option(Path("build/export"), help="where model_fp32.onnx, model_fp16.onnx, model.json go"),
    imgsz: int | None = typer.Option(None, help="input size (default: the checkpoint's)"),
    opset: int | None = typer.Option(None, help="ONNX opset (default: Ultralytics' choice)"),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify"),
    static: bool = typer.Option(False, "--static", help="fix the batch axis (to --batch) instead of a dynamic one"),
    batch: int = typer.Option(1, help="the batch of a --static export"),
    precision: str = typer.Option("both", help="fp32, fp16 or both"),
    fp16_io: bool = typer.Option(True, "--fp16-io/--fp32-io", help="FP16 model takes/returns FP16 (half the bytes)"),
    check_images: Path | None = typer.Option(None, help="images for the FP16 parity check (default: generated scenes "
                                                        "with ground truth + the photos Ultralytics ships)"),
    min_matched: float = typer.Option(0.97, help="parity: least share of detections found by both (same class, IoU 0.9)"),
    max_map_drop: float = typer.Option(0.005, help="parity: largest mAP50-95 drop of FP16 against ground truth"),
    max_box_shift: float = typer.Option(0.01, help="parity: largest box corner shift, as a fraction of the input size"),
    strict: bool = typer.Option(False, "--strict", help="too few detections to judge parity is an error"),
) -> None:
    """Export a YOLO .pt to FP32 and FP16 ONNX (dynamic batch), with metadata and an FP16 parity report."""
    from tritonctl.core.errors import ToleranceExceeded
    from tritonctl.model import export as ex
    from tritonctl.model.parity import NOT_JUDGED, ParityTolerance

    settings = ex.ExportSettings.create(
        model_path=model_path, out_dir=out_dir, imgsz=imgsz, opset=opset, simplify=simplify, dynamic=not static,
        batch=batch, precision=precision, fp16_io=fp16_io, check_images=check_images, strict=strict,
        tolerance=ParityTolerance(min_matched=min_matched, max_map_drop=max_map_drop, max_box_shift=max_box_shift))
    with err.status("exporting …") as spinner:
        def progress(step: str, secs: float) -> None:
            out.print(f"[green]✓[/] {step} [dim]{secs:.1f} s[/]")
            spinner.update(f"after {step} …")

        result = ex.export(settings, progress)
    if result.parity is not None:
        from tritonctl.model.parity import render

        render(result.parity)
    for kind, path in result.files.items():
        out.print(f"  {kind:9s} {path}  [dim]{path.stat().st_size / 1e6:.2f} MB[/]")
    out.print(f"done in {result.timings['total']:.1f} s")
    parity = result.parity
    if parity is not None and parity.verdict == NOT_JUDGED:
        message = f"FP16 parity not judged: {parity.failures[0]}"
        if settings.strict:
            raise ToleranceExceeded(message)
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    elif parity is not None and not parity.passed:
        raise ToleranceExceeded(f"FP16 parity outside tolerance: {'; '.join(parity.failures)} (see parity.json)")


# ---------------------------------------------------------------- build-engine


@app.command("build-engine")
@command
def build_engine(
    onnx: Path = typer.Option(Path("build/export/model_fp16.onnx"), help="the ONNX export to compile"),
    out_dir: Path = typer.Option(Path("build/engine"), help="where model.plan, engine.json and the log go"),
    runtime: str | None = typer.Option(None, help="docker (the default): trtexec inside the Triton image (matches the "
                                                  "server); local: PATH. With --time: where the engine was built"),
    precision: str = typer.Option("fp16", help="fp16 (--fp16 before TensorRT 11; from 11 on, the FP16 export) or fp32"),
    min_batch: int = typer.Option(1),
    opt_batch: int = typer.Option(8),
    max_batch: int = typer.Option(16),
    workspace: int | None = typer.Option(None, help="TensorRT workspace in MiB (--memPoolSize=workspace:N)"),
    image: str = typer.Option("", help="Triton image for --runtime docker (default: the one `serve` uses; with --time: "
                                       "the one the engine was built in)"),
    gpus: str = typer.Option("all"),
    repo: Path | None = typer.Option(None, help="also put model.plan into <repo>/<name>/1/"),
    name: str | None = typer.Option(None),
    time_engine: Path | None = typer.Option(None, "--time", help="time a built engine instead (the seed's timing run), "
                                                                 "in the image or host it was built in"),
    batch: int = typer.Option(8, help="batch for --time"),
) -> None:
    """Compile an ONNX export into a dynamic-batch TensorRT engine with trtexec (or time one with --time)."""
    from tritonctl.model import engine as eng

    if time_engine is not None:
        _time_engine(eng.TimingSettings.create(time_engine, out_dir, batch, runtime, image, gpus))
        return
    s = eng.EngineSettings.create(onnx=onnx, out_dir=out_dir, runtime=runtime or "docker", precision=precision,
                                  min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_mb=workspace,
                                  image=image, gpus=gpus, repo=repo, name=name)
    with err.status("trtexec: building …") as spinner:
        result = eng.build(s, lambda line: spinner.update(f"trtexec: {line[-100:]}"))
    out.print(f"trtexec: {result.trtexec.describe()}", markup=False, highlight=False)
    out.print(f"[green]engine[/] {result.engine} ({result.engine.stat().st_size / 1e6:.1f} MB), log {result.log_file}")
    _print_summary(result.summary)


def _time_engine(t: Any) -> None:
    from tritonctl.model import engine as eng

    with err.status("trtexec: timing …") as spinner:
        result = eng.time_engine(t, lambda line: spinner.update(f"trtexec: {line[-100:]}"))
    for note in result.notes:
        out.print(note, style="yellow", markup=False, highlight=False)
    out.print(f"trtexec: {result.trtexec.describe()}", markup=False, highlight=False)
    _print_summary(result.summary)
    skipped = result.times["warmup_skipped"]
    out.print(f"inference_times.json: {result.times['inferences']} timed inferences"
              + (f", {skipped} warm-up records skipped (as trtexec's summary does)" if skipped else ""), highlight=False)
    out.print_json(json.dumps(result.times))


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    table = Table("trtexec", "min", "mean", "median", "p99", "max", title=f"throughput {summary.throughput_qps} qps")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for key, st in summary.stats.items():
        table.add_row(f"{key} ms", f(st.min), f(st.mean), f(st.median), f(st.percentiles.get("p99")), f(st.max))
    out.print(table)


# ---------------------------------------------------------------- detect

DISCOVER_HELP = ("NAME:PORT: every address NAME resolves to (A and AAAA; a Kubernetes headless Service: one per ready pod) "
                 "is an endpoint, looked up again every --discover-interval; with --url: both")
DISCOVER_DNS_HELP = "ask this DNS server (host[:port], default port 53) instead of this host's resolver"
DISCOVER_INTERVAL_HELP = "seconds between lookups of --discover's name (default 5)"


@app.command()
@command
def detect(
    sources: list[str] = typer.Argument(None, help="video files, images, folders, globs, rtsp:// or http:// URLs, webcam "
                                                   "indexes (with --config: added to the file's sources)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="a pipeline file (see configs/cameras.yaml): model, "
                                       "endpoints, sources and their settings; flags given override it; SIGHUP or an "
                                       "edit reloads its sources"),
    model: str | None = typer.Option(None, "--model", "-m", help="model name on the server"),
    url: list[str] = typer.Option([], help="Triton endpoint host:port (default 127.0.0.1:8000, :8001 with --protocol grpc); "
                                           "repeat for several"),
    protocol: str | None = typer.Option(None, help="http (default) or grpc (give the gRPC port in --url)"),
    shm: str | None = typer.Option(None, help="auto (default: system shared memory when the server is on this host), "
                                              "system, none"),
    concurrency: int | None = typer.Option(None, help="requests in flight (default: 2 with live cameras, for latency; "
                                                         "else from the model's max batch)"),
    batch: int | None = typer.Option(None, help="frames per request, across sources (default: the live cameras "
                                                "shared out over the requests in flight, up to 8; 1 for files)"),
    batch_timeout_ms: float | None = typer.Option(None, help="a batch that is not full goes after this long (default 10)"),
    realtime: bool | None = typer.Option(None, "--realtime/--offline",
                                         help="keep only the newest frame (default for live sources) or every frame"),
    vid_stride: int | None = typer.Option(None, help="infer every Nth frame"),
    conf: float | None = typer.Option(None, help="confidence threshold (default 0.25)"),
    iou: float | None = typer.Option(None, help="NMS IoU threshold (default 0.45)"),
    classes: str | None = typer.Option(None, help="only these class ids, e.g. 0,2"),
    agnostic: bool | None = typer.Option(None, "--agnostic", help="NMS across classes"),
    max_det: int | None = typer.Option(None, help="detections kept per frame (default 300)"),
    output: Path | None = typer.Option(None, help="annotated video (out.mp4; out_<id>.mp4 for several sources); for image "
                                                  "sources a folder (annotated/), one image per input, named after it"),
    json_out: Path | None = typer.Option(None, "--json", help="JSON Lines: one line per frame (- for standard output, "
                                                              "the rest goes to standard error)"),
    summary_json: Path | None = typer.Option(None, help="the run's summary as JSON (- for standard output)"),
    show: bool | None = typer.Option(None, "--show", help="display a window (needs a display)"),
    view: str | None = typer.Option(None, help="serve a live page of every stream at HOST:PORT (e.g. 127.0.0.1:8080)"),
    track: str | None = typer.Option(None, help="track objects per source: bytetrack, ocsort or botsort (ids in the "
                                                "JSON Lines, on the video and the live view)"),
    sink: list[str] = typer.Option([], help="publish results to a broker: mqtt://host:port/topic, "
                                            "redis://host:port/stream, nats://host:port/subject; repeat for several"),
    sink_outbox: int | None = typer.Option(None, help="messages kept per broker while it is away (default 10000)"),
    sink_policy: str | None = typer.Option(None, help="a full outbox: drop-oldest (default), drop-newest, block"),
    server_timeout: float | None = typer.Option(None, help="seconds to wait while every endpoint is down (default 30)"),
    stall_timeout: float | None = typer.Option(None, help="seconds of silence before a live source counts as stalled "
                                                          "(default 5)"),
    reconnects: int | None = typer.Option(None, help="reopen attempts (with back-off) for a stalled live source (default 5)"),
    discover: str | None = typer.Option(None, help=DISCOVER_HELP),
    discover_dns: str | None = typer.Option(None, help=DISCOVER_DNS_HELP),
    discover_interval: float | None = typer.Option(None, help=DISCOVER_INTERVAL_HELP),
) -> None:
    """Stream sources through a detection model on Triton: pipelined, batched across cameras, in order; annotated video,
    JSON Lines, a live view."""
    from tritonctl.stream import detect as det
    from tritonctl.stream.summary import render_summary

    flags = {"model": model, "protocol": protocol, "shm": shm, "concurrency": concurrency, "batch": batch,
             "batch_timeout_s": batch_timeout_ms / 1000 if batch_timeout_ms is not None else None, "realtime": realtime,
             "vid_stride": vid_stride, "conf": conf, "iou": iou, "agnostic": agnostic, "max_det": max_det,
             "classes": _int_list(classes, "--classes") or None if classes is not None else None, "output": output,
             "json_path": json_out, "summary_json": summary_json, "show": show, "view": view,
             "server_timeout_s": server_timeout, "stall_timeout_s": stall_timeout, "reconnects": reconnects, "track": track,
             "sinks": tuple(sink) or None, "sink_outbox": sink_outbox, "sink_policy": sink_policy,
             "urls": url or None, "discover": discover, "discover_dns": discover_dns,
             "discover_interval_s": discover_interval}
    settings = det.settings_from_flags(config, sources or [], flags)
    if settings.writes_stdout():
        from tritonctl.core.ui import claim_stdout

        claim_stdout()
    outcome = det.execute(settings, progress=out)
    summary = outcome.summary
    render_summary(summary)
    written = [f"{w.path} ({w.frames} frame{'' if w.frames == 1 else 's'})" for w in summary.written]
    written += [str(settings.summary_json)] if settings.summary_json is not None else []
    if written:
        out.print("wrote " + ", ".join(written), highlight=False, markup=False, soft_wrap=True)
    if outcome.error is not None:  # the server lost mid-run: after its summary, its own line and exit code
        raise outcome.error
    failed = [s for s in summary.sources if s.error]
    if failed:
        from tritonctl.core.errors import TritonctlError

        raise TritonctlError("; ".join(f"source {s.id} ({s.uri}): {s.error}" for s in failed))
    from tritonctl.stream.summary import undelivered

    if (lost := undelivered(summary)) is not None:  # events a broker never got: exit 7, even after Ctrl-C
        raise lost
    if summary.interrupted_by:
        raise KeyboardInterrupt


# ---------------------------------------------------------------- benchmark


@app.command()
@command
def benchmark(
    model: str = typer.Option("", "--model", "-m", help="model name on the server"),
    url: str = typer.Option("", help="Triton endpoint host:port (default 127.0.0.1:8000, :8001 with --protocol grpc)"),
    batch_sizes: str = typer.Option("1,2,4,8,16,32", help="the seed's sweep; sizes above the model's max batch are skipped"),
    concurrency: str = typer.Option("1:4", help="requests in flight: N or start:end[:step]; the best pick searches these "
                                                "too (--concurrency 1: the seed's exact loop)"),
    protocol: str = typer.Option("http"),
    shared_memory: str = typer.Option("none", help="none, system or cuda (a GPU and a CUDA runtime here; see --doctor)"),
    measurement_interval: int = typer.Option(5000, help="perf_analyzer window in ms"),
    stability_percentage: int = typer.Option(10, help="perf_analyzer's allowed spread between windows"),
    latency_budget_ms: float | None = typer.Option(None, help="pick the best throughput whose p95 fits this"),
    out_dir: Path | None = typer.Option(None, help="default: reports/<model>-<time>"),
    metrics_url: str | None = typer.Option(None, help="Triton metrics endpoint for GPU figures (host:8002/metrics)"),
    apply: bool = typer.Option(False, "--apply", help="write the best batching into <repo>/<model>/config.pbtxt"),
    dry_run: bool = typer.Option(False, "--dry-run", help="with --apply: show the diff, change nothing"),
    repo: Path = typer.Option(Path("model_repository"), help="the repository holding the model's config (for --apply)"),
    doctor: bool = typer.Option(False, "--doctor", help="say which perf_analyzer would be used, and why, and whether "
                                                         "--shared-memory cuda can work here"),
    discover: str | None = typer.Option(None, help="NAME:PORT: measure one replica of those NAME resolves to (the first "
                                                   "address; perf_analyzer drives one server), named in the report"),
    discover_dns: str | None = typer.Option(None, help=DISCOVER_DNS_HELP),
) -> None:
    """Sweep batch sizes (and concurrency) with perf_analyzer; CSVs, summary, best setting, plot; --apply it."""
    from tritonctl.core.errors import BadInput
    from tritonctl.measure import benchmark as bm
    from tritonctl.measure import perf

    if doctor:
        _doctor(perf)
        return
    if not model:
        raise BadInput("--model is required: the model name on the server (see `tritonctl status`)")
    s = bm.BenchmarkSettings.create(
        model=model, url=url, batch_sizes=batch_sizes, concurrency=concurrency, protocol=protocol,
        shared_memory=shared_memory, measurement_interval_ms=measurement_interval,
        stability_percentage=stability_percentage, latency_budget_ms=latency_budget_ms, out_dir=out_dir,
        metrics_url=metrics_url, discover=discover, discover_dns=discover_dns)
    if s.replicas:
        out.print(f"--discover {discover}: {len(s.replicas)} replica(s) {', '.join(s.replicas)}; measuring {s.url}",
                  highlight=False, markup=False, soft_wrap=True)
    if apply and not (repo / model / "config.pbtxt").is_file():
        raise BadInput(f"--apply needs {repo / model / 'config.pbtxt'}: pass --repo, the repository the server loads")
    tool = perf.find_perf_analyzer()
    bm.check_tool(s, tool)
    prepared = bm.plan(s)
    result = _sweep(bm, prepared, tool)
    _show_benchmark(result, prepared.settings)
    if apply:
        applied = bm.apply_best(result, prepared.settings, repo / model / "config.pbtxt", dry_run)
        out.print(applied.diff or "config.pbtxt already holds these settings", markup=False, highlight=False)
        for rule in applied.rules:
            out.print(f"  {rule}", markup=False, highlight=False)
        if not dry_run:
            out.print(f"applied: reload the model (restart `tritonctl serve`, or load {model!r} again in explicit mode)")


def _doctor(perf: Any) -> None:
    from rich.table import Table

    table = Table("source", "usable", "detail", title="perf_analyzer: tried in this order")
    chosen, tool_used = None, None
    for name, tool, why in perf.candidates():
        chosen = chosen or (name if tool else None)
        tool_used = tool_used or tool
        table.add_row(name, "[green]yes[/]" if tool else "[red]no[/]", tool.why if tool else why)
    out.print(table)
    out.print(f"benchmark will use: [bold]{chosen}[/]" if chosen else "[red]none usable: run `make setup`[/]")
    checks = perf.cuda_checks(tool_used)
    ready = all(c.ok for c in checks)
    out.print(f"--shared-memory cuda: {'[green]can work[/]' if ready else '[red]cannot work[/]'} "
              f"with {tool_used.kind if tool_used else 'the project install'}")
    for c in checks:
        out.print(f"  {'ok' if c.ok else 'no'}  {c.name}: {c.detail}", markup=False, highlight=False)


def _sweep(bm: Any, prepared: Any, tool: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tritonctl.measure.benchmark import concurrency_range
    from tritonctl.measure.perf import live_figure

    searched = concurrency_range(prepared.settings)
    # A progress bar is for a terminal: elsewhere (CI logs, pipes) Rich would leave its last frame as a stray line.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[live]}"),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("perf_analyzer", total=len(prepared.runnable), live="")

        def on_start(b: int) -> None:
            # Said when a batch size starts: perf_analyzer reports a concurrency only once its windows are stable.
            out.print(f"batch {b}: {searched} …", highlight=False)
            progress.update(task, description=f"batch {b}", completed=prepared.runnable.index(b))

        def on_line(b: int, line: str) -> None:
            fig = live_figure(line)
            if fig:
                out.print(f"  batch {b} concurrency {fig[0]}: {fig[1]:.1f} infer/s, avg {fig[2]:.2f} ms", highlight=False)
                progress.update(task, live=f"c{fig[0]}: {fig[1]:.0f} infer/s")

        result = bm.run_sweep(prepared, tool, on_start, on_line)
        progress.update(task, completed=len(prepared.runnable))
        return result


def _show_benchmark(result: Any, s: Any) -> None:
    from rich.table import Table

    from tritonctl.measure.benchmark import explain

    if result.skipped:
        out.print(f"[yellow]skipped batch sizes {result.skipped}: above the model's max batch {result.max_batch}[/]")
    gpu = any(r.values.get("gpu_util") is not None for r in result.rows)  # only with --collect-metrics on a GPU server
    table = Table("batch", "concurrency", "infer/s", "p50 ms", "p95 ms", "p99 ms", "queue ms", "compute ms",
                  *(["GPU util % (mean)", "GPU W (sum)"] if gpu else []))
    for r in result.rows:
        mark = " [green]best[/]" if r is result.best else ""
        mark += " [cyan]sweet spot[/]" if r is result.sweet_spot else ""
        v = r.values
        gpu_cells = [f"{(v.get('gpu_util') or 0) * 100:.0f}", f"{v.get('gpu_power_w') or 0:.0f}"] if gpu else []
        table.add_row(f"{r.batch}{mark}", str(r.concurrency), f"{r.infer_per_s:.1f}",
                      *(f"{v.get(k) or 0:.2f}" for k in ("p50_ms", "p95_ms", "p99_ms", "server_queue_ms", "compute_infer_ms")),
                      *gpu_cells)
    out.print(table)
    for line in explain(result, s):
        out.print(line, style="dim", markup=False, highlight=False)
    if result.best is None:
        out.print(f"[yellow]no setting fits the {s.latency_budget_ms:g} ms p95 budget[/]")
    else:
        out.print(f"best: batch {result.best.batch}, concurrency {result.best.concurrency}: "
                  f"{result.best.infer_per_s:.1f} infer/s at p95 {result.best.p95_ms:.2f} ms")
    if result.sweet_spot is not None:
        out.print(f"sweet spot: batch {result.sweet_spot.batch}, concurrency {result.sweet_spot.concurrency}: "
                  f"{result.sweet_spot.infer_per_s:.1f} infer/s at p95 {result.sweet_spot.p95_ms:.2f} ms")
    out.print("wrote " + ", ".join(str(p) for p in result.files))


# ---------------------------------------------------------------- val


@app.command()
@command
def val(
    model: str = typer.Option(..., "--model", "-m", help="model name on the server"),
    data: Path = typer.Option(..., help="Ultralytics dataset yaml (YOLO txt labels) or a COCO annotation json"),
    url: list[str] = typer.Option([], help="Triton endpoint host:port (default 127.0.0.1:8000); repeat for several"),
    protocol: str = typer.Option("http", help="http or grpc (give the gRPC port in --url)"),
    shm: str = typer.Option("auto", help="auto (system shared memory when the server is on this host), system, none"),
    split: str = typer.Option("val", help="the dataset yaml's split to validate on"),
    images: Path | None = typer.Option(None, help="a COCO json's image folder (default: beside it, or images/)"),
    max_images: int | None = typer.Option(None, help="only the first N images, for a quick look"),
    reference: Path | None = typer.Option(None, help="the checkpoint (.pt): Ultralytics' own val of it, side by side"),
    max_drop: float = typer.Option(0.005, help="with --reference: exit 6 when the served mAP50-95 is more than this below"),
    out_dir: Path | None = typer.Option(None, help="where val.json, predictions.json, pr_curve.png go "
                                                   "(default reports/val-<model>-<time>)"),
    conf: float = typer.Option(0.001, help="decoding confidence threshold (Ultralytics' val default)"),
    iou: float = typer.Option(0.7, help="NMS IoU threshold (Ultralytics' val default)"),
    max_det: int = typer.Option(300, help="detections kept per image (also the evaluator's maxDets)"),
    batch: int | None = typer.Option(None, help="images per request (default: up to 4, within the model's max batch)"),
    concurrency: int = typer.Option(4, help="requests in flight"),
    discover: str | None = typer.Option(None, help=DISCOVER_HELP),
    discover_dns: str | None = typer.Option(None, help=DISCOVER_DNS_HELP),
    discover_interval: float | None = typer.Option(None, help=DISCOVER_INTERVAL_HELP),
) -> None:
    """Accuracy of the model as served (mAP50-95, mAP50, mAP75, per class, P/R) by the COCO evaluator, optionally
    next to the checkpoint's own Ultralytics val; a gate for deployment pipelines."""
    from tritonctl.measure import val as v
    from tritonctl.vision.postprocess import PostSettings

    settings = v.ValSettings.create(
        model=model, data=data, urls=url, out_dir=out_dir, protocol=protocol, shm=shm, split=split, images=images,
        max_images=max_images, reference=reference, max_drop=max_drop, batch=batch, concurrency=concurrency,
        post=PostSettings(conf=conf, iou=iou, max_det=max_det, multi_label=True), discover=discover,
        discover_dns=discover_dns, discover_interval_s=discover_interval)
    result = v.run_val(settings, progress=out)
    v.render(result, out)
    out.print("wrote " + ", ".join(str(p) for p in result.files), highlight=False, markup=False, soft_wrap=True)
    if (error := result.gate_error(settings.max_drop)) is not None:
        raise error


# ---------------------------------------------------------------- config


@app.command()
@command
def config(
    name: str = typer.Option(..., help="model name in the repository"),
    model: Path = typer.Option(..., help="the .onnx or .plan file to serve"),
    repo: Path = typer.Option(Path("model_repository")),
    platform: str = typer.Option("auto", help="tensorrt_plan, onnxruntime_onnx, local_onnx (the local runtime's CPU "
                                              "runner), or auto: from the file and --kind"),
    max_batch: int | None = typer.Option(None, help="largest batch (default: a plan's engine maximum, else 16; 0: none)"),
    preferred_batch: str | None = typer.Option(None, help="preferred batch sizes for the dynamic batcher (default: 4,8 "
                                                          "up to --max-batch)"),
    queue_delay_us: int = typer.Option(500),
    instances: int | None = typer.Option(None, help="model instances (default: 1; local_onnx: one per core)"),
    kind: str | None = typer.Option(None, help="cpu or gpu (default: cpu for local_onnx, gpu otherwise)"),
    gpus: str = typer.Option("", help="GPU indexes for the instance group, e.g. 0,1"),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup"),
    pinned_memory: bool | None = typer.Option(None, "--pinned-memory/--no-pinned-memory",
                                              help="pinned host buffers (default: Triton's, on)"),
    threads: int | None = typer.Option(None, help="ONNX Runtime threads per CPU-runner instance (default: 1 with one "
                                                  "instance per core; 0: ONNX Runtime's own choice)"),
    trt_accelerator: bool = typer.Option(False, "--trt-accelerator", help="TensorRT EP for onnxruntime_onnx"),
    precision: str | None = typer.Option(None, help="fp16 or fp32: refuse a model of the other precision"),
) -> None:
    """Write config.pbtxt, the model file and labels.txt into a Triton model repository."""
    from rich.markup import escape

    from tritonctl.model.repository import ConfigSettings, write_model
    from tritonctl.serving.server import serving

    settings = ConfigSettings.create(
        name=name, model_file=model, repo=repo, platform=platform, kind=kind, max_batch=max_batch,
        preferred_batch=None if preferred_batch is None else _int_list(preferred_batch, "--preferred-batch"),
        queue_delay_us=queue_delay_us, instances=instances, gpus=_int_list(gpus, "--gpus"), warmup=warmup,
        pinned_memory=pinned_memory, threads=threads, trt_accelerator=trt_accelerator, precision=precision)
    folder = write_model(settings)
    out.print(f"[green]wrote[/] {folder}/config.pbtxt ({settings.platform}, max batch {settings.max_batch})")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out.print(f"  {path.relative_to(folder.parent)}  [dim]{path.stat().st_size:,} B[/]")
    for record in serving(repo):  # Triton reads the repository at start (no polling): say how the model gets loaded
        out.print(f"[yellow]note:[/] the server at {record.url} serves {repo} and loaded it at start; restart it to load "
                  f"{name!r}: {escape(record.restart_command())}")


# ---------------------------------------------------------------- deploy

deploy_app = typer.Typer(help="Size a Triton fleet from a benchmark and write its Kubernetes manifests.",
                         no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("plan")
@command
def deploy_plan(
    summary: Path = typer.Option(..., help="a benchmark's summary.json (`tritonctl benchmark` writes it)"),
    streams: int = typer.Option(..., help="camera streams to serve"),
    fps: float = typer.Option(..., help="frames per second of each stream"),
    latency_budget_ms: float | None = typer.Option(None, help="p95 latency budget (default: the benchmark's own, else none)"),
    headroom: float = typer.Option(0.2, help="spare capacity on top of the demand (0.2 = 20 %)"),
    gpus_per_replica: int = typer.Option(1, help="GPUs each replica has (as the benchmarked server had)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON for scripts"),
) -> None:
    """Replicas (and GPUs) a load needs: streams x fps x (1 + headroom) over the best measured infer/s within the
    p95 budget. Arithmetic on the benchmark's measurements only."""
    from tritonctl.deploy import kubernetes as deploy

    rows, measured_budget = deploy.load_summary(summary)
    budget = latency_budget_ms if latency_budget_ms is not None else measured_budget
    plan = deploy.size(rows, streams=streams, fps=fps, budget_ms=budget, headroom=headroom,
                       gpus_per_replica=gpus_per_replica)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))
        return
    _show_plan(plan)


def _show_plan(plan: Any) -> None:
    from rich.table import Table

    budget = f"p95 ≤ {plan.budget_ms:g} ms" if plan.budget_ms is not None else "no latency budget"
    table = Table("demand", "capacity per replica", "replicas", "GPUs", "utilisation", "headroom",
                  title=f"deploy plan ({budget})")
    table.add_row(f"{plan.demand:,.0f} frames/s\n{plan.streams} x {plan.fps:g} fps",
                  f"{plan.capacity:,.1f} infer/s\nbatch {plan.batch}, concurrency {plan.concurrency}, p95 {plan.p95_ms:.2f} ms",
                  str(plan.replicas), str(plan.gpus), f"{plan.utilisation:.0%}",
                  f"{plan.spare:.0%} (asked {plan.headroom:.0%})")
    out.print(table)
    out.print(f"tritonctl deploy k8s --replicas {plan.replicas} --gpus-per-replica {plan.gpus_per_replica} …",
              markup=False, highlight=False)


@deploy_app.command("k8s")
@command
def deploy_k8s(
    name: str = typer.Option(..., help="names the Deployment, Services, autoscaler (lowercase, digits, '-')"),
    model_repository: str = typer.Option(..., help="s3://BUCKET/PATH, gs://BUCKET/PATH, pvc:CLAIM or nfs:SERVER:/PATH"),
    replicas: int = typer.Option(..., help="replicas (the autoscaler's minimum; see `tritonctl deploy plan`)"),
    gpus_per_replica: int = typer.Option(1, help="nvidia.com/gpu requested and limited per pod"),
    out_dir: Path = typer.Option(Path("deploy"), "--out", help="folder for the manifests"),
    image: str = typer.Option("", help="Triton image (default: the NGC image `serve --runtime docker` pins)"),
    namespace: str | None = typer.Option(None, help="namespace written into every object (default: kubectl's)"),
    max_replicas: int | None = typer.Option(None, help="the autoscaler's maximum (default: twice --replicas)"),
    target_queue_ms: float = typer.Option(10.0, help="autoscale above this average queue time per request"),
    cpu: str = typer.Option("4", help="CPU request and limit per pod"),
    memory: str = typer.Option("16Gi", help="memory request and limit per pod"),
    model_control_mode: str = typer.Option("none", help="Triton's --model-control-mode: none, poll or explicit"),
    exit_timeout_s: int = typer.Option(30, help="Triton's --exit-timeout-secs (the pod's grace period is 15 s more)"),
    startup_timeout_s: int = typer.Option(600, help="seconds the startup probe allows for loading the models"),
    credentials_secret: str | None = typer.Option(None, help="a Secret whose keys become env (AWS_*, GOOGLE_*)"),
    helm_values: bool = typer.Option(False, "--helm-values", help="write values.yaml for NVIDIA's chart instead"),
    force: bool = typer.Option(False, "--force", help="write into --out even if it holds files tritonctl did not write"),
) -> None:
    """Kubernetes manifests for Triton replicas: Deployment, Service, headless Service, autoscaler on queue time,
    Prometheus adapter rule, PodMonitor; or a values.yaml for NVIDIA's Helm chart."""
    from tritonctl.deploy import kubernetes as deploy
    from tritonctl.serving.server import DEFAULT_IMAGE

    s = deploy.K8sSettings.create(
        name=name, image=image or DEFAULT_IMAGE, model_repository=model_repository, replicas=replicas,
        gpus_per_replica=gpus_per_replica, namespace=namespace, max_replicas=max_replicas, cpu=cpu, memory=memory,
        model_control_mode=model_control_mode, exit_timeout_s=exit_timeout_s, startup_timeout_s=startup_timeout_s,
        target_queue_ms=target_queue_ms, credentials_secret=credentials_secret)
    written = deploy.write_out(out_dir, deploy.render(s, helm_values), force)
    out.print("wrote " + ", ".join(str(p) for p in written), markup=False, highlight=False, soft_wrap=True)
    how = f"helm install {name} <NVIDIA's chart> -f {written[0]}" if helm_values else f"kubectl apply -f {out_dir}"
    out.print(f"apply with: {how}", markup=False, highlight=False, soft_wrap=True)


def main(args: list[str] | None = None) -> None:
    """The entry point (`tritonctl`, `python -m tritonctl.cli`). Typer runs without its own error handling, whose usage
    errors are a 4-5 line box: here they are one line, as every other error is."""
    click_error, usage_error = _click_errors()
    _broken_pipes_raise()
    try:
        code = app(args=args, prog_name="tritonctl", standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            _error_line(_one_line(exc), f" (see {_command_path(exc)} --help)")
        sys.exit(2)
    except click_error as exc:
        _error_line(_one_line(exc))
        sys.exit(int(getattr(exc, "exit_code", 1)))
    sys.exit(code if isinstance(code, int) else 0)  # without standalone mode, typer returns what ended the command


def _broken_pipes_raise() -> None:
    """Rich answers a closed pipe by exiting 1 on the spot (`Console.on_broken_pipe`, the hook it documents for
    overriding): that would skip `serve`'s rule that a recorded detached server outlives its output, and `command`'s
    exit code. Here its consoles raise BrokenPipeError instead, which those two handle."""
    from rich.console import Console

    def on_broken_pipe(console: Console) -> None:
        console.quiet = True  # whatever else it is asked to print goes nowhere
        raise BrokenPipeError(errno.EPIPE, "the reader of our output went away")

    setattr(Console, "on_broken_pipe", on_broken_pipe)  # noqa: B010  (mypy refuses assigning to a method)


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """(ClickException, UsageError): typer 0.29 vendors click as `typer._click` and exports neither; older typer
    releases (pyproject allows 0.12+) use click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions  # type: ignore[no-redef]
    return exceptions.ClickException, exceptions.UsageError


def _one_line(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)
    return " ".join(str(format_message() if format_message else exc).split())


def _command_path(exc: Exception) -> str:
    """`tritonctl detect`: the command as the user typed it, also under `python -m tritonctl.cli`."""
    names: list[str] = []
    ctx = getattr(exc, "ctx", None)
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return " ".join(["tritonctl", *names])


def _error_line(message: str, hint: str = "") -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}{escape(hint)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
