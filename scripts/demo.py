#!/usr/bin/env python3
"""`make demo`: the main job on the embedded default (no GPU, no Docker), driven through the CLI as a user would.

export the demo checkpoint -> config (FP32 and FP16) into model_repository/ -> serve --detach -> detect a generated
video -> val of both served models next to the checkpoint's own val -> stop.
The model lands in the top-level model_repository/ (so the README's `tritonctl serve --detach` works afterwards);
everything else in build/demo/: the ONNX export and parity.json, demo_annotated.mp4, detections.jsonl, summary.json.
A step that fails ends the demo with one line naming it and its exit code (its own error line is printed above).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "build" / "demo"
REPO = ROOT / "model_repository"
CLI = [sys.executable, "-m", "tritonctl.cli"]
CHECKPOINT = ROOT / "models" / "shapes-yolov8n.pt"


class StepFailed(Exception):
    pass


def step(title: str, *args: str) -> None:
    print(f"\n\033[1m$ tritonctl {' '.join(args)}\033[0m  # {title}", flush=True)
    code = subprocess.run([*CLI, *args], cwd=ROOT, check=False).returncode
    if code != 0:
        raise StepFailed(f"demo step '{title}' failed (tritonctl {args[0]} exited {code})")


def ports() -> tuple[int, int, int]:
    """Triton's usual ports when they are free (the README's commands then work as written), else free ones."""
    def free(port: int) -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    if all(free(p) for p in (8000, 8001, 8002)):
        return 8000, 8001, 8002
    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    found = tuple(s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    print(f"ports 8000-8002 are busy: the demo's server uses {found}")
    return found  # type: ignore[return-value]


def run() -> None:
    from tritonctl.vision.synthetic import write_video, write_yolo_dataset

    os.chdir(ROOT)
    WORK.mkdir(parents=True, exist_ok=True)
    export_dir, video, valdata = WORK / "export", WORK / "shapes.mp4", WORK / "valdata"
    step("export the demo checkpoint to FP32/FP16 ONNX, check FP16 parity", "export", "--model-path", str(CHECKPOINT),
         "--out-dir", str(export_dir))
    # FP32 on the local runtime: ONNX Runtime's CPU kernels compute FP32 faster than FP16 (173 vs 146 img/s at
    # batch 8 here); FP16 is the GPU's precision (TensorRT, or onnxruntime_onnx on the NGC image).
    step("write the Triton config for the local runtime", "config", "--name", "shapes", "--model",
         str(export_dir / "model_fp32.onnx"), "--repo", str(REPO))
    step("and the FP16 model beside it, to validate both", "config", "--name", "shapes16", "--model",
         str(export_dir / "model_fp16.onnx"), "--repo", str(REPO))
    print(f"\ngenerating a synthetic video: {video}")
    write_video(video, n_frames=150, width=1280, height=720, seed=5)
    http, grpc, metrics = ports()
    url = f"127.0.0.1:{http}"
    step("start the local Triton", "serve", "--repo", str(REPO), "--detach", "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics))
    try:
        step("stream the video through Triton", "detect", str(video), "-m", "shapes", "--url", url,
             "--output", str(WORK / "demo_annotated.mp4"), "--json", str(WORK / "detections.jsonl"),
             "--summary-json", str(WORK / "summary.json"))
        print(f"\ngenerating a labelled validation set: {valdata}")
        data = write_yolo_dataset(valdata, n_train=0, n_val=100, imgsz=192, seed=11)
        for model in ("shapes", "shapes16"):
            step(f"accuracy of {model} as served, next to the checkpoint's own val", "val", "-m", model, "--data",
                 str(data), "--url", url, "--reference", str(CHECKPOINT), "--max-drop", "0.005",
                 "--out-dir", str(WORK / f"val-{model}"))
        step("the server's own view", "status", "--url", url)
    finally:
        step("stop it", "stop", "--url", url)


def main() -> int:
    t0 = time.time()
    try:
        run()
    except StepFailed as exc:
        print(f"\033[1;31mdemo failed:\033[0m {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\033[33mdemo interrupted\033[0m", file=sys.stderr)
        return 130
    print(f"\ndemo finished in {time.time() - t0:.0f} s; the model is in {REPO.relative_to(ROOT)}/shapes, "
          f"outputs in {WORK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
