"""Talking to Triton for `detect`: the model's signature from the server, a pool of endpoints (least outstanding
requests, failed ones taken out and retried later), and inference slots whose tensors live in system shared memory
when the server is on this host (registered once per server, re-registered when a server comes back)."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritonctl.errors import BadInput, ModelError, ServerError
from tritonctl.metadata import TRITON_TO_NUMPY
from tritonctl.postprocess import head_layout

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def protocol_module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise BadInput(f"--protocol {protocol!r}: choose http or grpc")
    return module


def make_client(protocol: str, url: str, timeout_s: float = 30.0) -> Any:
    module = protocol_module(protocol)
    if protocol == "http":
        return module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
    return module.InferenceServerClient(url)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_name: str
    input_dtype: str
    height: int
    width: int
    output_name: str
    output_shape: tuple[int, ...]  # without the batch axis
    output_dtype: str
    max_batch: int
    names: dict[int, str]
    layout: str

    @property
    def input_np(self) -> np.dtype:
        return np.dtype(TRITON_TO_NUMPY[self.input_dtype])

    @property
    def output_np(self) -> np.dtype:
        return np.dtype(TRITON_TO_NUMPY[self.output_dtype])


def _as_dict(obj: Any) -> dict[str, Any]:
    """HTTP answers dicts, gRPC protobuf messages: one shape for both."""
    if isinstance(obj, dict):
        return obj
    from google.protobuf.json_format import MessageToDict

    return dict(MessageToDict(obj, preserving_proto_field_name=True))


def served_model(protocol: str, url: str, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ready model's metadata and config from the server; one clear error when the server or the model is not there."""
    from tritonclient.utils import InferenceServerException

    client = make_client(protocol, url, timeout_s=10)
    try:
        try:
            if not client.is_server_live():
                raise ServerError(f"Triton at {url} is not live")
        except InferenceServerException as exc:
            raise ServerError(f"no Triton server answers at {url} ({exc.message()}): start one with `tritonctl serve`") \
                from exc
        except TRANSPORT_ERRORS as exc:
            raise ServerError(f"no Triton server answers at {url} ({type(exc).__name__}): start one with "
                              "`tritonctl serve`") from exc
        if not client.is_model_ready(model):
            index = [_as_dict(m) for m in _index(client)]
            ready = sorted(m["name"] for m in index if m.get("state") == "READY")
            raise ModelError(f"model {model!r} is not ready on {url} (ready: {', '.join(ready) or 'none'}): "
                             "pass --model with one of those")
        meta = _as_dict(client.get_model_metadata(model))
        config = _as_dict(client.get_model_config(model))
    finally:
        client.close()
    return meta, config.get("config", config)


def fetch_model_info(protocol: str, url: str, model: str) -> ModelInfo:
    """What `detect` needs to know, asked of the server, so nothing is typed by hand."""
    meta, config = served_model(protocol, url, model)
    return _model_info(model, meta, config)


def _index(client: Any) -> list[Any]:
    index = client.get_model_repository_index()
    return list(index if isinstance(index, list) else getattr(index, "models", []))


def _model_info(model: str, meta: dict[str, Any], config: dict[str, Any]) -> ModelInfo:
    max_batch = int(config.get("max_batch_size", 0))
    inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise ModelError(f"model {model!r} takes {len(inputs)} inputs {[i.get('shape') for i in inputs]}: "
                         "detect needs one image input [B,3,H,W]")
    inp = inputs[0]
    shape = [int(d) for d in inp["shape"]]
    extra = json.loads(config.get("parameters", {}).get("tritonctl", {}).get("string_value", "{}") or "{}")
    names = {int(k): v for k, v in (extra.get("names") or {}).items()}
    if not outputs:
        raise ModelError(f"model {model!r} has no output")
    out = outputs[0]
    out_shape = tuple(int(d) for d in out["shape"])
    layout = head_layout(out_shape, len(names) or None)
    if -1 in shape[2:]:
        size = extra.get("imgsz") or [640, 640]
        shape[2:] = [int(size[0]), int(size[1])]
    return ModelInfo(model, inp["name"], inp["datatype"], shape[2], shape[3], out["name"], out_shape[1:],
                     out["datatype"], max_batch, names or {}, layout)


# ---------------------------------------------------------------- endpoints


@dataclass
class Endpoint:
    url: str
    local: bool
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0
    generation: int = 0  # bumped each time it comes back: shared memory must be registered again
    requests: int = 0

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until


class EndpointPool:
    """Spreads requests over healthy endpoints by least outstanding requests; a failed endpoint sits out a back-off."""

    def __init__(self, urls: list[str], backoff_s: float = 0.5, max_backoff_s: float = 5.0) -> None:
        self.endpoints = [Endpoint(u, u.rsplit(":", 1)[0] in LOCAL_HOSTS) for u in urls]
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._lock = threading.Lock()

    def acquire(self) -> Endpoint | None:
        with self._lock:
            healthy = [e for e in self.endpoints if e.healthy]
            if not healthy:
                return None
            ep = min(healthy, key=lambda e: (e.outstanding, e.requests))
            ep.outstanding += 1
            ep.requests += 1
            return ep

    def release(self, ep: Endpoint, ok: bool) -> None:
        with self._lock:
            ep.outstanding -= 1
            if ok:
                if ep.failures:
                    ep.failures = 0
                return
            if ep.healthy:  # the first failure of an outage: take it out
                ep.failures += 1
                ep.down_until = time.monotonic() + min(self.backoff_s * 2 ** (ep.failures - 1), self.max_backoff_s)
                ep.generation += 1

    def next_retry_s(self) -> float:
        with self._lock:
            return max(0.0, min(e.down_until for e in self.endpoints) - time.monotonic())


# ---------------------------------------------------------------- inference slots

_region_ids = itertools.count()


class TransientError(Exception):
    """The endpoint failed (connection refused, reset, timeout): another endpoint, or a retry, may succeed."""


@dataclass
class _Shm:
    name: str
    key: str
    size: int
    handle: Any
    array: np.ndarray


@dataclass
class InferSlot:
    """One request in flight: its input batch buffer and output buffer, in shared memory when possible."""

    info: ModelInfo
    batch: int
    protocol: str
    use_shm: bool
    inputs: np.ndarray = field(init=False)
    _in: _Shm | None = field(init=False, default=None)
    _out: _Shm | None = field(init=False, default=None)
    _clients: dict[str, Any] = field(init=False, default_factory=dict)
    _registered: dict[str, int] = field(init=False, default_factory=dict)
    bytes_sent: int = 0

    def __post_init__(self) -> None:
        in_shape = (self.batch, 3, self.info.height, self.info.width)
        out_shape = (self.batch, *self.info.output_shape)
        if self.use_shm:
            self._in = _create_region("in", in_shape, self.info.input_np)
            if -1 not in self.info.output_shape:
                self._out = _create_region("out", out_shape, self.info.output_np)
            self.inputs = self._in.array
        else:
            self.inputs = np.empty(in_shape, self.info.input_np)

    def _client(self, ep: Endpoint) -> Any:
        client = self._clients.get(ep.url)
        if client is None:
            client = self._clients[ep.url] = make_client(self.protocol, ep.url)
        if ep.local and self._in is not None and self._registered.get(ep.url) != ep.generation:
            for region in (self._in, self._out):
                if region is not None:
                    _register(client, region)
            self._registered[ep.url] = ep.generation
        return client

    def infer(self, ep: Endpoint, n: int) -> np.ndarray:
        """Run rows [:n] of `inputs`; returns the output rows (a view of shared memory when it is used)."""
        from tritonclient.utils import InferenceServerException

        module = protocol_module(self.protocol)
        info = self.info
        try:
            client = self._client(ep)
            inp = module.InferInput(info.input_name, [n, 3, info.height, info.width], info.input_dtype)
            nbytes = n * self.inputs[0].nbytes
            shm_ok = self._in is not None and ep.local
            if shm_ok:
                inp.set_shared_memory(self._in.name, nbytes)  # type: ignore[union-attr]
            else:
                inp.set_data_from_numpy(self.inputs[:n])
                self.bytes_sent += nbytes
            out = module.InferRequestedOutput(info.output_name) if self.protocol == "grpc" else \
                module.InferRequestedOutput(info.output_name, binary_data=True)
            if shm_ok and self._out is not None:
                out.set_shared_memory(self._out.name, n * self._out.array[0].nbytes)
            result = client.infer(info.name, [inp], outputs=[out])
        except InferenceServerException as exc:
            message = exc.message() or ""
            if _transient(message, exc.status()):
                self._registered.pop(ep.url, None)
                raise TransientError(message) from exc
            raise ModelError(f"Triton refused the request on {ep.url}: {message}") from exc
        except TRANSPORT_ERRORS as exc:
            self._clients.pop(ep.url, None)
            self._registered.pop(ep.url, None)
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if shm_ok and self._out is not None:
            return self._out.array[:n]
        array = result.as_numpy(info.output_name)
        if array is None:
            raise ModelError(f"Triton returned no {info.output_name!r} for model {info.name!r}")
        return np.asarray(array)

    def close(self) -> list[str]:
        """Unregister and destroy the regions; returns the problems met (for the summary, not swallowed)."""
        import tritonclient.utils.shared_memory as shm

        problems = []
        for url, client in self._clients.items():
            for region in (self._in, self._out):
                if region is not None and url in self._registered:
                    try:
                        client.unregister_system_shared_memory(region.name)
                    except Exception as exc:
                        problems.append(f"unregister {region.name} on {url}: {type(exc).__name__}")
            try:
                client.close()
            except Exception as exc:
                problems.append(f"close client {url}: {type(exc).__name__}")
        for region in (self._in, self._out):
            if region is not None:
                try:
                    shm.destroy_shared_memory_region(region.handle)
                except Exception as exc:
                    problems.append(f"destroy {region.name}: {type(exc).__name__}")
        self._clients.clear()
        return problems


# Errors of the connection itself (the server died or restarted, the network dropped): worth another endpoint or a
# retry. geventhttpclient's HTTPConnectionClosed/HTTPParseError are http.client.HTTPExceptions, not OSErrors.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)


def _register(client: Any, region: _Shm) -> None:
    """Register a region; a server that still holds it from before an outage gets it replaced."""
    from tritonclient.utils import InferenceServerException

    try:
        client.register_system_shared_memory(region.name, region.key, region.size)
    except InferenceServerException:
        client.unregister_system_shared_memory(region.name)
        client.register_system_shared_memory(region.name, region.key, region.size)


def _transient(message: str, status: str | None) -> bool:
    text = message.lower()
    return any(s in text for s in ("connect", "unavailable", "reset", "timed out", "timeout", "shared memory",
                                   "broken pipe", "socket", "eof")) or status in ("StatusCode.UNAVAILABLE",)


def _create_region(role: str, shape: tuple[int, ...], dtype: np.dtype) -> _Shm:
    import tritonclient.utils.shared_memory as shm

    n = next(_region_ids)
    name = f"tritonctl_{os.getpid()}_{role}{n}"
    size = int(np.prod(shape)) * dtype.itemsize
    handle = shm.create_shared_memory_region(name, f"/{name}", size)
    return _Shm(name, f"/{name}", size, handle, shm.get_contents_as_numpy(handle, dtype, shape))


def server_stats(protocol: str, url: str, model: str) -> dict[str, float]:
    """Cumulative success count, queue and compute nanoseconds of a model (for before/after deltas)."""
    client = make_client(protocol, url, timeout_s=5)
    try:
        stats = _as_dict(client.get_inference_statistics(model))
    finally:
        client.close()
    total = {"count": 0.0, "queue_ns": 0.0, "compute_ns": 0.0, "executions": 0.0}
    for s in stats.get("model_stats", []):
        inf = s.get("inference_stats", {})
        total["count"] += float(inf.get("success", {}).get("count", 0))
        total["queue_ns"] += float(inf.get("queue", {}).get("ns", 0))
        total["compute_ns"] += float(inf.get("compute_infer", {}).get("ns", 0))
        total["executions"] += float(s.get("execution_count", 0))
    return total
