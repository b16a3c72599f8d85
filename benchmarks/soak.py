#!/usr/bin/env python3
"""Long-run memory of `detect`: the whole pipeline (reader, queue, dispatcher, workers with shared memory, ordered
emitter, JSON Lines sink, statistics) over 100,000 frames, with this process's RSS sampled as it goes.

A tiny detector (tests/onnx_models.py: 32x32 input, 4 classes) served by the real local Triton, a small generated
video (64x48) so the run is bounded by the client rather than the model; it takes a few minutes on 2 cores.
Prints the RSS growth after warm-up (last sample minus the one at the end of warm-up, and the fitted slope) against
the target: at most 5 MB over 100,000 frames. Exit status 1 when the target is missed.

Run: .venv/bin/python benchmarks/soak.py [--frames 100000] [--warmup 10000] [--video]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

TARGET_MB = 5.0


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_source(path: Path, n_frames: int) -> None:
    """A 64x48 MP4 cycling through 50 distinct noisy frames (encoding stays fast; decoding is real)."""
    import cv2

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(50)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30.0, (64, 48))
    for i in range(n_frames):
        writer.write(frames[i % len(frames)])
    writer.release()


class Sampler(threading.Thread):
    """Samples RSS each time `every` more frames have been inferred."""

    def __init__(self, run: object, every: int) -> None:
        super().__init__(daemon=True)
        self.run_, self.every = run, every
        self.samples: list[tuple[int, float]] = []
        self.done = threading.Event()

    def frames(self) -> int:
        return sum(self.run_.stats.inferred.values())  # type: ignore[attr-defined]

    def run(self) -> None:
        next_at = 0
        while not self.done.wait(0.02):
            n = self.frames()
            if n >= next_at:
                self.samples.append((n, rss_mb()))
                next_at = (n // self.every + 1) * self.every


def soak(args: argparse.Namespace, work: Path) -> dict:
    from conftest import free_ports
    from onnx_models import tiny_detector

    from tritonctl.model.repository import ConfigSettings, write_model
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings
    from tritonctl.stream.detect import DetectSettings, check_server, open_sinks
    from tritonctl.stream.streaming import Detection
    from tritonctl.stream.summary import summarize

    write_model(ConfigSettings.create(name="tiny", model_file=tiny_detector(work / "tiny.onnx"), repo=work / "repo",
                                      max_batch=8, queue_delay_us=500))
    video = work / "soak.mp4"
    t = time.perf_counter()
    write_source(video, args.frames)
    print(f"wrote {args.frames} frames in {time.perf_counter() - t:.0f} s")
    http, grpc, metrics = free_ports(3)
    server = start_local(ServeSettings.create(runtime="local", repo=work / "repo", http_port=http, grpc_port=grpc,
                                              metrics_port=metrics))
    try:
        settings = DetectSettings.create(sources=[str(video)], urls=[server.settings.url], model="tiny",
                                         batch=args.batch, concurrency=args.concurrency, json_path=work / "out.jsonl",
                                         output=work / "out.mp4" if args.video else None)
        run = Detection(settings, check_server(settings))
        sampler = Sampler(run, args.every)
        sampler.start()
        run.run(lambda r: open_sinks(settings, r))
        sampler.done.set()
        sampler.join()
        sampler.samples.append((sampler.frames(), rss_mb()))
        return {"summary": summarize(run).to_json(), "samples": sampler.samples}
    finally:
        server.stop()


def report(args: argparse.Namespace, result: dict) -> bool:
    samples = np.array(result["samples"])
    after = samples[samples[:, 0] >= args.warmup]
    if len(after) < 2:
        print("too few samples after warm-up: raise --frames or lower --warmup")
        return False
    growth = after[-1, 1] - after[0, 1]
    slope = np.polyfit(after[:, 0], after[:, 1], 1)[0] * 100_000
    s = result["summary"]
    print(f"\n$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{s['frames']['inferred']} frames inferred in {s['wall_s']:.0f} s ({s['fps']:.0f} fps, concurrency "
          f"{s['concurrency']}, batch {s['batch']}, shared memory {s['shared_memory']}), dropped {s['frames']['dropped']}")
    print(f"RSS: {samples[0, 1]:.1f} MB at start, {after[0, 1]:.1f} MB after {int(after[0, 0])} frames (warm-up), "
          f"{after[-1, 1]:.1f} MB at {int(after[-1, 0])} frames; min/max after warm-up {after[:, 1].min():.1f}/"
          f"{after[:, 1].max():.1f} MB")
    print(f"growth after warm-up: {growth:+.2f} MB (fitted slope {slope:+.2f} MB per 100,000 frames); "
          f"target <= {TARGET_MB:g} MB: {'met' if growth <= TARGET_MB else 'MISSED'}")
    return bool(growth <= TARGET_MB)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=10_000, help="frames before the baseline sample")
    parser.add_argument("--every", type=int, default=2_000, help="frames between RSS samples")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--video", action="store_true", help="also write the annotated video (an MP4's index grows "
                        "with its length, by design of the format)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tritonctl-soak-") as tmp:
        result = soak(args, Path(tmp))
    return 0 if report(args, result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
