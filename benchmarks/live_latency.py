#!/usr/bin/env python3
"""Does `detect`'s latency stay flat over a long live run? (issue 12: "it stays flat over a 10-minute run")

Set-up as benchmarks/streams.py (the demo model on the local Triton, one real RTSP server looping a 1280x720 30 fps
H.264 file to N mounts). `tritonctl detect` runs on N cameras with `--view` for `--minutes`; every `--every` seconds
this script reads the view's `/api/sources`: per camera, fps and end-to-end latency p50/p99 over the last window
(the figures the live page shows), and the detect process's RSS. At the end: p99 (worst camera) and fps (slowest
camera) per minute, and the last minute's p99 against the first's. Flat: within 1.25x, and no minute's fps under
95% of 30.

Run: .venv/bin/python benchmarks/live_latency.py [--cameras 8] [--minutes 10] [--every 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from streams import setup, stop_child  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def poll(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sources", timeout=5) as r:
        return list(json.loads(r.read()))


def run(env: dict[str, Any], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from conftest import free_ports

    [port] = free_ports(1)
    urls = [env["rtsp"].url(f"cam{i}") for i in range(args.cameras)]
    argv = [str(Path(sys.executable).with_name("tritonctl")), "detect", *urls, "-m", env["model"], "--url", env["url"],
            "--view", f"127.0.0.1:{port}", "--summary-json", str(work / "summary.json")]
    log = open(work / "detect.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
    samples: list[dict[str, Any]] = []
    try:
        time.sleep(5)  # cameras open, the first window fills
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < args.minutes * 60:
            time.sleep(args.every)
            figures = poll(port)
            sample = {"t": round(elapsed + args.every), "rss_mb": round(rss_mb(proc.pid), 1),
                      "p99_ms": max(f["latency_p99_ms"] for f in figures), "p50_ms": max(f["latency_p50_ms"] for f in figures),
                      "fps_min": min(f["fps"] for f in figures), "dropped": sum(f["dropped"] for f in figures)}
            samples.append(sample)
            print(f"  {sample['t']:4d} s: p50 {sample['p50_ms']:5.1f} ms, p99 {sample['p99_ms']:5.1f} ms (worst camera), "
                  f"fps {sample['fps_min']:4.1f} (slowest), dropped {sample['dropped']}, RSS {sample['rss_mb']} MB",
                  flush=True)
    finally:
        stop_child(proc, signal.SIGINT, 30)
        log.close()
    return samples


def report(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    minutes: dict[int, list[dict[str, Any]]] = {}
    for s in samples:
        minutes.setdefault((s["t"] - 1) // 60, []).append(s)
    rows = [{"minute": m + 1, "p99_ms": max(s["p99_ms"] for s in ss), "fps_min": min(s["fps_min"] for s in ss),
             "rss_mb": ss[-1]["rss_mb"]} for m, ss in sorted(minutes.items())]
    print(f"\n{args.cameras} cameras, 1280x720 at 30 fps, {args.minutes} min; per minute: worst p99, slowest camera, RSS")
    for r in rows:
        print(f"  minute {r['minute']:2d}: p99 {r['p99_ms']:6.1f} ms   fps {r['fps_min']:5.1f}   RSS {r['rss_mb']:.1f} MB")
    ratio = rows[-1]["p99_ms"] / rows[0]["p99_ms"] if rows and rows[0]["p99_ms"] else float("nan")
    flat = ratio <= 1.25 and all(r["fps_min"] >= 28.5 for r in rows)
    print(f"last minute's p99 / first minute's: {ratio:.2f}x -> {'flat' if flat else 'NOT flat'} "
          f"(limit 1.25x, and every minute >= 28.5 fps); RSS {rows[0]['rss_mb']:.1f} -> {rows[-1]['rss_mb']:.1f} MB")
    return {"minutes": rows, "samples": samples, "p99_ratio": ratio, "flat": flat}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between readings of the live figures")
    parser.add_argument("--out", type=Path, help="also write every figure as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tritonctl-latency-") as tmp, contextlib.ExitStack() as stack:
        env = setup(Path(tmp), args.cameras, stack)
        samples = run(env, args, Path(tmp))
    result = report(samples, args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["flat"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
