"""The `tritonctl` command line: parses flags into settings, hands them to the stage that does the work, renders
its typed result. One module per group of commands; importing it registers its commands on the one Typer app, in the
order of the pipeline (the model, the server, the run, measurement, deployment), which is the order `--help` lists."""

from __future__ import annotations

import importlib

from tritonctl.cli.app import app, main

for _group in ("model", "serving", "run", "measure", "deploy"):
    importlib.import_module(f"tritonctl.cli.{_group}")

__all__ = ["app", "main"]
