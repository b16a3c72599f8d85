"""What tritonctl asks a Triton server, through tritonclient: a served model's description (any model's signature,
or the detector's `ModelInfo`), its statistics, and the server's status.

The inference package, stage by stage:
- calls.py: tritonclient clients, and `triton_call`, which turns every tritonclient failure into ours (classified);
- signature.py: what a model takes and gives (`ModelSignature`), the detector's view on top of it (`ModelInfo`);
- endpoints.py: the pool of endpoints (least outstanding requests, failed ones sit out a back-off);
- discovery.py: --discover, the endpoints a name resolves to, kept up to date;
- regions.py: system shared-memory regions; slots.py: one request in flight (`InferSlot`), for any signature;
- transport.py: the hand-written HTTP/1.1 exchange of shared-memory requests (TRITONCTL_TRANSPORT=tritonclient
  turns it off);
- fleet.py: all of the above for one run, with the one failover loop (`Fleet.infer`).
The names other packages have long imported from here are imported from those modules below.
"""

from __future__ import annotations

from typing import Any

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import ModelError, ServerError, TritonctlError
from tritonctl.inference.calls import (
    RegionLost,
    SharedMemoryError,
    TransientError,
    as_dict,
    close_client,
    make_client,
    protocol_module,
    triton_call,
)
from tritonctl.inference.endpoints import EndpointPool, Upstream
from tritonctl.inference.regions import REGION_PREFIX, create_regions, destroy_regions
from tritonctl.inference.signature import ModelInfo, ModelSignature, TensorSpec, model_info, read_signature
from tritonctl.inference.slots import InferSlot
from tritonctl.serving.status import ModelStatus, ServerStatus, stats_totals, summarize_stats

__all__ = ["REGION_PREFIX", "EndpointPool", "InferSlot", "ModelInfo", "ModelSignature", "RegionLost",
           "SharedMemoryError", "TensorSpec", "TransientError", "Upstream", "close_client", "create_regions",
           "destroy_regions", "fetch_model_info", "fetch_signature", "make_client", "protocol_module", "served_model",
           "server_stats", "server_status", "triton_call"]


def served_model(protocol: str, endpoint: Endpoint, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ready model's metadata and config from the server; one clear error when the server or the model is not there."""
    url = endpoint.url
    try:
        client = make_client(protocol, endpoint, timeout_s=10)
        with triton_call(url, "answer whether it is live"):
            live = client.is_server_live()
    except TritonctlError as exc:  # anything but a live answer means no usable Triton there
        raise ServerError(f"no Triton server answers at {url} ({exc}): start one with `tritonctl serve`") from exc
    try:
        if not live:
            raise ServerError(f"Triton at {url} is not live")
        with triton_call(url, f"describe model {model!r}"):
            if not client.is_model_ready(model):
                index = [as_dict(m) for m in _index(client)]
                ready = sorted(m["name"] for m in index if m.get("state") == "READY")
                raise ModelError(f"model {model!r} is not ready on {url} (ready: {', '.join(ready) or 'none'}): "
                                 "pass --model with one of those")
            meta = as_dict(client.get_model_metadata(model))
            config = as_dict(client.get_model_config(model))
    finally:
        close_client(client, url)
    return meta, config.get("config", config)


def fetch_model_info(protocol: str, endpoint: Endpoint, model: str) -> ModelInfo:
    """What `detect` needs to know, asked of the server, so nothing is typed by hand."""
    meta, config = served_model(protocol, endpoint, model)
    return model_info(model, meta, config)


def fetch_signature(protocol: str, endpoint: Endpoint, model: str) -> ModelSignature:
    """Any model's tensors and max batch, asked of the server."""
    meta, config = served_model(protocol, endpoint, model)
    return read_signature(model, meta, config)


def _index(client: Any) -> list[Any]:
    index = client.get_model_repository_index()
    return list(index if isinstance(index, list) else getattr(index, "models", []))


def server_stats(protocol: str, endpoint: Endpoint, model: str) -> dict[str, float]:
    """Cumulative success count, queue and compute nanoseconds of a model (for before/after deltas)."""
    client = make_client(protocol, endpoint, timeout_s=5)
    try:
        with triton_call(endpoint.url, f"report statistics of {model!r}"):
            stats = as_dict(client.get_inference_statistics(model))
    finally:
        close_client(client, endpoint.url)
    totals = stats_totals(stats)
    return {key: float(totals[key]) for key in ("count", "queue_ns", "compute_ns", "executions")}


def server_status(endpoint: Endpoint, timeout_s: float = 5.0) -> ServerStatus:
    """Health, version, extensions and every model's state, config and statistics (for `status` and `serve`)."""
    url = endpoint.url
    try:
        client = make_client("http", endpoint, timeout_s)
        with triton_call(url, "answer whether it is live"):
            live = client.is_server_live()
    except TritonctlError as exc:
        raise ServerError(f"no Triton server answers at {url} ({exc}): start one with `tritonctl serve` or pass --url") \
            from exc
    try:
        with triton_call(url, "describe itself"):
            meta = client.get_server_metadata()
            status = ServerStatus(url, live, client.is_server_ready(), meta.get("version", ""), meta.get("extensions", []))
            status.models = [_model_status(client, entry) for entry in client.get_model_repository_index()]
        return status
    except ModelError as exc:  # the server answered, with an error: about the server, not a model of ours
        raise ServerError(f"Triton at {url} answered with an error: {exc}") from exc
    finally:
        close_client(client, url)


def _model_status(client: Any, entry: dict[str, Any]) -> ModelStatus:
    name, version = entry["name"], entry.get("version", "")
    model = ModelStatus(name, version, entry.get("state", "UNKNOWN"), reason=entry.get("reason", ""))
    if model.state != "READY":
        return model
    config = client.get_model_config(name)
    model.platform = config.get("platform") or config.get("backend", "")
    model.max_batch = int(config.get("max_batch_size", 0))
    summary = summarize_stats(client.get_inference_statistics(name, version), version)
    model.inference_count, model.execution_count = summary.inference_count, summary.execution_count
    model.avg_queue_ms, model.avg_compute_ms = summary.avg_queue_ms, summary.avg_compute_ms
    return model
