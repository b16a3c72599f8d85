"""What a running Triton says about itself: health, version, extensions, and each model's state and statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tritonctl.errors import ServerError


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


def _avg_ms(duration: dict[str, Any], count: int) -> float | None:
    ns = int(duration.get("ns", 0))
    return ns / count / 1e6 if count else None


def query(url: str, timeout_s: float = 5.0) -> ServerStatus:
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    try:
        client = http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        live = client.is_server_live()
    except Exception as exc:
        raise ServerError(f"no Triton server answers at {url} ({exc.__class__.__name__}): start one with "
                          "`tritonctl serve` or pass --url") from exc
    try:
        meta = client.get_server_metadata()
        status = ServerStatus(url, live, client.is_server_ready(), meta.get("version", ""), meta.get("extensions", []))
        for entry in client.get_model_repository_index():
            status.models.append(_model_status(client, entry))
        return status
    except InferenceServerException as exc:
        raise ServerError(f"Triton at {url} answered with an error: {exc.message()}") from exc
    finally:
        client.close()


def _model_status(client: Any, entry: dict[str, Any]) -> ModelStatus:
    name, version = entry["name"], entry.get("version", "")
    model = ModelStatus(name, version, entry.get("state", "UNKNOWN"), reason=entry.get("reason", ""))
    if model.state != "READY":
        return model
    config = client.get_model_config(name)
    model.platform = config.get("platform") or config.get("backend", "")
    model.max_batch = int(config.get("max_batch_size", 0))
    for stats in client.get_inference_statistics(name).get("model_stats", []):
        inf = stats.get("inference_stats", {})
        count = int(inf.get("success", {}).get("count", 0))
        model.inference_count += int(stats.get("inference_count", 0))
        model.execution_count += int(stats.get("execution_count", 0))
        model.avg_queue_ms = _avg_ms(inf.get("queue", {}), count)
        model.avg_compute_ms = _avg_ms(inf.get("compute_infer", {}), count)
    return model


def render(status: ServerStatus) -> None:
    from rich.table import Table

    from tritonctl.ui import console

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
