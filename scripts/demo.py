#!/usr/bin/env python3
"""`make demo`: the main job on the embedded default (no GPU, no Docker), driven through the CLI as a user would.

Stages: build an ONNX model -> `tritonctl config` for the local runtime -> `tritonctl serve --detach` -> `status` -> `stop`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "demo"
CLI = [sys.executable, "-m", "tritonctl.cli"]
PORTS = ["--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"]


def step(title: str, *args: str) -> None:
    print(f"\n\033[1m$ tritonctl {' '.join(args)}\033[0m  # {title}", flush=True)
    subprocess.run([*CLI, *args], check=True, cwd=ROOT)


def onnx_model() -> Path:
    """An ONNX detector: the Ultralytics yolov8n architecture, built offline from its yaml."""
    onnx = WORK / "yolov8n.onnx"
    if not onnx.exists():
        from ultralytics import YOLO

        WORK.mkdir(parents=True, exist_ok=True)
        exported = YOLO("yolov8n.yaml").export(format="onnx", imgsz=192, dynamic=True, simplify=False)
        shutil.move(str(exported), onnx)
    return onnx


def main() -> int:
    t0 = time.time()
    os.chdir(ROOT)
    model = onnx_model()
    repo = WORK / "model_repository"
    step("write the Triton config", "config", "--name", "demo", "--model", str(model), "--repo", str(repo), "--threads", "2")
    step("start the local Triton", "serve", "--repo", str(repo), *PORTS, "--detach")
    try:
        step("what the server says", "status", "--url", "127.0.0.1:8000")
    finally:
        step("stop it", "stop", "--url", "127.0.0.1:8000")
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
