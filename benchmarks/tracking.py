"""Tracker cost per frame at N boxes (issue 13's target: <= 1 ms at 50 boxes), per tracker.

50 objects drift across a 1920x1080 frame with 2 px jitter, 5% of boxes missed and a few low-score false positives per
frame: a steady state of 50 live tracks, which is what a busy camera costs every frame. Timed: `Tracker.update` (our
wrapper: building the library's detections, the update, restoring order and ids) and, for comparison, the library's
own `update` on ready-made `sv.Detections`. Single-threaded numpy/scipy; run it on an idle machine.

    .venv/bin/python benchmarks/tracking.py [--boxes 50] [--frames 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# One thread for BLAS: a tracker runs beside the decoder of each source, and small matrices only lose by threading.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritonctl.stream.tracking import TRACKERS, make_tracker  # noqa: E402
from tritonctl.vision.detections import Detections  # noqa: E402


def scene(n_boxes: int, n_frames: int, seed: int = 0) -> list[Detections]:
    rng = np.random.default_rng(seed)
    w, h = 1920.0, 1080.0
    size = rng.uniform(30, 90, (n_boxes, 2))
    pos = rng.uniform([0, 0], [w - 90, h - 90], (n_boxes, 2))
    vel = rng.uniform(-4, 4, (n_boxes, 2))
    frames = []
    for _ in range(n_frames):
        pos += vel
        out = (pos < 0) | (pos + size > [w, h])
        vel[out] = -vel[out]
        boxes = np.concatenate([pos, pos + size], 1) + rng.normal(0, 2, (n_boxes, 4))
        scores = rng.uniform(0.5, 1.0, n_boxes)
        keep = rng.random(n_boxes) > 0.05
        boxes, scores = boxes[keep], scores[keep]
        n_fp = rng.integers(0, 4)
        fp = rng.uniform([0, 0], [w - 60, h - 60], (n_fp, 2))
        boxes = np.concatenate([boxes, np.concatenate([fp, fp + 50], 1)])
        scores = np.concatenate([scores, rng.uniform(0.25, 0.45, n_fp)])
        frames.append(Detections(boxes.astype(np.float32), scores.astype(np.float32),
                                 rng.integers(0, 4, len(boxes)).astype(np.int64)))
    return frames


def time_per_frame(fn: object, items: list, warmup: int) -> np.ndarray:
    times = []
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        fn(item)  # type: ignore[operator]
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=50)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import supervision as sv

    frames = scene(args.boxes, args.frames)
    warmup = min(60, args.frames // 5)
    rows = []
    for name in TRACKERS:
        ours = time_per_frame(make_tracker(name, 30.0).update, frames, warmup)
        lib = make_tracker(name, 30.0)._impl
        ready = [sv.Detections(xyxy=d.boxes, confidence=d.scores, class_id=d.classes) for d in frames]
        raw = time_per_frame(lib.update, ready, warmup)
        tracks = sum(t.tracker_id >= 0 for t in lib.tracks)
        rows.append({"tracker": name, "boxes": args.boxes, "live_tracks": int(tracks),
                     "median_ms": float(np.median(ours)), "p99_ms": float(np.percentile(ours, 99)),
                     "library_median_ms": float(np.median(raw)), "library_p99_ms": float(np.percentile(raw, 99))})
    print(f"{args.boxes} boxes/frame, {args.frames} frames ({warmup} warm-up), one thread; target <= 1 ms per frame")
    print(f"{'tracker':<10} {'tracks':>6} {'median ms':>10} {'p99 ms':>8} {'lib median':>11} {'lib p99':>8}  target")
    for r in rows:
        ok = "ok" if r["median_ms"] <= 1.0 else "MISSED"
        print(f"{r['tracker']:<10} {r['live_tracks']:>6} {r['median_ms']:>10.3f} {r['p99_ms']:>8.3f} "
              f"{r['library_median_ms']:>11.3f} {r['library_p99_ms']:>8.3f}  {ok}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
