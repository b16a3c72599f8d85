#!/usr/bin/env python3
"""How many live 1280x720 30 fps RTSP cameras `tritonctl detect` sustains on one local Triton (issue 12's proof),
against Ultralytics' own multi-stream path (a `.streams` file of the same URLs) on the same server.

Set-up (in a temporary folder): the demo model (the FP32 ONNX export of models/shapes-yolov8n.pt, as
benchmarks/detect_vs_peers.py does) served by the local Triton; one H.264 file from `write_h264` (1280x720, 30 fps,
10 s, an IDR every 30 frames); one real RTSP server (tests/rtsp.py: GStreamer's, looping the file without
re-encoding) with mounts cam0..cam{max-1}, all serving that file.

For each N (default 1,2,4,6,8,10,12; stops once two Ns in a row miss 95% of 30 fps on every camera):
- detect: `tritonctl detect rtsp://…/cam0 … -m shapes --url … --summary-json … --json …` as a child process. Once
  every camera has a result line, `--warmup` seconds more, then the measured window of `--seconds`, then SIGINT.
  Per-camera fps is counted from the JSON Lines over the steady window only (each line's `timestamp` is the wall time
  its frame was decoded, since its reader started). Latency (end to end: decoded -> result written), drops and
  stalls come from `--summary-json`, which covers the whole run: the connecting and warm-up seconds are included
  there (they are short against the window).
- Ultralytics: `YOLO("http://…/shapes", task="detect").predict(source="cams.streams", stream=True, …)` in a child
  process (OpenCV's FFmpeg reads each camera in a thread; RTSP over TCP, as detect reads it; the serial opening of the
  streams is waited for). Each batch holds one frame of every stream; per-stream fps = its results in the window /
  window. Its latency cannot be measured the same way (no decode time per frame), so only fps is reported.
- CPU over the window (user+sys from /proc, % of one core): the detect (or Ultralytics) process, the Triton server
  (tritonserver and its Python backend stubs) and the RTSP server.

Verdicts: the largest N detect sustains (every camera >= 28.5 fps and every camera's p99 <= 100 ms), by fps alone,
and Ultralytics' largest N (every stream >= 28.5 fps). Target: >= 8 cameras.

Run: .venv/bin/python benchmarks/streams.py [--cameras 1,2,4,6,8,10,12] [--seconds 20] [--warmup 3] [--out F.json]
     .venv/bin/python benchmarks/streams.py --quick    # N in 1,2 for 8 s each: checks the script works
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FPS = 30.0
FPS_MIN = 0.95 * FPS  # 28.5
P99_MAX_MS = 100.0
TARGET_N = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The peer, run as `python -c PEER_CODE URL STREAMS_FILE IMGSZ OUT`: one line per result, "monotonic-time path".
PEER_CODE = r"""
import sys, time
from ultralytics import YOLO
url, streams, imgsz, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model = YOLO(url, task="detect")
with open(out, "w") as f:
    for r in model.predict(source=streams, stream=True, imgsz=imgsz, conf=0.25, iou=0.45, verbose=False):
        f.write(f"{time.monotonic():.4f} {r.path}\n")
        f.flush()
"""


def cpu_s(pids: set[int] | list[int]) -> float:
    """user+sys seconds of these processes (threads included); a process gone is counted as 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (idle and iowait are not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


class Cpu:
    """CPU seconds of named process sets between `start()` and `stop()`, as % of one core."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups  # name -> callable returning the pids now
        self.t0 = 0.0
        self.c0: dict[str, float] = {}
        self.pct: dict[str, float] = {}
        self.h0 = (0, 0)

    def start(self) -> None:
        self.t0, self.c0 = time.monotonic(), {k: cpu_s(f()) for k, f in self.groups.items()}
        self.h0 = host_jiffies()

    def stop(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        self.pct = {k: round(100 * (cpu_s(f()) - self.c0[k]) / dt, 1) for k, f in self.groups.items()}
        busy, total = (b - a for a, b in zip(self.h0, host_jiffies(), strict=True))
        self.pct["host"] = round(100 * busy / max(total, 1), 1)  # % of all CPUs busy, anything on the machine
        return self.pct


def tail_lines(path: Path, pos: int) -> tuple[list[str], int]:
    """Complete lines appended to `path` since byte `pos` (a partly written last line waits for the next call)."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except FileNotFoundError:
        return [], pos
    end = data.rfind(b"\n") + 1
    return data[:end].decode(errors="replace").splitlines(), pos + end


def wait_all(path: Path, n: int, key: Any, timeout: float, alive: Any) -> float | None:
    """Wait until lines of `path` name all n sources (`key(line)`: a source id or None); the seconds it took, or None."""
    t0, pos, seen = time.monotonic(), 0, set[Any]()
    while time.monotonic() - t0 < timeout and alive():
        lines, pos = tail_lines(path, pos)
        seen.update(k for line in lines if (k := key(line)) is not None)
        if len(seen) >= n:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def stop_child(proc: subprocess.Popen[Any], sig: int, timeout: float) -> None:
    """`sig` to the child's group, then SIGKILL after `timeout` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def run_detect(env: dict[str, Any], n: int, seconds: float, warmup: float, work: Path) -> dict[str, Any]:
    urls = [env["rtsp"].url(f"cam{i}") for i in range(n)]
    summary_json, jsonl = work / f"detect{n}.summary.json", work / f"detect{n}.jsonl"
    argv = [str(Path(sys.executable).with_name("tritonctl")), "detect", *urls, "-m", env["model"], "--url",
            env["url"], "--summary-json", str(summary_json), "--json", str(jsonl), *env["detect_args"]]
    from tritonctl.outputs.sinks import partial_path

    log = open(work / f"detect{n}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
    cpu = Cpu({"client": lambda: [proc.pid], "triton": env["triton_pids"], "rtsp": env["rtsp_pids"]})
    try:
        connect_s = wait_all(partial_path(jsonl), n, lambda line: json.loads(line)["source"], 30 + 2 * n,
                             lambda: proc.poll() is None)
        time.sleep(warmup)
        cpu.start()
        time.sleep(seconds)
        cpu.stop()
    finally:
        stop_child(proc, signal.SIGINT, 60)
        log.close()
    if not summary_json.exists():
        raise RuntimeError(f"detect wrote no summary (exit {proc.returncode}): "
                           f"{(work / f'detect{n}.log').read_text(errors='replace')[-2000:]}")
    summary = json.loads(summary_json.read_text())
    # the steady window, on the frames' own clock: from the last camera's first frame + warm-up to the first
    # camera's last frame
    stamps: dict[int, list[float]] = {i: [] for i in range(n)}
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        stamps[row["source"]].append(row["timestamp"])
    firsts = [min(s) for s in stamps.values() if s]
    lasts = [max(s) for s in stamps.values() if s]
    cams = []
    if len(firsts) == n:
        lo, hi = max(firsts) + warmup, min(lasts)
        for i in range(n):
            src = summary["sources"][i]
            k = sum(lo <= t <= hi for t in stamps[i])
            cams.append({"fps": k / (hi - lo) if hi > lo else 0.0, "fps_whole_run": src["fps"], "read": src["read"],
                         "inferred": src["inferred"], "dropped": src["dropped"], "stalls": src["stalls"],
                         "reconnects": src["reconnects"], "error": src["error"], "latency_ms": src["latency_ms"]})
        window = hi - lo
    else:
        window = 0.0
        cams = [{"fps": 0.0, "error": s["error"] or "never streamed", **{k: s[k] for k in ("read", "inferred",
                 "dropped", "stalls")}, "latency_ms": s["latency_ms"]} for s in summary["sources"]]
    fps = [c["fps"] for c in cams]
    p99 = [c["latency_ms"].get("p99", float("inf")) for c in cams]
    read = sum(c["read"] for c in cams)
    return {"n": n, "command": shlex.join(argv), "connect_s": connect_s, "window_s": window, "cameras": cams,
            "fps_min": min(fps), "fps_mean": sum(fps) / n, "p99_ms_max": max(p99),
            "dropped_pct": 100 * sum(c["dropped"] for c in cams) / read if read else 0.0,
            "stalls": sum(c["stalls"] for c in cams), "errors": [c["error"] for c in cams if c["error"]],
            "cpu_pct": cpu.pct, "batch": summary["batch"], "concurrency": summary["concurrency"],
            "stage_p99_ms": {k: v.get("p99") for k, v in summary["latency_ms"].items()},
            "server": summary["server"], "ended_by": summary["ended_by"],
            "fps_ok": min(fps) >= FPS_MIN, "ok": min(fps) >= FPS_MIN and max(p99) <= P99_MAX_MS}


def run_peer(env: dict[str, Any], n: int, seconds: float, warmup: float, work: Path) -> dict[str, Any]:
    urls = [env["rtsp"].url(f"cam{i}") for i in range(n)]
    streams, out = work / f"cams{n}.streams", work / f"peer{n}.txt"
    streams.write_text("\n".join(urls) + "\n")
    argv = [sys.executable, "-c", PEER_CODE, f"http://{env['url']}/{env['model']}", str(streams), str(env["imgsz"]),
            str(out)]
    # OpenCV's FFmpeg over TCP, as detect reads RTSP (UDP loses packets under load)
    penv = {**os.environ, "OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;tcp", "YOLO_OFFLINE": "1"}
    log = open(work / f"peer{n}.log", "wb")  # noqa: SIM115 (closed below)
    t_start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work, env=penv)
    cpu = Cpu({"client": lambda: [proc.pid], "triton": env["triton_pids"], "rtsp": env["rtsp_pids"]})
    try:
        connect_s = wait_all(out, n, lambda line: line.split(" ", 1)[1], 30 + 10 * n, lambda: proc.poll() is None)
        time.sleep(warmup)
        cpu.start()
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        cpu.stop()
    finally:
        stop_child(proc, signal.SIGINT, 10)
        log.close()
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines() if out.exists() else []:
        t, path = line.split(" ", 1)
        if t0 <= float(t) <= t1:
            counts[path] += 1
    # a result's path is its stream's URL made file-safe (rtsp___127.0.0.1_PORT_cam0): one per stream
    fps = sorted((k / (t1 - t0) for k in counts.values()), reverse=True)[:n]
    fps += [0.0] * (n - len(fps))  # a stream with no result in the window
    error = None if connect_s is not None else \
        f"not every stream gave a result: {(work / f'peer{n}.log').read_text(errors='replace')[-500:]}"
    return {"n": n, "connect_s": connect_s, "started_s": round(t0 - t_start, 1), "window_s": t1 - t0, "fps": fps,
            "fps_min": min(fps), "fps_mean": sum(fps) / n, "cpu_pct": cpu.pct, "error": error,
            "fps_ok": min(fps) >= FPS_MIN}


def setup(work: Path, max_n: int, stack: contextlib.ExitStack) -> dict[str, Any]:
    from rtsp import RtspServer

    from tritonctl.model.export import ExportSettings, export
    from tritonctl.model.repository import ConfigSettings, write_model
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings, port_free
    from tritonctl.vision.synthetic import write_h264

    t = time.monotonic()
    export(ExportSettings.create(model_path=ROOT / "models" / "shapes-yolov8n.pt", out_dir=work / "export"))
    cfg = ConfigSettings.create(name="shapes", model_file=work / "export" / "model_fp32.onnx", repo=work / "repo")
    write_model(cfg)
    imgsz = json.loads((work / "repo" / "shapes" / "model.json").read_text())["imgsz"][0]
    h264 = write_h264(work / "cam.h264", seconds=10, width=1280, height=720, fps=int(FPS), gop=30, seed=0)
    ports = [p for p in range(18600, 18700) if port_free("127.0.0.1", p)][:3]
    server = start_local(ServeSettings.create(runtime="local", repo=work / "repo", http_port=ports[0],
                                              grpc_port=ports[1], metrics_port=ports[2]))
    stack.callback(server.stop)
    rtsp = RtspServer.start({f"cam{i}": h264 for i in range(max_n)})
    stack.callback(rtsp.stop)
    print(f"set-up in {time.monotonic() - t:.0f} s: model shapes (FP32 ONNX, {imgsz}x{imgsz}, {cfg.instances} "
          f"instances x {cfg.threads} ORT threads, max batch {cfg.max_batch}) on the local Triton {server.settings.url}; "
          f"{h264.stat().st_size / 1e6:.1f} MB H.264 on {rtsp.url('cam0').rsplit('/', 1)[0]}/cam0..cam{max_n - 1}",
          flush=True)
    return {"model": "shapes", "url": server.settings.url, "imgsz": imgsz, "rtsp": rtsp,
            "triton_pids": lambda: server.child.members(),
            "rtsp_pids": lambda: [rtsp.proc.pid] if rtsp.proc is not None else [],
            "config": {"instances": cfg.instances, "threads": cfg.threads, "max_batch": cfg.max_batch,
                       "imgsz": imgsz, "cpus": os.cpu_count()}}


def sweep(args: argparse.Namespace, env: dict[str, Any], work: Path) -> dict[str, Any]:
    # warm-up: the server's ONNX Runtime sessions see every batch size once, the RTSP mounts their first client
    run_detect(env, max(args.cameras), 2, 0, work / "warm")
    detect_rows: list[dict[str, Any]] = []
    peer_rows: list[dict[str, Any]] = []
    misses = {"detect": 0, "peer": 0 if args.peer else 2}
    for n in args.cameras:
        if misses["detect"] < 2:
            row = run_detect(env, n, args.seconds, args.warmup, work)
            detect_rows.append(row)
            misses["detect"] = 0 if row["fps_ok"] else misses["detect"] + 1
            print(f"  detect N={n}: fps min {row['fps_min']:.1f}, p99 max {row['p99_ms_max']:.0f} ms, dropped "
                  f"{row['dropped_pct']:.1f}%, cpu {row['cpu_pct']}", flush=True)
        if misses["peer"] < 2:
            prow = run_peer(env, n, args.seconds, args.warmup, work)
            peer_rows.append(prow)
            misses["peer"] = 0 if prow["fps_ok"] else misses["peer"] + 1
            print(f"  ultralytics N={n}: fps min {prow['fps_min']:.1f} (streams open after {prow['connect_s']} s), "
                  f"cpu {prow['cpu_pct']}", flush=True)
        if misses["detect"] >= 2 and misses["peer"] >= 2:
            break
    return {"detect": detect_rows, "ultralytics": peer_rows}


def largest(rows: list[dict[str, Any]], key: str) -> int:
    return max((r["n"] for r in rows if r[key]), default=0)


def report(args: argparse.Namespace, env: dict[str, Any], result: dict[str, Any]) -> None:
    peers = {r["n"]: r for r in result["ultralytics"]}
    print(f"\n$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    c = env["config"]
    print(f"{c['cpus']} CPUs; local Triton, shapes FP32 {c['imgsz']}x{c['imgsz']} ({c['instances']} instances x "
          f"{c['threads']} ORT thread(s)); N RTSP cameras 1280x720 at {FPS:g} fps (GStreamer RTSP server, TCP); "
          f"{args.seconds:g} s window after {args.warmup:g} s warm-up")
    print("detect fps: counted in the window (JSON Lines); p99, dropped, stalls: its whole run (--summary-json); "
          "CPU: % of one core over the window (client = detect or Ultralytics); host: % of all CPUs busy\n")
    head = (f"{'N':>3} | {'fps min':>7} {'mean':>5} {'p99 ms':>7} {'drop %':>6} {'stalls':>6} {'batch':>5} | "
            f"{'CPU detect':>10} {'triton':>6} {'rtsp':>5} {'host':>5} | {'ultra fps':>9} {'CPU ultra':>9} {'triton':>6} | ok")
    print(head)
    print("-" * len(head))
    ns = sorted({r["n"] for r in result["detect"]} | set(peers))
    rows = {r["n"]: r for r in result["detect"]}
    for n in ns:
        d, p = rows.get(n), peers.get(n)
        left = (f"{d['fps_min']:7.1f} {d['fps_mean']:5.1f} {d['p99_ms_max']:7.0f} {d['dropped_pct']:6.1f} "
                f"{d['stalls']:6d} {d['batch']:5d} | {d['cpu_pct']['client']:9.0f}% {d['cpu_pct']['triton']:5.0f}% "
                f"{d['cpu_pct']['rtsp']:4.0f}% {d['cpu_pct']['host']:4.0f}%") if d else f"{'(not run)':>47} | {'':>30}"
        right = (f"{p['fps_min']:9.1f} {p['cpu_pct']['client']:8.0f}% {p['cpu_pct']['triton']:5.0f}%"
                 if p else f"{'(not run)':>9} {'':>9} {'':>6}")
        ok = ("detect" if d and d["ok"] else "detect(fps)" if d and d["fps_ok"] else "-") + \
             (" ultra" if p and p["fps_ok"] else "")
        print(f"{n:3d} | {left} | {right} | {ok}")
        for what, r in (("detect", d), ("ultralytics", p)):
            errs = (r or {}).get("errors") or ([r["error"]] if r and r.get("error") else [])
            if errs:
                print(f"      {what} N={n}: {'; '.join(sorted(set(map(str, errs))))[:300]}")
    x = largest(result["detect"], "ok")
    y = largest(result["detect"], "fps_ok")
    z = largest(result["ultralytics"], "fps_ok")
    print(f"\nlargest N sustained by detect (fps >= {FPS_MIN:g} each, p99 <= {P99_MAX_MS:g} ms): {x}"
          f"  (target >= {TARGET_N}: {'met' if x >= TARGET_N else 'MISSED'})")
    print(f"by fps alone: {y}")
    print(f"Ultralytics (fps >= {FPS_MIN:g} each): {z}"
          + ("" if args.peer else " (not run: --no-peer)"))
    print("(Ultralytics' latency is not measured: its results carry no per-frame decode time; fps only)")
    result["verdict"] = {"detect": x, "detect_fps_only": y, "ultralytics": z, "target": TARGET_N}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", default="1,2,4,6,8,10,12", help="the Ns to try, ascending")
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window per N and client")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after every camera streams, before the window")
    parser.add_argument("--quick", action="store_true", help="N in 1,2 for 8 s each (checks the script works)")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip Ultralytics")
    parser.add_argument("--out", type=Path, help="also write every figure as JSON here")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, summaries, JSON Lines)")
    parser.add_argument("--detect-args", default="", help="more flags for detect, e.g. '--concurrency 2'")
    args = parser.parse_args()
    if args.quick:
        args.cameras, args.seconds, args.warmup = "1,2", 8.0, 2.0
    args.cameras = sorted({int(n) for n in args.cameras.split(",")})
    with tempfile.TemporaryDirectory(prefix="tritonctl-streams-") as tmp, contextlib.ExitStack() as stack:
        work = args.keep or Path(tmp)
        (work / "warm").mkdir(parents=True, exist_ok=True)
        env = setup(work, max(args.cameras), stack)
        env["detect_args"] = shlex.split(args.detect_args)
        t = time.monotonic()
        result = sweep(args, env, work)
        result["sweep_s"] = round(time.monotonic() - t, 1)
    result["config"] = {**env["config"], "seconds": args.seconds, "warmup": args.warmup, "cameras": args.cameras}
    report(args, env, result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
