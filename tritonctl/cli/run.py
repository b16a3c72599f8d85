"""`detect`: stream sources through a served model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tritonctl.cli.app import app, command, out
from tritonctl.stream.spec import flags_given, with_flags


@app.command()
@command
@with_flags  # every run option's flag, from the run spec (tritonctl.stream.spec)
def detect(
    sources: list[str] = typer.Argument(None, help="video files, images, folders, globs, rtsp:// or http:// URLs, webcam "
                                                   "indexes (with --config: added to the file's sources)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="a pipeline file (see configs/cameras.yaml): model, "
                                       "endpoints, sources and their settings; flags given override it; SIGHUP or an "
                                       "edit reloads its sources"),
    **options: Any,
) -> None:
    """Stream sources through a detection model on Triton: pipelined, batched across cameras, in order; annotated video,
    JSON Lines, a live view."""
    from tritonctl.stream import detect as det
    from tritonctl.stream.summary import render_summary

    settings = det.settings_from_flags(config, sources or [], flags_given(options))
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
    if (end := det.ending_error(outcome)) is not None:  # after the summary, its own line and exit code
        raise end
