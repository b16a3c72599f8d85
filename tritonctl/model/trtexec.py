"""What trtexec prints, read: which trtexec and TensorRT version a probe found, its performance summary and first
error, and its --exportTimes JSON summarised as trtexec's own summary does. The formats are trtexec's own (TensorRT
`samples/common/sampleReporting.cpp`, `sampleOptions.cpp`, `logging.h`); running it is engine.py's.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.core.errors import BadInput, ToolMissing

# Where NVIDIA's images have put trtexec when it is not on PATH; the probe looks on PATH first and says what it found.
KNOWN_TRTEXEC = ("/usr/src/tensorrt/bin/trtexec",)
DEFAULT_WARMUP_MS = 200.0  # trtexec's defaultWarmUp (sampleOptions.h); our timing command keeps it
PERCENTILES = (90.0, 95.0, 99.0)  # trtexec's default --percentile list
PROBE_MARK = "tritonctl-trtexec:"
# One shell line, run where the build runs: the first trtexec on PATH or in a known folder, then its banner
# (`trtexec --help` prints `&&&& RUNNING TensorRT.trtexec [TensorRT v100300] ...` first and needs no GPU).
PROBE_SCRIPT = (
    f'for p in "$(command -v trtexec)" {" ".join(KNOWN_TRTEXEC)}; do '
    f'if [ -n "$p" ] && [ -x "$p" ]; then echo "{PROBE_MARK} $p"; "$p" --help 2>&1 | head -n 3; exit 0; fi; done; '
    f'echo "{PROBE_MARK} none"; exit 127'
)


# ---------------------------------------------------------------- which trtexec, which TensorRT


@dataclass(frozen=True)
class Trtexec:
    """A trtexec as found where it runs: its path there, its TensorRT version, and the image (None: this host)."""

    path: str
    version: str | None
    image: str | None

    @property
    def major(self) -> int | None:
        return int(self.version.split(".")[0]) if self.version else None

    def describe(self) -> str:
        where = f"in {self.image}" if self.image else "on this host"
        return f"{self.path} {where}, TensorRT {self.version or '(version not printed)'}"


_BANNER = re.compile(r"&&&& \w+ TensorRT\.trtexec \[TensorRT v(\d+)\]")
_VERSION_LINE = re.compile(r"TensorRT version: (\d+)\.(\d+)\.(\d+)")


def _from_number(n: int) -> str:
    """NV_TENSORRT_VERSION as the banner prints it: major*10000+minor*100+patch since TensorRT 10, major*1000+... before."""
    if n >= 100000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def tensorrt_version(lines: Iterable[str]) -> str | None:
    """The TensorRT version trtexec printed: its `TensorRT version: X.Y.Z` line, else its `&&&& RUNNING` banner."""
    banner = None
    for line in lines:
        if m := _VERSION_LINE.search(line):
            return ".".join(m.groups())
        if banner is None and (b := _BANNER.search(line)):
            banner = _from_number(int(b.group(1)))
    return banner


def parse_probe(lines: list[str], image: str | None) -> Trtexec:
    """What PROBE_SCRIPT printed: the trtexec it found and that trtexec's banner."""
    found = next((ln.split(PROBE_MARK, 1)[1].strip() for ln in lines if PROBE_MARK in ln), "none")
    if found == "none":
        looked = ", ".join(["PATH", *KNOWN_TRTEXEC])
        raise ToolMissing(f"no trtexec in {image} (looked on {looked}): pass an --image that has TensorRT's trtexec "
                          "(the NGC tritonserver images do), or --runtime local")
    return Trtexec(found, tensorrt_version(lines), image)


def find_trtexec() -> str:
    for candidate in (shutil.which("trtexec"), *KNOWN_TRTEXEC):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ToolMissing("no trtexec on PATH (TensorRT is not installed here): use --runtime docker on a GPU host, "
                      "or install TensorRT")


# ---------------------------------------------------------------- parsing trtexec's output

_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([0-9.eE+-]+|inf)\s*ms")
_SUMMARY_KEYS = {"Latency": "latency", "Enqueue Time": "enqueue", "H2D Latency": "h2d", "GPU Compute Time": "gpu_compute",
                 "D2H Latency": "d2h"}
_WARMUP = re.compile(r"^Duration: \S+s \(\+ ([0-9.]+)ms warm up\)")
_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")
_ERROR = re.compile(r"^(?:\[[^\]]*\]\s*)?\[[EF]\]\s*(.+)$")  # `[date] [E] message`, logging.h's error (and fatal) prefixes


@dataclass
class Stats:
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    median: float | None = None
    percentiles: dict[str, float] = field(default_factory=dict)


@dataclass
class TrtexecSummary:
    throughput_qps: float | None = None
    stats: dict[str, Stats] = field(default_factory=dict)
    host_walltime_s: float | None = None
    gpu_compute_total_s: float | None = None
    passed: bool | None = None
    tensorrt: str | None = None  # the version the log says
    warmup_ms: float | None = None  # the warm-up the run used (its `Duration: 3s (+ 200ms warm up)` line)
    error: str | None = None  # trtexec's first `[E]` line, e.g. "Unknown option: --fp16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_summary(log: Iterable[str]) -> TrtexecSummary:
    """trtexec's `=== Performance summary ===` lines, with or without their `[date] [I]` prefixes, and the version,
    warm-up and first error it printed."""
    lines = list(log)
    summary = TrtexecSummary(tensorrt=tensorrt_version(lines))
    for raw in lines:
        if summary.error is None and (m := _ERROR.match(raw.strip())):
            summary.error = m.group(1).strip()
        _summary_line(summary, _PREFIX.sub("", raw.strip()))
    return summary


def _summary_line(summary: TrtexecSummary, line: str) -> None:
    if line.startswith("Throughput:"):
        summary.throughput_qps = float(line.split()[1])
    elif line.startswith("Total Host Walltime:"):
        summary.host_walltime_s = float(line.split(":")[1].split()[0])
    elif line.startswith("Total GPU Compute Time:"):
        summary.gpu_compute_total_s = float(line.split(":")[1].split()[0])
    elif "&&&& PASSED" in line:
        summary.passed = True
    elif "&&&& FAILED" in line:
        summary.passed = False
    elif m := _WARMUP.match(line):
        summary.warmup_ms = float(m.group(1))
    else:
        head = line.split(":", 1)[0]
        if head in _SUMMARY_KEYS and "=" in line:
            summary.stats[_SUMMARY_KEYS[head]] = _parse_stats(line)


def _parse_stats(line: str) -> Stats:
    stats = Stats()
    for name, pct, value in _STAT.findall(line):
        if pct:
            stats.percentiles[f"p{pct}"] = float(value)
        else:
            setattr(stats, name, float(value))
    return stats


def _percentile(ordered: list[float], pct: float) -> float:
    """trtexec's findPercentile: drop int((1 - p/100) * n) of the largest, in its float32 arithmetic (p99 of 100
    values is the largest one there, not the second largest)."""
    n = len(ordered)
    exclude = int((np.float32(1) - np.float32(pct) / np.float32(100)) * np.float32(n))
    return ordered[max(n - 1 - exclude, 0)]


def _describe(values: list[float]) -> dict[str, float]:
    """min, max, mean, median and trtexec's default percentiles, computed as trtexec's summary computes them."""
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    out = {"mean": sum(ordered) / n, "median": median, "min": ordered[0], "max": ordered[-1]}
    out.update({f"p{pct:g}": _percentile(ordered, pct) for pct in PERCENTILES})
    return out


def _warmups(records: list[dict[str, Any]], warmup_ms: float | None) -> int:
    """How many leading records are warm-up, as trtexec decides (printPerformanceReport): those before the first
    whose compute started at or after the warm-up time. TensorRT 8.5 and later leave them out of --exportTimes
    already (then this is 0); up to 8.4 the file held them and only the printed summary skipped them."""
    if warmup_ms is None or "startComputeMs" not in records[0]:
        return 0
    return next((i for i, r in enumerate(records) if float(r["startComputeMs"]) >= warmup_ms), len(records))


def parse_times(path: Path, warmup_ms: float | None = None) -> dict[str, Any]:
    """Summarise trtexec's --exportTimes JSON (one record per inference) as trtexec's own summary does: warm-up
    records skipped, H2D/compute/D2H/latency in ms with trtexec's percentiles, throughput over the timed span."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} is not trtexec --exportTimes JSON ({exc.__class__.__name__})") from exc
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        raise BadInput(f"{path} holds no timing records: run trtexec with --exportTimes")
    skipped = _warmups(records, warmup_ms)
    timed = records[skipped:]
    if not timed:
        raise BadInput(f"{path}: all {len(records)} records fall within the {warmup_ms:g} ms warm-up")
    keys = {"h2d": ("h2dMs", "inMs"), "compute": ("computeMs",), "d2h": ("d2hMs", "outMs"), "latency": ("latencyMs",)}
    out: dict[str, Any] = {"inferences": len(timed), "warmup_skipped": skipped, "warmup_ms": warmup_ms}
    if {"startH2dMs", "endD2hMs"} <= set(timed[0]):  # trtexec's Total Host Walltime: first H2D start to last D2H end
        span_ms = float(timed[-1]["endD2hMs"]) - float(timed[0]["startH2dMs"])
        out["throughput_qps"] = len(timed) / span_ms * 1000 if span_ms > 0 else None
    for name, options in keys.items():
        key = next((k for k in options if k in timed[0]), None)
        if key is not None:
            out[name] = _describe([float(r[key]) for r in timed])
    return out
