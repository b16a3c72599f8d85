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

from tritonctl.core.endpoint import Endpoint, parse_endpoints
from tritonctl.core.errors import BadInput, ServerError, ToleranceExceeded
from tritonctl.measure.perf import PerfTool, per_gpu, read_csv, require_cuda, run

# perf_analyzer --verbose-csv column -> our summary column (perf_analyzer reports microseconds)
COLUMNS = {
    "Inferences/Second": "infer_per_s", "p50 latency": "p50_ms", "p90 latency": "p90_ms", "p95 latency": "p95_ms",
    "p99 latency": "p99_ms", "Avg latency": "avg_ms", "Client Send": "client_send_ms", "Client Recv": "client_recv_ms",
    "Network+Server Send/Recv": "network_ms", "Server Queue": "server_queue_ms",
    "Server Compute Input": "compute_input_ms", "Server Compute Infer": "compute_infer_ms",
    "Server Compute Output": "compute_output_ms",
}
US_COLUMNS = {k for k, v in COLUMNS.items() if v.endswith("_ms")}
# perf_analyzer's GPU columns (--collect-metrics), one `uuid:value;` per GPU. Our summary column holds one number over
# all GPUs (utilization: the mean, a fraction 0..1; power in W and memory in bytes: the sum); `per_gpu` keeps each.
GPU_COLUMNS = {"Avg GPU Utilization": ("gpu_util", "mean"), "Avg GPU Power Usage": ("gpu_power_w", "sum"),
               "Max GPU Memory Usage": ("gpu_mem_bytes", "sum"), "Total GPU Memory": ("gpu_mem_total_bytes", "sum")}

# The best pick searches what it recommends over: batch size and requests in flight. Concurrency 1 alone (the seed's
# loop, still `--concurrency 1`) left the server idle between requests: 15.9 infer/s where detect reached 28.6 fps.
DEFAULT_CONCURRENCY = "1:4"
BEST_MEANS = "best: the highest infer/s whose p95 latency fits the budget (any p95 without --latency-budget-ms)"
SWEET_SPOT_MEANS = ("sweet spot: the largest batch size whose lowest p95 fits the budget (without one: the largest "
                    "batch whose p95 per image still falls)")


@dataclass(frozen=True)
class BenchmarkSettings:
    model: str
    endpoint: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 8000))
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    concurrency: tuple[int, int, int] = (1, 4, 1)  # DEFAULT_CONCURRENCY
    protocol: str = "http"
    shared_memory: str = "none"
    measurement_interval_ms: int = 5000
    stability_percentage: int = 10
    latency_budget_ms: float | None = None
    out_dir: Path = Path("reports")
    metrics_url: str | None = None
    replicas: tuple[str, ...] = ()  # --discover: every address the name resolved to (the first is measured)
    discovered_from: str = ""  # --discover's NAME:PORT

    @classmethod
    def create(cls, *, batch_sizes: str, concurrency: str, out_dir: Path | None, model: str, url: str = "",
               discover: str | None = None, discover_dns: str | None = None, **kw: Any) -> BenchmarkSettings:
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
        if discover_dns and not discover:
            raise BadInput("--discover-dns goes with --discover NAME:PORT")
        if discover:
            endpoint, kw["replicas"], kw["discovered_from"] = _one_replica(discover, url, discover_dns,
                                                                          kw.get("protocol", "http"))
        else:
            [endpoint] = parse_endpoints([url] if url else [], kw.get("protocol", "http"))
        out = out_dir or Path("reports") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        _check_out_dir(out)
        s = cls(model=model, endpoint=endpoint, batch_sizes=tuple(sorted(set(batches))), concurrency=(start, end, step),
                out_dir=out, **kw)
        if s.shared_memory not in ("none", "system", "cuda"):
            raise BadInput(f"--shared-memory {s.shared_memory!r}: choose none, system or cuda")
        if s.shared_memory == "cuda" and not s.endpoint.local:
            raise BadInput(f"--shared-memory cuda needs the server on this host (CUDA IPC does not cross machines), "
                           f"not {s.url}: use --shared-memory none for a remote server")
        if s.measurement_interval_ms < 100:
            raise BadInput("--measurement-interval is in milliseconds and must be at least 100")
        if s.latency_budget_ms is not None and s.latency_budget_ms <= 0:
            raise BadInput("--latency-budget-ms must be positive")
        return s

    @property
    def url(self) -> str:
        return self.endpoint.url

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


def _one_replica(discover: str, url: str, dns: str | None, protocol: str) -> tuple[Endpoint, tuple[str, ...], str]:
    """--discover for a benchmark: resolved once, the first address measured. perf_analyzer drives one server, and
    what `deploy plan` needs is one replica's capacity (the replicas of a Deployment are alike); measuring each in
    turn would multiply a sweep of minutes by the replicas for the same figure. The others are named in the report."""
    from tritonctl.inference.discovery import first_endpoints, parse_discover

    if url:
        raise BadInput("benchmark measures one server: give --url or --discover, not both")
    target = parse_discover(discover, protocol, dns)
    found = first_endpoints(target)
    return found[0], tuple(e.url for e in found), str(target)


def _check_out_dir(out: Path) -> None:
    """The report folder: refused when it, or a folder above it, is a file (mkdir would fail half-way, or a file that
    holds the user's data would be in the way)."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise BadInput(f"--out-dir {out}: {path} is a file, not a folder; choose another --out-dir")


@dataclass
class Row:
    batch: int
    concurrency: int
    infer_per_s: float
    values: dict[str, float | None] = field(default_factory=dict)
    per_gpu: dict[str, dict[str, float]] = field(default_factory=dict)  # GPU column -> {GPU uuid: value}

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
    from tritonctl.inference.client import served_model
    from tritonctl.stream.detect import wrong_protocol_port

    try:
        _, config = served_model(settings.protocol, settings.endpoint, settings.model)
    except ServerError as exc:
        if wrong := wrong_protocol_port(settings.protocol, settings.endpoint, settings.model, exc):
            raise wrong from exc
        raise
    return int(config.get("max_batch_size", 0))


def metrics_endpoint(endpoint: Endpoint, given: str | None) -> str | None:
    """Triton's metrics URL for --collect-metrics: the one given, the one `serve` recorded for this server, or the
    default layout (HTTP port + 2); None when none of them answers (GPU columns then stay empty)."""
    import urllib.request

    from tritonctl.serving.records import records

    recorded = [r.metrics_url for r in records() if r.url == endpoint.url and r.metrics_url]
    default = f"{endpoint.with_port(endpoint.port + 2).url}/metrics" if endpoint.port < 65534 else None
    tried = [given.removeprefix("http://")] if given else [*recorded, *([default] if default else [])]
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
        values: dict[str, float | None] = {}
        for col, key in COLUMNS.items():
            v = _number(raw.get(col))
            values[key] = v / 1000 if v is not None and col in US_COLUMNS else v
        gpus = _gpu_values(raw, values)
        rows.append(Row(batch, int(raw["Concurrency"]), float(values["infer_per_s"] or 0.0), values, gpus))
    return rows


def _gpu_values(raw: dict[str, str], values: dict[str, float | None]) -> dict[str, dict[str, float]]:
    """The GPU columns: per GPU as perf_analyzer wrote them, and their mean or sum (GPU_COLUMNS) into `values`."""
    gpus: dict[str, dict[str, float]] = {}
    for col, (key, how) in GPU_COLUMNS.items():
        each = per_gpu(raw.get(col))
        values[key] = (sum(each.values()) / (len(each) if how == "mean" else 1)) if each else None
        if each:
            gpus[key] = each
    return gpus


def check_tool(s: BenchmarkSettings, tool: PerfTool | None) -> None:
    """What the chosen perf_analyzer needs for these settings, checked before the server is asked anything."""
    if s.shared_memory == "cuda" and tool is not None:
        require_cuda(tool)


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
    s = dataclasses.replace(s, metrics_url=metrics_endpoint(s.endpoint, s.metrics_url))
    limit = max(max_batch, 1)
    runnable = tuple(b for b in s.batch_sizes if b <= limit)
    if not runnable:
        raise BadInput(f"every --batch-sizes value is above the max batch of model {s.model!r} ({max_batch})")
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
        code, lines = run(tool, s.perf_args(b, name), s.out_dir, lambda line, b=b: on_line(b, line),  # type: ignore[misc]
                          s.shared_memory)
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


def concurrency_range(s: BenchmarkSettings) -> str:
    """`concurrency 1..4` (`step 2`), or `concurrency 1`: what each batch size is measured over."""
    start, end, step = s.concurrency
    return f"concurrency {start}" if start == end else f"concurrency {start}..{end}" + (f" step {step}" if step > 1 else "")


def explain(result: BenchmarkResult, s: BenchmarkSettings) -> list[str]:
    """What was searched, and what the marks in the table mean."""
    runs = f"{len(result.rows)} runs: batch sizes {sorted({r.batch for r in result.rows})} x {concurrency_range(s)}"
    return [runs, BEST_MEANS, SWEET_SPOT_MEANS]


def write_summary(result: BenchmarkResult, s: BenchmarkSettings) -> list[Path]:
    keys = [*dict.fromkeys(COLUMNS.values()), *(key for key, _ in GPU_COLUMNS.values())]
    csv_path = result.out_dir / "summary.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["batch", "concurrency", *keys])
        for r in result.rows:
            writer.writerow([r.batch, r.concurrency, *("" if r.values.get(k) is None else r.values[k] for k in keys)])
    json_path = result.out_dir / "summary.json"
    json_path.write_text(json.dumps({
        "model": s.model, "url": s.url, "protocol": s.protocol, "shared_memory": s.shared_memory,
        **({"discover": s.discovered_from, "replicas": list(s.replicas)} if s.replicas else {}),
        "latency_budget_ms": s.latency_budget_ms, "max_batch": result.max_batch, "skipped_batch_sizes": result.skipped,
        "gpu_columns": {key: how for key, how in GPU_COLUMNS.values()},
        "rows": [{"batch": r.batch, "concurrency": r.concurrency, **r.values, "per_gpu": r.per_gpu} for r in result.rows],
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


@dataclass(frozen=True)
class Applied:
    diff: str  # unified diff of config.pbtxt ("" when it already held these settings)
    rules: list[str]  # how each written value was derived from the best setting


QUEUE_DELAY_US = (100, 100_000)  # the queue delay written is kept within these bounds


def batching_rules(best: Row, max_batch: int) -> tuple[list[int], int, list[str]]:
    """Preferred batch sizes and queue delay derived from the best measured setting, with the rule behind each."""
    preferred = sorted({min(max_batch, best.batch), min(max_batch, best.batch * best.concurrency)})
    queued_ms = best.values.get("server_queue_ms")
    lo, hi = QUEUE_DELAY_US
    queue_us = int(min(hi, max(lo, (queued_ms or 0.1) * 1000)))
    measured = f"{queued_ms:.3f} ms measured" if queued_ms is not None else "not measured"
    return preferred, queue_us, [
        f"preferred_batch_size {preferred}: the best setting's batch {best.batch}, and batch x concurrency = "
        f"{best.batch * best.concurrency} (what its {best.concurrency} requests in flight bring at once), each at most "
        f"the max batch {max_batch}",
        f"max_queue_delay_microseconds {queue_us}: the server queue time per request at the best setting ({measured}), "
        f"kept within {lo}..{hi} us: waiting that long to fill a preferred batch costs about what requests already spent queued",
    ]


def apply_best(result: BenchmarkResult, s: BenchmarkSettings, config_path: Path, dry_run: bool) -> Applied:
    """--apply: the best setting's batching into config.pbtxt; a budget nothing fits changes nothing and fails."""
    if result.best is None:
        lowest = min(result.rows, key=lambda r: r.p95_ms, default=None)
        if lowest is None or s.latency_budget_ms is None:
            raise ToleranceExceeded(f"no measurement to apply: nothing applied to {config_path}")
        raise ToleranceExceeded(f"no setting fits the {s.latency_budget_ms:g} ms p95 budget (lowest p95 {lowest.p95_ms:.2f} "
                                f"ms, batch {lowest.batch}, concurrency {lowest.concurrency}): nothing applied to "
                                f"{config_path}; raise --latency-budget-ms or try smaller batch sizes")
    return apply_to_config(config_path, result.best, result.max_batch, dry_run)


def apply_to_config(config_path: Path, best: Row, max_batch: int, dry_run: bool) -> Applied:
    """Write the best setting's batching into config.pbtxt (through the same config model as `tritonctl config`).
    Only dynamic_batching's preferred sizes and queue delay change; see batching_rules for how."""
    import difflib

    from tritonctl.model.repository import config_text, parse_config

    if not config_path.is_file():
        raise BadInput(f"{config_path} does not exist: pass --repo, the model repository the server loads")
    before = config_path.read_text()
    cfg = parse_config(before)
    preferred, queue_us, rules = batching_rules(best, max_batch)
    cfg.dynamic_batching.ClearField("preferred_batch_size")
    cfg.dynamic_batching.preferred_batch_size.extend(preferred)
    cfg.dynamic_batching.max_queue_delay_microseconds = queue_us
    after = config_text(cfg)
    diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), str(config_path), str(config_path)))
    if not dry_run:
        from tritonctl.core.files import write_text

        write_text(config_path, after, streams=False)
    return Applied(diff, rules)
