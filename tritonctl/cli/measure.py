"""`benchmark`, `val`: speed with perf_analyzer, accuracy on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tritonctl.cli.app import app, command, err, out
from tritonctl.stream.spec import DISCOVER_DNS_HELP, DISCOVER_HELP, DISCOVER_INTERVAL_HELP


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
