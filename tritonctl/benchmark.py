"""`tritonctl benchmark`: the seed's perf_analyzer sweep over batch sizes (and concurrency), one CSV per batch exactly as
perf_analyzer writes it, merged into summary.csv/json, the best setting for a latency budget, a plot, and `--apply`."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.errors import BadInput, ServerError
from tritonctl.perf import PerfTool, read_csv, run

# perf_analyzer --verbose-csv column -> our summary column (perf_analyzer reports microseconds)
COLUMNS = {
    "Inferences/Second": "infer_per_s", "p50 latency": "p50_ms", "p90 latency": "p90_ms", "p95 latency": "p95_ms",
    "p99 latency": "p99_ms", "Avg latency": "avg_ms", "Client Send": "client_send_ms", "Client Recv": "client_recv_ms",
    "Network+Server Send/Recv": "network_ms", "Server Queue": "server_queue_ms",
    "Server Compute Input": "compute_input_ms", "Server Compute Infer": "compute_infer_ms",
    "Server Compute Output": "compute_output_ms", "Avg GPU Utilization": "gpu_util", "Max GPU Memory Usage": "gpu_mem_bytes",
}
US_COLUMNS = {k for k, v in COLUMNS.items() if v.endswith("_ms")}


@dataclass(frozen=True)
class BenchmarkSettings:
    model: str
    url: str = "127.0.0.1:8000"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    concurrency: tuple[int, int, int] = (1, 1, 1)
    protocol: str = "http"
    shared_memory: str = "none"
    measurement_interval_ms: int = 5000
    stability_percentage: int = 10
    latency_budget_ms: float | None = None
    out_dir: Path = Path("reports")
    metrics_url: str | None = None

    @classmethod
    def create(cls, *, batch_sizes: str, concurrency: str, out_dir: Path | None, model: str, **kw: Any) -> BenchmarkSettings:
        try:
            batches = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        except ValueError:
            raise BadInput(f"--batch-sizes {batch_sizes!r}: give whole numbers such as 1,2,4,8") from None
        if not batches or min(batches) < 1:
            raise BadInput(f"--batch-sizes {batch_sizes!r}: every batch size must be at least 1")
        parts = concurrency.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise BadInput(f"--concurrency {concurrency!r}: use N or start:end[:step], e.g. 1:8:2") from None
        if len(values) not in (1, 2, 3) or min(values) < 1:
            raise BadInput(f"--concurrency {concurrency!r}: use N or start:end[:step] with numbers >= 1")
        start, end, step = {1: (values[0], values[0], 1), 2: (values[0], values[-1], 1)}.get(len(values), tuple(values))
        if end < start:
            raise BadInput(f"--concurrency {concurrency!r}: end below start")
        out = out_dir or Path("reports") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        s = cls(model=model, batch_sizes=tuple(sorted(set(batches))), concurrency=(start, end, step), out_dir=out, **kw)
        if s.protocol not in ("http", "grpc"):
            raise BadInput(f"--protocol {s.protocol!r}: choose http or grpc")
        if s.shared_memory not in ("none", "system", "cuda"):
            raise BadInput(f"--shared-memory {s.shared_memory!r}: choose none, system or cuda")
        if s.measurement_interval_ms < 100:
            raise BadInput("--measurement-interval is in milliseconds and must be at least 100")
        if s.latency_budget_ms is not None and s.latency_budget_ms <= 0:
            raise BadInput("--latency-budget-ms must be positive")
        return s

    def perf_args(self, batch: int, csv_name: str) -> list[str]:
        """The seed's loop body: -b $b --concurrency-range ... --collect-metrics --verbose-csv -f results_batch_${b}.csv"""
        start, end, step = self.concurrency
        args = ["-m", self.model, "-u", self.url, "-i", self.protocol, "-b", str(batch),
                "--concurrency-range", f"{start}:{end}:{step}", "--verbose-csv", "-f", csv_name,
                "--measurement-interval", str(self.measurement_interval_ms),
                "--stability-percentage", str(self.stability_percentage), "--shared-memory", self.shared_memory]
        if self.metrics_url:
            args += ["--collect-metrics", "--metrics-url", self.metrics_url]
        return args


@dataclass
class Row:
    batch: int
    concurrency: int
    infer_per_s: float
    values: dict[str, float | None] = field(default_factory=dict)

    @property
    def p95_ms(self) -> float:
        return float(self.values.get("p95_ms") or 0.0)


@dataclass
class BenchmarkResult:
    out_dir: Path
    rows: list[Row]
    skipped: list[int]
    best: Row | None
    sweet_spot: Row | None
    max_batch: int
    files: list[Path] = field(default_factory=list)


def model_limits(settings: BenchmarkSettings) -> int:
    """The model's max batch, asked of the server (one clear line when the server or model is not there)."""
    from tritonctl.client import served_model

    _, config = served_model(settings.protocol, settings.url, settings.model)
    return int(config.get("max_batch_size", 0))


def metrics_endpoint(url: str, given: str | None) -> str | None:
    """Triton's metrics URL for --collect-metrics: the one given, the one `serve` recorded for this server, or the
    default layout (HTTP port + 2); None when none of them answers (GPU columns then stay empty)."""
    import urllib.request

    from tritonctl.server import records

    host, port = url.rsplit(":", 1)
    recorded = [r.metrics_url for r in records() if r.url == url and r.metrics_url]
    tried = [given] if given else [*recorded, f"{host}:{int(port) + 2}/metrics"]
    for candidate in tried:
        try:
            with urllib.request.urlopen(f"http://{candidate}", timeout=2) as resp:
                if resp.status == 200 and b"nv_inference" in resp.read(200_000):
                    return candidate
        except (OSError, ValueError):
            continue
    if given:
        raise BadInput(f"--metrics-url {given} does not answer with Triton metrics")
    return None  # GPU utilisation/memory columns stay empty; everything else is measured


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def parse_rows(path: Path, batch: int) -> list[Row]:
    rows = []
    for raw in read_csv(path):
        values = {}
        for col, key in COLUMNS.items():
            v = _number(raw.get(col))
            values[key] = v / 1000 if v is not None and col in US_COLUMNS else v
        rows.append(Row(batch, int(raw["Concurrency"]), float(values["infer_per_s"] or 0.0), values))
    return rows


def pick_best(rows: list[Row], budget_ms: float | None) -> Row | None:
    """The highest throughput whose p95 latency fits the budget (any, without a budget)."""
    fitting = [r for r in rows if budget_ms is None or r.p95_ms <= budget_ms]
    return max(fitting, key=lambda r: (r.infer_per_s, -r.p95_ms)) if fitting else None


def pick_sweet_spot(rows: list[Row], budget_ms: float | None) -> Row | None:
    """The seed's sweet spot: the best latency for the largest batch. For each batch its lowest-p95 run; then the
    largest batch that fits the budget, or, without one, the largest batch whose per-image p95 still improves."""
    per_batch: dict[int, Row] = {}
    for r in rows:
        if r.batch not in per_batch or r.p95_ms < per_batch[r.batch].p95_ms:
            per_batch[r.batch] = r
    ordered = [per_batch[b] for b in sorted(per_batch)]
    if budget_ms is not None:
        fitting = [r for r in ordered if r.p95_ms <= budget_ms]
        return fitting[-1] if fitting else None
    best = ordered[0] if ordered else None
    for r in ordered[1:]:
        if best is not None and r.p95_ms / r.batch < best.p95_ms / best.batch:
            best = r
    return best


@dataclass(frozen=True)
class Plan:
    settings: BenchmarkSettings
    max_batch: int
    runnable: tuple[int, ...]
    skipped: tuple[int, ...]


def plan(s: BenchmarkSettings) -> Plan:
    """Everything checked before perf_analyzer runs: the server, the model, the batch sizes, the output folder."""
    max_batch = model_limits(s)
    s = dataclasses.replace(s, metrics_url=metrics_endpoint(s.url, s.metrics_url))
    limit = max(max_batch, 1)
    runnable = tuple(b for b in s.batch_sizes if b <= limit)
    if not runnable:
        raise BadInput(f"every --batch-sizes value is above model {s.model!r}'s max batch {max_batch}")
    try:
        s.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create --out-dir {s.out_dir} ({exc.strerror})") from exc
    return Plan(s, max_batch, runnable, tuple(b for b in s.batch_sizes if b > limit))


def run_sweep(p: Plan, tool: PerfTool, on_start: Callable[[int], None],
              on_line: Callable[[int, str], None]) -> BenchmarkResult:
    s, runnable = p.settings, p.runnable
    rows: list[Row] = []
    files = []
    for b in runnable:
        on_start(b)
        name = f"results_batch_{b}.csv"
        code, lines = run(tool, s.perf_args(b, name), s.out_dir, lambda line, b=b: on_line(b, line))  # type: ignore[misc]
        if code != 0 or not (s.out_dir / name).exists():
            last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
            raise ServerError(f"perf_analyzer failed at batch {b} (exit {code}): {last}")
        rows += parse_rows(s.out_dir / name, b)
        files.append(s.out_dir / name)
    result = BenchmarkResult(s.out_dir, rows, list(p.skipped), pick_best(rows, s.latency_budget_ms),
                             pick_sweet_spot(rows, s.latency_budget_ms), p.max_batch, files)
    result.files += write_summary(result, s)
    result.files.append(plot(result, s))
    return result


def write_summary(result: BenchmarkResult, s: BenchmarkSettings) -> list[Path]:
    keys = list(dict.fromkeys(COLUMNS.values()))
    csv_path = result.out_dir / "summary.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["batch", "concurrency", *keys])
        for r in result.rows:
            writer.writerow([r.batch, r.concurrency, *("" if r.values.get(k) is None else r.values[k] for k in keys)])
    json_path = result.out_dir / "summary.json"
    json_path.write_text(json.dumps({
        "model": s.model, "url": s.url, "protocol": s.protocol, "shared_memory": s.shared_memory,
        "latency_budget_ms": s.latency_budget_ms, "max_batch": result.max_batch, "skipped_batch_sizes": result.skipped,
        "rows": [{"batch": r.batch, "concurrency": r.concurrency, **r.values} for r in result.rows],
        "best": asdict(result.best) if result.best else None,
        "sweet_spot": asdict(result.sweet_spot) if result.sweet_spot else None,
    }, indent=2))
    return [csv_path, json_path]


def plot(result: BenchmarkResult, s: BenchmarkSettings) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for b in sorted({r.batch for r in result.rows}):
        pts = sorted((r for r in result.rows if r.batch == b), key=lambda r: r.concurrency)
        ax.plot([r.p95_ms for r in pts], [r.infer_per_s for r in pts], marker="o", label=f"batch {b}")
        for r in pts:
            ax.annotate(f"b{r.batch}c{r.concurrency}", (r.p95_ms, r.infer_per_s), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    if s.latency_budget_ms:
        ax.axvline(s.latency_budget_ms, color="red", linestyle="--", label=f"budget {s.latency_budget_ms:g} ms")
    if result.best:
        ax.scatter([result.best.p95_ms], [result.best.infer_per_s], s=200, facecolors="none", edgecolors="green",
                   linewidths=2, label="best", zorder=5)
    ax.set_xlabel("p95 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title(f"{s.model} @ {s.url} ({s.protocol}, shared memory {s.shared_memory})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = result.out_dir / "throughput_vs_latency.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def apply_to_config(config_path: Path, best: Row, max_batch: int, dry_run: bool) -> str:
    """Write the best setting's batching into config.pbtxt (through the same config model as `tritonctl config`).
    Returns the unified diff. Only dynamic_batching's preferred sizes and queue delay change."""
    import difflib

    from tritonctl.repository import config_text, parse_config

    if not config_path.is_file():
        raise BadInput(f"{config_path} does not exist: pass --repo, the model repository the server loads")
    before = config_path.read_text()
    cfg = parse_config(before)
    preferred = sorted({min(max_batch, best.batch), min(max_batch, best.batch * best.concurrency)})
    queue_us = int(min(100_000, max(100, (best.values.get("server_queue_ms") or 0.1) * 1000)))
    cfg.dynamic_batching.ClearField("preferred_batch_size")
    cfg.dynamic_batching.preferred_batch_size.extend(preferred)
    cfg.dynamic_batching.max_queue_delay_microseconds = queue_us
    after = config_text(cfg)
    diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), str(config_path), str(config_path)))
    if not dry_run:
        tmp = config_path.with_suffix(".pbtxt.tmp")
        tmp.write_text(after)
        tmp.replace(config_path)
    return diff
