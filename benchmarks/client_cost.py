#!/usr/bin/env python3
"""Client CPU per 1080p frame of `tritonctl detect`, beyond video decoding, against perf_analyzer's per request.

Issue 12: "client CPU per frame beyond decoding <= 1.0 ms (about 2x what perf_analyzer spends per request), measured
by a benchmark that reads each process's CPU time over the streaming loop only". What runs:

- the local Triton serving the demo model as `make demo` serves it (model_repository/, model `shapes`, FP32 ONNX);
- a 1920x1080 30 fps MP4 of N frames (tritonctl.vision.synthetic.write_video);
- `tritonctl detect` on it, in a child process (HTTP, system shared memory: the default on localhost), at --batch 1
  and --batch 4. The child runs the real CLI (runpy) with one hook: cv2.VideoCapture wrapped so that its K0-th and
  K1-th decoded frame note the process's CPU time (time.process_time: user + sys, every thread, in ns). In steady
  state the reader decodes as fast as the pipeline infers (a bounded queue, the `block` policy of files), so
  CPU(K1) - CPU(K0) over K1 - K0 frames is the streaming loop's cost per frame, without start-up, imports, model
  metadata or shared-memory set-up; frames 1..K0 warm up. No internals of detect are touched;
- decoding alone, the same way: a child that opens the same file with the same reader (tritonctl.sources.captures.open_capture,
  a cv2.VideoCapture read loop) and only reads, marked at the same frames;
- perf_analyzer (HTTP, system shared memory, concurrency 1) at -b 1 and -b 4: its CPU (os.wait4's rusage) in two
  runs of different request counts, divided by the difference of the requests the server counted (its statistics),
  so its start-up cancels too.

Prints per frame: total, decode, beyond decode; perf_analyzer per request (and per frame at -b 4); the ratios.
Runtime about 2 minutes. Run: .venv/bin/python benchmarks/client_cost.py [--frames N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "shapes"  # FP32 ONNX, as `make demo` serves it

# Runs argv[1:] as `python -m <module> ...` (or `python <script.py> ...`) with cv2.VideoCapture wrapped:
# the K0-th and K1-th frame read note the
# process's CPU time into $CC_MARKS (JSON).
MARKED = """
import json, os, runpy, sys, time
import cv2
K0, K1, MARKS = int(os.environ["CC_K0"]), int(os.environ["CC_K1"]), os.environ["CC_MARKS"]
_Real = cv2.VideoCapture
marks = {}

def _threads():
    # CPU seconds of each live thread, by its Python name (or the kernel name, for native threads)
    import threading
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = [names.get(int(tid), comm), (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick]
    return out

class MarkedCapture:
    def __init__(self, *args, **kwargs):
        self._cap, self._n = _Real(*args, **kwargs), 0

    def read(self, *args):
        ok, image = self._cap.read(*args)
        if ok:
            self._n += 1
            if self._n in (K0, K1):
                marks[self._n] = time.process_time()
                marks[f"threads{self._n}"] = _threads()
                with open(MARKS, "w") as f:
                    json.dump(marks, f)
        return ok, image

    def __getattr__(self, name):
        return getattr(self._cap, name)

cv2.VideoCapture = MarkedCapture
sys.argv = sys.argv[1:]
if sys.argv[0].endswith(".py"):
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

DECODE_ONLY = """
import sys
from tritonctl.sources.captures import open_capture
from tritonctl.sources.spec import parse_sources
cap = open_capture(parse_sources([sys.argv[1]])[0])
while cap.read()[0]:
    pass
cap.release()
"""


def child_cpu(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run cmd to its end; (its CPU seconds, user + sys over all its threads, its stdout)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=TREE,
                                env={**os.environ, "PYTHONPATH": str(TREE), **(env or {})}, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read() if proc.stderr else ""
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exit {proc.returncode}: {err[-2000:]}")
    return usage.ru_utime + usage.ru_stime, text


def loop_cpu(args: list[str], k0: int, k1: int, tmp: Path) -> float:
    """CPU seconds per frame between the k0-th and k1-th frame decoded by `python -m args...` / `python args...`."""
    marks = tmp / "marks.json"
    marks.unlink(missing_ok=True)
    child_cpu([sys.executable, "-c", MARKED, *args], {"CC_K0": str(k0), "CC_K1": str(k1), "CC_MARKS": str(marks)})
    got = json.loads(marks.read_text())
    if THREADS:  # --threads: where the window's CPU went, per thread (10 ms ticks), grouped by name
        groups: dict[str, list[float]] = {}
        for tid, (name, cpu, sys_cpu) in got[f"threads{k1}"].items():
            _, cpu0, sys0 = got[f"threads{k0}"].get(tid, [name, 0.0, 0.0])
            key = name.split("-")[0] if name.startswith("infer-") else name
            total = groups.setdefault(key, [0.0, 0.0])
            total[0] += cpu - cpu0
            total[1] += sys_cpu - sys0
        print("      per thread, ms/frame (of which sys): " + ", ".join(
            f"{k} {v / (k1 - k0) * 1000:.3f} ({sv / (k1 - k0) * 1000:.3f})"
            for k, (v, sv) in sorted(groups.items(), key=lambda kv: -kv[1][0]) if v > 0), flush=True)
    return float(got[str(k1)] - got[str(k0)]) / (k1 - k0)


def detect_cpu(video: Path, url: str, batch: int, k0: int, k1: int, tmp: Path) -> tuple[float, dict[str, object]]:
    summary = tmp / "summary.json"
    per_frame = loop_cpu(["tritonctl.cli", "detect", str(video), "-m", MODEL, "--url", url, "--batch", str(batch),
                          "--summary-json", str(summary)], k0, k1, tmp)
    return per_frame, json.loads(summary.read_text())


def inferred_frames(summary: dict[str, object]) -> int:
    frames = summary["frames"]
    assert isinstance(frames, dict)
    return int(frames["inferred"])


def decode_cpu(video: Path, k0: int, k1: int, tmp: Path) -> float:
    script = tmp / "decode_only.py"
    script.write_text(DECODE_ONLY)
    return loop_cpu([str(script), str(video)], k0, k1, tmp)


def perf_cpu(tool: str, url: str, batch: int, requests: int, tmp: Path) -> tuple[float, float]:
    """perf_analyzer's CPU and the inferences the server counted during it (requests = inferences / batch)."""
    from tritonctl.core.endpoint import parse_endpoint
    from tritonctl.inference.client import server_stats

    endpoint = parse_endpoint(url)
    before = server_stats("http", endpoint, MODEL)["count"]
    cpu, _ = child_cpu([tool, "-m", MODEL, "-u", url, "-i", "http", "-b", str(batch), "--concurrency-range", "1:1",
                        "--shared-memory", "system", "--output-shared-memory-size", str(batch * 8 * 756 * 4),
                        "--measurement-mode", "count_windows", "--measurement-request-count", str(requests),
                        "--max-trials", "3", "--stability-percentage", "999", "-f", str(tmp / "pa.csv")])
    after = server_stats("http", endpoint, MODEL)["count"]
    return cpu, (after - before) / batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400, help="frames of the video")
    ap.add_argument("--warmup", type=int, default=50, help="frames left out at each end of the measured window")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is reported")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--no-perf-analyzer", action="store_true")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every run's raw CPU seconds")
    ap.add_argument("--threads", action="store_true", help="print each run's CPU per thread (infer-* summed)")
    ap.add_argument("--tree", type=Path, default=ROOT, help="run the tritonctl package of this folder (default: this one)")
    args = ap.parse_args()
    global TREE, THREADS
    TREE, THREADS = args.tree.resolve(), args.threads
    batches = [int(b) for b in args.batches.split(",")]

    from tests.conftest import free_ports
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings
    from tritonctl.vision.synthetic import write_video

    n, k0 = args.frames, args.warmup
    k1 = n - args.warmup
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["TRITONCTL_STATE_DIR"] = str(tmp / "state")  # this server's record apart from anyone else's
        video = tmp / "video.mp4"
        write_video(video, n, 1920, 1080, 30.0, seed=1)
        http, grpc, metrics = free_ports(3)
        server = start_local(ServeSettings.create(runtime="local", repo=ROOT / "model_repository", http_port=http,
                                                  grpc_port=grpc, metrics_port=metrics))
        url = f"127.0.0.1:{http}"
        try:
            detect_cpu(video, url, 1, k0, k1, tmp)  # warm the server and the page cache
            decodes = [decode_cpu(video, k0, k1, tmp) for _ in range(args.repeat)]
            if args.verbose:
                print(f"    decode only: {' '.join(f'{d * 1000:.3f}' for d in decodes)} ms/frame", flush=True)
            rows = []
            for b in batches:
                per_frame, fps = [], []
                for _ in range(args.repeat):
                    cpu, summary = detect_cpu(video, url, b, k0, k1, tmp)
                    if inferred_frames(summary) != n:
                        raise RuntimeError(f"detect --batch {b} inferred {inferred_frames(summary)} of {n} frames")
                    per_frame.append(cpu)
                    fps.append(float(summary["fps"]))  # type: ignore[arg-type]
                if args.verbose:
                    print(f"    detect -b {b}: {' '.join(f'{c * 1000:.3f}' for c in per_frame)} ms/frame", flush=True)
                pa = None
                if not args.no_perf_analyzer:
                    tool = str(Path(sys.executable).parent / "perf_analyzer")
                    k = max(50, 100 // b)
                    samples = []
                    for _ in range(args.repeat):
                        p1, r1 = perf_cpu(tool, url, b, k, tmp)
                        p2, r2 = perf_cpu(tool, url, b, 3 * k, tmp)
                        if args.verbose:
                            print(f"    perf_analyzer -b {b}: {p1:.3f} s CPU for {r1:.0f} requests, {p2:.3f} s for "
                                  f"{r2:.0f}", flush=True)
                        samples.append((p2 - p1) / (r2 - r1))
                    pa = statistics.median(samples)
                rows.append((b, statistics.median(per_frame), statistics.median(fps), pa))
        finally:
            server.stop()  # type: ignore[attr-defined]

    decode = statistics.median(decodes)
    print(f"client CPU per 1920x1080 frame over frames {k0}..{k1} of {n} (process CPU, all threads), median of "
          f"{args.repeat}; model {MODEL} (FP32 ONNX), HTTP + system shared memory, default concurrency")
    print(f"  decode only (cv2.VideoCapture read loop): {decode * 1000:.3f} ms/frame")
    for b, total, fps, pa in rows:
        beyond = total - decode
        line = (f"  detect --batch {b}: total {total * 1000:.3f}, beyond decode {beyond * 1000:.3f} ms/frame"
                f" ({fps:.0f} fps)")
        if pa is not None:
            line += (f"; perf_analyzer -b {b}: {pa * 1000:.3f} ms/request ({pa / b * 1000:.3f} ms/frame): "
                     f"beyond-decode per frame / perf_analyzer per request {beyond / pa:.2f}x")
        print(line)
    print("  target (issue 12): beyond decode <= 1.0 ms/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
