#!/usr/bin/env python3
"""`tritonctl detect` against its peers on one local Triton, one model, one video, in one run.

(a) fps of `detect` / fps of Ultralytics' own Triton client (YOLO("http://host:port/model", task="detect")), target >= 3
(b) infer/s of `detect` / perf_analyzer's best infer/s on the same model (C++, no pre/post-processing), target >= 0.9;
    skipped with a note when perf_analyzer is not installed
(d) bytes sent over the socket per frame, with and without system shared memory

Run: .venv/bin/python benchmarks/detect_vs_peers.py [--frames 300] [--model-precision fp32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ultralytics_fps(url: str, model: str, video: Path, imgsz: int) -> tuple[float, int]:
    from ultralytics import YOLO

    peer = YOLO(f"http://{url}/{model}", task="detect")
    for _ in peer.predict(str(video), stream=True, imgsz=imgsz, conf=0.25, iou=0.45, verbose=False):
        break  # warm-up: first call builds the predictor
    t0, n = time.perf_counter(), 0
    for _ in peer.predict(str(video), stream=True, imgsz=imgsz, conf=0.25, iou=0.45, verbose=False):
        n += 1
    return n / (time.perf_counter() - t0), n


def detect_summary(url: str, model: str, video: Path, shm: str = "auto", concurrency: int | None = None) -> dict:
    from tritonctl.stream.detect import DetectSettings, run_detect

    return run_detect(DetectSettings.create(sources=[str(video)], urls=[url], model=model, shm=shm,
                                            concurrency=concurrency)).to_json()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--model-precision", default="fp32", choices=("fp16", "fp32"),
                    help="fp32 is the faster one on the CPU runner; fp16 is for GPUs")
    ap.add_argument("--instances", type=int, default=None, help="CPU-runner instances (default: one per core)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per instance (default: 1)")
    args = ap.parse_args()

    from tritonctl.model.export import ExportSettings, export
    from tritonctl.model.repository import ConfigSettings, write_model
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings, port_free
    from tritonctl.vision.synthetic import write_video

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export(ExportSettings.create(model_path=ROOT / "models" / "shapes-yolov8n.pt", out_dir=work / "export"))
        onnx = work / "export" / f"model_{args.model_precision}.onnx"
        cfg = ConfigSettings.create(name="shapes", model_file=onnx, repo=work / "repo", instances=args.instances,
                                    threads=args.threads)
        write_model(cfg)
        imgsz = json.loads((work / "repo" / "shapes" / "model.json").read_text())["imgsz"][0]
        video = work / "video.mp4"
        write_video(video, n_frames=args.frames, width=1280, height=720, seed=1)
        ports = [p for p in range(18500, 18600) if port_free("127.0.0.1", p)][:3]
        server = start_local(ServeSettings.create(runtime="local", repo=work / "repo", http_port=ports[0],
                                                  grpc_port=ports[1], metrics_port=ports[2]))
        url = server.settings.url
        try:
            detect_summary(url, "shapes", video)  # warm-up
            peer_fps, peer_n = ultralytics_fps(url, "shapes", video, imgsz)
            ours = detect_summary(url, "shapes", video)
            no_shm = detect_summary(url, "shapes", video, shm="none")
            pa = perf_analyzer_best(url, "shapes", ours["concurrency"])
        finally:
            server.stop()

    print(f"\nsame local Triton (CPU, {cfg.instances} instances x {cfg.threads} ORT threads), model {args.model_precision} "
          f"{imgsz}x{imgsz}, "
          f"{args.frames}-frame 1280x720 video")
    print(f"(a) Ultralytics Triton client: {peer_fps:7.1f} fps ({peer_n} frames)")
    print(f"    tritonctl detect:           {ours['fps']:7.1f} fps (concurrency {ours['concurrency']}, "
          f"{ours['frames']['inferred']} frames, {ours['frames']['dropped']} dropped)")
    print(f"    ratio detect/ultralytics:   {ours['fps'] / peer_fps:7.2f}x  (target >= 3.0)")
    if pa is None:
        print("(b) perf_analyzer: not installed here (see `tritonctl benchmark --doctor`); ratio not measured")
    else:
        print(f"(b) perf_analyzer best:        {pa:7.1f} infer/s; ratio detect/perf_analyzer: {ours['fps'] / pa:.2f}x "
              "(target >= 0.9)")
    print(f"(d) bytes sent per frame: {ours['bytes_sent_per_frame']:.0f} with shared memory, "
          f"{no_shm['bytes_sent_per_frame']:.0f} without ({no_shm['fps']:.1f} fps without)")
    return 0


def perf_analyzer_best(url: str, model: str, concurrency: int) -> float | None:
    try:
        from tritonctl.measure.perf import find_perf_analyzer, run_sweep_point
    except ImportError:
        return None
    tool = find_perf_analyzer(required=False)
    if tool is None:
        return None
    best = 0.0
    for c in sorted({1, max(1, concurrency // 2), concurrency, concurrency * 2}):
        best = max(best, run_sweep_point(tool, url, model, batch=1, concurrency=c))
    return best


if __name__ == "__main__":
    raise SystemExit(main())
