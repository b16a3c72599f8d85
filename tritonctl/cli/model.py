"""`export`, `build-engine`, `config`: the model from a checkpoint to a Triton model repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tritonctl.cli.app import _int_list, app, command, err, out


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
    from tritonctl.serving.records import serving

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
