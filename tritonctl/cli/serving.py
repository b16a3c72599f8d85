"""`serve`, `status`, `stop`: the Triton server."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import typer

from tritonctl.cli.app import _reader_may_leave, app, command, err, out


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
    from tritonctl.core.containers import DEFAULT_IMAGE
    from tritonctl.serving import server
    from tritonctl.serving.preflight import preflight
    from tritonctl.serving.settings import ServeSettings

    s = ServeSettings.create(
        runtime=runtime, repo=repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        detach=detach, log_file=log_file, timeout_s=timeout, image=image or DEFAULT_IMAGE, gpus=gpus,
        cache_dir=cache_dir, selinux=selinux_label)
    for warning in preflight(s):
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
    if signame is None and not stopped_elsewhere and (error := server.exited_on_its_own(result, running.log)):
        raise error


def _report_ready(s: Any, running: Any, seconds: float) -> None:
    from tritonctl.core.endpoint import parse_endpoint
    from tritonctl.inference.client import server_status
    from tritonctl.serving.status import render_ready

    render_ready(s, getattr(running, "log_file", None), seconds, server_status(parse_endpoint(s.url)))


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
    from tritonctl.serving.records import forget_dead, records
    from tritonctl.serving.status import render

    if not url:
        _say_forgotten(forget_dead())
    urls = [parse_endpoint(url).url] if url else [r.url for r in records()] or ["127.0.0.1:8000"]
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
    chosen = server.choose_stop(endpoint, repo, all_servers)
    if not chosen.targets:  # nothing to stop is what cleanup scripts want: success, said once
        out.print(chosen.nothing_here(endpoint), highlight=False, soft_wrap=True)
    stuck: list[str] = []
    for record in chosen.targets:
        result = server.stop_record(record, timeout)
        out.print(f"{result.describe()}: {record.runtime} server at {record.url}")
        stuck.extend(result.left)
    if chosen.others:
        listing = ", ".join(f"{r.url} ({r.repo_path() or 'repository unknown'})" for r in chosen.others)
        out.print(f"left running: {listing}; stop one with `tritonctl stop --url URL`, every one with "
                  "`tritonctl stop --all`", highlight=False, soft_wrap=True)
    if stuck:
        raise ServerError(f"still running after SIGKILL: {', '.join(stuck)}")
