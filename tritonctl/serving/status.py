"""What a running Triton says about itself (health, version, extensions, each model's state and statistics), as data
and as a table. `client.server_status` asks the server; this module only shapes and renders the answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonctl.serving.settings import ServeSettings


@dataclass
class ModelStatus:
    name: str
    version: str
    state: str
    platform: str = ""
    max_batch: int | None = None
    inference_count: int = 0
    execution_count: int = 0
    avg_queue_ms: float | None = None
    avg_compute_ms: float | None = None
    reason: str = ""


@dataclass
class ServerStatus:
    url: str
    live: bool
    ready: bool
    version: str = ""
    extensions: list[str] = field(default_factory=list)
    models: list[ModelStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StatsSummary:
    inference_count: int = 0
    execution_count: int = 0
    avg_queue_ms: float | None = None
    avg_compute_ms: float | None = None


def stats_totals(statistics: dict[str, Any], version: str = "") -> dict[str, int]:
    """Triton's statistics answer (`model_stats`, one entry per model version) summed over versions (or one version):
    inferences, executions, successful requests, and their total queue and compute nanoseconds."""
    totals = dict.fromkeys(("inferences", "executions", "count", "queue_ns", "compute_ns"), 0)
    for stats in statistics.get("model_stats", []):
        if version and str(stats.get("version", "")) not in ("", version):
            continue
        inf = stats.get("inference_stats", {})
        totals["inferences"] += int(stats.get("inference_count", 0))
        totals["executions"] += int(stats.get("execution_count", 0))
        totals["count"] += int(inf.get("success", {}).get("count", 0))
        totals["queue_ns"] += int(inf.get("queue", {}).get("ns", 0))
        totals["compute_ns"] += int(inf.get("compute_infer", {}).get("ns", 0))
    return totals


def summarize_stats(statistics: dict[str, Any], version: str = "") -> StatsSummary:
    """One row for `status`: counts summed, and the average queue and compute times weighted by each version's
    successful requests (Triton reports total ns)."""
    t = stats_totals(statistics, version)
    if not t["count"]:
        return StatsSummary(t["inferences"], t["executions"])
    return StatsSummary(t["inferences"], t["executions"], t["queue_ns"] / t["count"] / 1e6, t["compute_ns"] / t["count"] / 1e6)


def render(status: ServerStatus) -> None:
    from rich.table import Table

    from tritonctl.core.ui import console

    con = console()
    health = "[green]ready[/]" if status.ready else ("[yellow]live, not ready[/]" if status.live else "[red]down[/]")
    con.print(f"Triton {status.version} at {status.url}: {health}")
    if status.extensions:
        con.print(f"[dim]extensions: {', '.join(status.extensions)}[/]")
    table = Table("model", "version", "state", "platform/backend", "max batch", "inferences", "executions",
                  "avg queue ms", "avg compute ms")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for m in status.models:
        state = f"[green]{m.state}[/]" if m.state == "READY" else f"[red]{m.state}[/] {m.reason}"
        table.add_row(m.name, m.version or "-", state, m.platform or "-", "-" if m.max_batch is None else str(m.max_batch),
                      str(m.inference_count), str(m.execution_count), fmt(m.avg_queue_ms), fmt(m.avg_compute_ms))
    con.print(table)


def render_ready(s: ServeSettings, log_file: Path | None, seconds: float, status: ServerStatus) -> None:
    """What `serve` says once its server is ready: where to reach it, its model table, and how to stop it."""
    from rich.markup import escape

    from tritonctl.core.ui import console

    con = console()
    con.print(f"[green]ready[/] in {seconds:.1f} s: http {s.url}, grpc {s.grpc_url}, metrics {s.metrics_url}"
              + (f", log {log_file}" if log_file else ""))
    render(status)
    if s.detach:  # a bare `stop` stops the servers of this folder's default repository only
        how = "tritonctl stop" if s.repo.resolve() == Path("model_repository").resolve() else f"tritonctl stop --url {s.url}"
        con.print(f"stop it with [bold]{escape(how)}[/]")
