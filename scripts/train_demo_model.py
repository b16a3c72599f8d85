#!/usr/bin/env python3
"""Train the demo detector on generated shapes, on the CPU, and copy the checkpoint into models/.

Reproduce: .venv/bin/python scripts/train_demo_model.py   (about 20-30 minutes on 2 cores)
Writes models/shapes-yolov8n.pt and models/shapes-yolov8n.md (how it was made, its validation mAP).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonctl.vision.synthetic import CLASS_NAMES, write_yolo_dataset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "train")
    ap.add_argument("--arch", default="yolov8n.yaml")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=35)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "shapes-yolov8n.pt")
    args = ap.parse_args()

    from ultralytics import YOLO

    t0 = time.time()
    data = write_yolo_dataset(args.work / "data", args.train, args.val, imgsz=args.imgsz, seed=0)
    model = YOLO(args.arch)
    model.train(
        data=str(data), imgsz=args.imgsz, epochs=args.epochs, batch=32, device="cpu", workers=2,
        project=str(args.work), name="run", exist_ok=True, pretrained=False, amp=False, plots=False,
        mosaic=1.0, close_mosaic=5, fliplr=0.5, degrees=0.0, seed=0, deterministic=True, verbose=False, patience=100,
    )
    best = args.work / "run" / "weights" / "best.pt"
    metrics = YOLO(str(best)).val(data=str(data), imgsz=args.imgsz, device="cpu", plots=False, verbose=False)
    map50, map5095 = float(metrics.box.map50), float(metrics.box.map)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(best, args.out)
    args.out.with_suffix(".md").write_text(
        f"# {args.out.name}\n\n"
        f"An Ultralytics `{args.arch}` trained from scratch on the CPU on {args.train} generated images of "
        f"{', '.join(CLASS_NAMES)} (random sizes, colours, rotations, gradient/noise backgrounds, occlusions), "
        f"{args.epochs} epochs at imgsz {args.imgsz}, seed 0.\n\n"
        f"Validation split ({args.val} generated images): mAP50 = {map50:.4f}, mAP50-95 = {map5095:.4f}.\n\n"
        f"Reproduce: `.venv/bin/python scripts/train_demo_model.py` ({(time.time() - t0) / 60:.0f} minutes here).\n"
    )
    print(f"mAP50={map50:.4f} mAP50-95={map5095:.4f} -> {args.out}")
    return 0 if map50 >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
