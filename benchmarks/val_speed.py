#!/usr/bin/env python3
"""`tritonctl val` against Ultralytics' own val through Triton, on one local Triton, one model, one labelled set.

images/s of each, whole call timed (loading, inference, metrics), both warmed up once first; the ratio (target >= 2).
Ultralytics: YOLO("http://host:port/shapes32", task="detect").val(data=..., imgsz=192, batch=1), its Triton client.

Run: .venv/bin/python benchmarks/val_speed.py [--images 300]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ultralytics_val(url: str, model: str, data: Path, imgsz: int, project: Path) -> tuple[float, float]:
    """(seconds, mAP50-95) of Ultralytics' val through Triton."""
    import logging

    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.ERROR)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        m = YOLO(f"http://{url}/{model}", task="detect").val(data=str(data), imgsz=imgsz, batch=1, plots=False, verbose=False,
                                                             device="cpu", project=str(project), name="u", exist_ok=True)
    return time.perf_counter() - t0, float(m.box.map)


def tritonctl_val(url: str, model: str, data: Path, out: Path) -> tuple[float, float, float]:
    """(seconds of the whole call, inference images/s, mAP50-95) of `tritonctl val`."""
    from tritonctl.measure.val import ValSettings, run_val

    t0 = time.perf_counter()
    result = run_val(ValSettings.create(model=model, data=data, urls=[url], out_dir=out))
    return time.perf_counter() - t0, result.images_per_s, result.served.map50_95


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args()

    from tritonctl.model.export import ExportSettings, export
    from tritonctl.model.repository import ConfigSettings, write_model
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings, port_free
    from tritonctl.vision.synthetic import write_yolo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export(ExportSettings.create(model_path=ROOT / "models" / "shapes-yolov8n.pt", out_dir=work / "export"))
        cfg = ConfigSettings.create(name="shapes32", model_file=work / "export" / "model_fp32.onnx", repo=work / "repo")
        write_model(cfg)
        data = write_yolo_dataset(work / "data", 0, args.images, imgsz=192, seed=5)
        ports = [p for p in range(18600, 18700) if port_free("127.0.0.1", p)][:3]
        server = start_local(ServeSettings.create(runtime="local", repo=work / "repo", http_port=ports[0],
                                                  grpc_port=ports[1], metrics_port=ports[2]))
        url = server.settings.url
        try:
            tritonctl_val(url, "shapes32", data, work / "warm")  # warm-up: the server's sessions, the imports
            ultralytics_val(url, "shapes32", data, 192, work / "uwarm")  # and Ultralytics' labels cache
            ours_s, ours_ips, ours_map = tritonctl_val(url, "shapes32", data, work / "ours")
            peer_s, peer_map = ultralytics_val(url, "shapes32", data, 192, work / "peer")
        finally:
            server.stop()

    n = args.images
    print(f"same local Triton (CPU, {cfg.instances} instances x {cfg.threads} ORT threads), shapes32 FP32 at 192, {n} images")
    print(f"tritonctl val:        {n / ours_s:6.1f} images/s ({ours_s:.2f} s whole call; inference {ours_ips:.1f} images/s), "
          f"mAP50-95 {ours_map:.4f} (pycocotools)")
    print(f"Ultralytics val:      {n / peer_s:6.1f} images/s ({peer_s:.2f} s whole call, batch 1), mAP50-95 {peer_map:.4f}")
    print(f"ratio: {peer_s / ours_s:.2f}x (target >= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
