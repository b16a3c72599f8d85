"""The one module that talks to Triton (through tritonclient): the model's signature, a pool of endpoints (least
outstanding requests, failed ones taken out and retried later), inference slots whose tensors live in system shared
memory when the server is on this host, and `triton_call`, which turns every tritonclient failure into ours.

How a failure is classified (by status code and exception type; the message only tells a lost region from an unknown
model, both "not found"):
- the connection itself failed (refused, reset, closed, socket or gevent timeout), HTTP 502/503/504, gRPC UNAVAILABLE,
  DEADLINE_EXCEEDED, CANCELLED, ABORTED: `TransientError`, worth another endpoint or a retry after back-off;
- HTTP 404 / gRPC NOT_FOUND for one of our shared-memory regions: `RegionLost` (the server restarted between two
  requests): register again and retry once;
- any other answer from the server (HTTP 400, gRPC INVALID_ARGUMENT, 500, ...): `ModelError`, the request itself is wrong;
- tritonclient refusing before sending anything: `ServerError`; shared memory this host cannot create: `SharedMemoryError`.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
from tritonclient.utils import InferenceServerException
from tritonclient.utils.shared_memory import SharedMemoryException

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import BadInput, ModelError, ServerError, TritonctlError
from tritonctl.model.metadata import TRITON_TO_NUMPY
from tritonctl.serving.status import ModelStatus, ServerStatus, stats_totals, summarize_stats
from tritonctl.vision.postprocess import head_layout


class TransientError(ServerError):
    """The endpoint failed (connection refused or reset, timeout, unavailable): another endpoint, or a retry, may succeed."""


class RegionLost(TransientError):
    """The server does not know one of our shared-memory regions (it restarted): register them again, then retry once."""


class SharedMemoryError(TritonctlError):
    """This host cannot create or release a system shared-memory region (e.g. /dev/shm is full)."""


# Status codes as tritonclient reports them: HTTP as text, gRPC as str(grpc.StatusCode.X).
_TRANSIENT_STATUS = frozenset({"502", "503", "504", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED",
                               "StatusCode.CANCELLED", "StatusCode.ABORTED"})
_NOT_FOUND_STATUS = frozenset({"404", "StatusCode.NOT_FOUND"})


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Failures of the connection itself. geventhttpclient's HTTPConnectionClosed/HTTPParseError are
    http.client.HTTPExceptions, not OSErrors; gevent's Timeout derives from BaseException; a bare grpc.RpcError can
    escape tritonclient's own wrapping. Only modules already loaded can have raised, so nothing is imported here."""
    errors: list[type[BaseException]] = [OSError, http.client.HTTPException]
    if (gevent := sys.modules.get("gevent")) is not None:
        errors.append(gevent.Timeout)
    if (grpc := sys.modules.get("grpc")) is not None:
        errors.append(grpc.RpcError)
    return tuple(errors)


def _classify(exc: InferenceServerException, what: str, url: str) -> TritonctlError:
    status, message = str(exc.status() or ""), exc.message() or str(exc)
    if status in _NOT_FOUND_STATUS and "shared memory region" in message:
        return RegionLost(message)
    if status in _TRANSIENT_STATUS:
        return TransientError(message)
    if not status:  # raised by tritonclient itself: nothing reached the server
        return ServerError(f"cannot {what} on {url}: {message}")
    return ModelError(f"Triton at {url} refused to {what} ({status}): {message}")


@contextmanager
def triton_call(url: str, what: str) -> Iterator[None]:
    """Run tritonclient calls inside this: their failures come out as our exceptions, classified as above.
    `what` completes "refused to ..." in the message, e.g. "infer with model 'yolo'"."""
    try:
        yield
    except InferenceServerException as exc:
        raise _classify(exc, what, url) from exc
    except SharedMemoryException as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise SharedMemoryError(f"cannot {what}: {exc}{cause}; free space in /dev/shm or pass --shm none") from exc
    except _transport_errors() as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    except ValueError as exc:  # a body that is not Triton's JSON (e.g. the metrics port): not a Triton API
        raise ServerError(f"{url} answered, but not with Triton's API ({type(exc).__name__}): is it Triton's HTTP "
                          "(default 8000) or gRPC (8001) port?") from exc


def protocol_module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise BadInput(f"--protocol {protocol!r}: choose http or grpc")
    return module


def make_client(protocol: str, endpoint: Endpoint, timeout_s: float = 30.0) -> Any:
    """A tritonclient client for one endpoint.

    tritonclient's __del__ calls close(), which reads attributes a failed constructor never set: an "Exception ignored
    in __del__ ... AttributeError: '_closed'" traceback at garbage collection. Such an object gets a no-op close."""
    cls = protocol_module(protocol).InferenceServerClient
    client = cls.__new__(cls)
    kwargs = {"connection_timeout": timeout_s, "network_timeout": timeout_s} if protocol == "http" else {}
    try:
        with triton_call(endpoint.url, "connect"):
            try:
                client.__init__(endpoint.url, **kwargs)
            except ValueError as exc:  # the URL parser refused it
                raise BadInput(f"cannot use Triton endpoint {endpoint.url}: {exc}") from exc
    except BaseException:
        client.close = lambda: None
        raise
    return client


def close_client(client: Any, url: str) -> str | None:
    """Close a client; the problem met, if any, for a summary (a server that went away cannot be closed cleanly)."""
    try:
        with triton_call(url, "close the connection"):
            client.close()
    except TritonctlError as exc:
        return f"close client {url}: {exc}"
    return None


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
                index = [_as_dict(m) for m in _index(client)]
                ready = sorted(m["name"] for m in index if m.get("state") == "READY")
                raise ModelError(f"model {model!r} is not ready on {url} (ready: {', '.join(ready) or 'none'}): "
                                 "pass --model with one of those")
            meta = _as_dict(client.get_model_metadata(model))
            config = _as_dict(client.get_model_config(model))
    finally:
        close_client(client, url)
    return meta, config.get("config", config)


def fetch_model_info(protocol: str, endpoint: Endpoint, model: str) -> ModelInfo:
    """What `detect` needs to know, asked of the server, so nothing is typed by hand."""
    meta, config = served_model(protocol, endpoint, model)
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


# Generations are unique across all upstreams: an address that leaves the pool and joins it again is a new upstream
# whose generation no slot has registered its regions under (the pod behind it may be a new one).
_generations = itertools.count(1)


@dataclass
class Upstream:
    """One endpoint as the pool sees it: requests in flight, back-off after a failure."""

    endpoint: Endpoint
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0
    generation: int = field(default_factory=lambda: next(_generations))  # new when it goes down: register again
    requests: int = 0
    draining: bool = False  # leaving the pool (discovery lost it): no new request, those in flight finish

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def local(self) -> bool:
        return self.endpoint.local

    @property
    def healthy(self) -> bool:
        return not self.draining and time.monotonic() >= self.down_until


class EndpointPool:
    """Spreads requests over healthy endpoints by least outstanding requests; a failed endpoint sits out a back-off.

    Endpoints can join (`add`) and leave (`drain`) while requests go on (--discover). `endpoints` is replaced, never
    changed in place, so a reader iterating it (statistics, the summary) needs no lock; `version` changes with every
    membership change, so each inference slot knows when to release what it holds for endpoints that left."""

    def __init__(self, endpoints: list[Endpoint], backoff_s: float = 0.5, max_backoff_s: float = 5.0) -> None:
        self.endpoints = [Upstream(e) for e in endpoints]
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._lock = threading.Lock()
        self.version = 0

    def add(self, endpoint: Endpoint) -> bool:
        """A new endpoint (False: already in the pool and not leaving)."""
        with self._lock:
            if any(u.endpoint == endpoint and not u.draining for u in self.endpoints):
                return False
            # It starts level with the least used one: `requests` breaks ties, and a newcomer at 0 would take every
            # tie until it caught up with endpoints that served since the start.
            level = min((u.requests for u in self.endpoints if not u.draining), default=0)
            self.endpoints = [*self.endpoints, Upstream(endpoint, requests=level)]
            self.version += 1
            return True

    def drain(self, endpoint: Endpoint) -> bool:
        """No new request for `endpoint`; it leaves once those in flight are released (False: not in the pool)."""
        with self._lock:
            leaving = [u for u in self.endpoints if u.endpoint == endpoint and not u.draining]
            for u in leaving:
                u.draining = True
            self._drop_drained()
            return bool(leaving)

    def _drop_drained(self) -> None:
        kept = [u for u in self.endpoints if not (u.draining and u.outstanding == 0)]
        if len(kept) != len(self.endpoints):
            self.endpoints = kept
            self.version += 1

    def urls(self) -> set[str]:
        """Endpoints still taking requests: what a slot keeps connections and registrations for."""
        return {u.url for u in self.endpoints if not u.draining}

    def acquire(self) -> Upstream | None:
        with self._lock:
            healthy = [e for e in self.endpoints if e.healthy]
            if not healthy:
                return None
            ep = min(healthy, key=lambda e: (e.outstanding, e.requests))
            ep.outstanding += 1
            ep.requests += 1
            return ep

    def release(self, ep: Upstream, ok: bool) -> None:
        with self._lock:
            ep.outstanding -= 1
            if ep.draining:  # leaving: its last request gone, it goes too (a failure needs no back-off now)
                self._drop_drained()
                return
            if ok:
                ep.failures = 0
                return
            if ep.healthy:  # the first failure of an outage: take it out
                ep.failures += 1
                ep.down_until = time.monotonic() + min(self.backoff_s * 2 ** (ep.failures - 1), self.max_backoff_s)
                ep.generation += 1

    def next_retry_s(self) -> float:
        with self._lock:
            # No endpoint at all (every discovered one left): wait as for one in back-off, for the next lookup.
            return max(0.0, min((e.down_until for e in self.endpoints), default=time.monotonic() + self.backoff_s)
                       - time.monotonic())


# ---------------------------------------------------------------- inference slots

_region_ids = itertools.count()
# Our regions in /dev/shm are `tritonctl-cli-<pid>_<role><n>`: a namespace of their own, apart from the local servers'
# `tritonctl-srv-<id>_…` (server.py), so that no server's clean-up ever takes a running client's regions.
REGION_PREFIX = "tritonctl-cli-"
SHM_DIR = "/dev/shm"
REMOVED_ELSEWHERE = "removed by another process on this host"


@dataclass
class _Shm:
    name: str
    key: str
    size: int
    handle: Any
    array: np.ndarray


class _ShmInferConnection:
    """Inference over HTTP/1.1 when both tensors live in shared memory: the whole request (line, headers, JSON body) is
    the same bytes for a given batch size, built once and sent with one sendall on a keep-alive socket; the answer is
    read to its end and only its status looked at (the output is already in shared memory).

    tritonclient builds InferInput/InferRequestedOutput objects, a JSON header and a gevent request each time, and
    http.client parses headers with the email package: 0.34 ms and 0.25 ms of CPU per request on the demo model
    against about 0.05 ms here (benchmarks/client_cost.py). Errors are raised as tritonclient raises them
    (InferenceServerException with the HTTP status; OSError or http.client.HTTPException when the connection fails),
    so `triton_call` classifies them the same way."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 30.0) -> None:
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._sock: socket.socket | None = None
        self._used = False  # the socket has carried a request: the server may since have closed it
        self._requests: dict[tuple[str, int], bytes] = {}
        self._buf = bytearray(65536)

    def request(self, info: ModelInfo, inp: _Shm, out: _Shm, n: int) -> None:
        """Run rows [:n] of region `inp` into region `out`; returns once the output is in shared memory."""
        key = (info.name, n)
        if (data := self._requests.get(key)) is None:
            body = _shm_infer_body(info, inp, out, n)
            data = self._requests[key] = (
                f"POST /v2/models/{quote(info.name, safe='')}/infer HTTP/1.1\r\nHost: {self.endpoint.url}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        try:
            status, answer = self._exchange(data)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not self._used:
                raise
            # A keep-alive socket the server closed while idle: a fresh one, once (inference has no side effect).
            status, answer = self._exchange(data)
        if status != 200:
            raise _http_error(status, answer)

    def _exchange(self, data: bytes) -> tuple[int, bytes]:
        sock = self._sock
        if sock is None:
            sock = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock, self._used = sock, False
        try:
            sock.sendall(data)
            status, answer, keep = self._read_response(sock)
        except BaseException:
            self.close()
            raise
        self._used = True
        if not keep:
            self.close()
        return status, answer

    def _read_response(self, sock: socket.socket) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive) of one HTTP/1.1 answer: Content-Length, chunked, or up to the close."""
        got = bytearray()
        while (head_end := got.find(b"\r\n\r\n")) < 0:
            got += self._recv(sock, closed_ok=False)
        head = bytes(got[:head_end]).decode("latin-1").split("\r\n")
        rest = got[head_end + 4:]
        parts = head[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise http.client.BadStatusLine(head[0])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        keep = headers.get("connection") != "close" and parts[0] != "HTTP/1.0"
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(rest) < length:
                rest += self._recv(sock, closed_ok=False)
            return int(parts[1]), bytes(rest[:length]), keep
        if headers.get("transfer-encoding") == "chunked":
            return int(parts[1]), self._read_chunked(sock, rest), keep
        while chunk := self._recv(sock, closed_ok=True):  # no length: the body ends with the connection
            rest += chunk
        return int(parts[1]), bytes(rest), False

    def _read_chunked(self, sock: socket.socket, got: bytearray) -> bytes:
        body = bytearray()
        while True:
            while (eol := got.find(b"\r\n")) < 0:
                got += self._recv(sock, closed_ok=False)
            size = int(bytes(got[:eol]).split(b";")[0], 16)
            while len(got) < eol + 2 + size + 2:
                got += self._recv(sock, closed_ok=False)
            body += got[eol + 2:eol + 2 + size]
            del got[:eol + 2 + size + 2]
            if size == 0:  # no trailers are sent by Triton
                return bytes(body)

    def _recv(self, sock: socket.socket, closed_ok: bool) -> bytes:
        n = sock.recv_into(self._buf)
        if n == 0 and not closed_ok:
            raise http.client.RemoteDisconnected("Triton closed the connection without an answer")
        return bytes(self._buf[:n])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _shm_infer_body(info: ModelInfo, inp: _Shm, out: _Shm, n: int) -> bytes:
    row_in, row_out = inp.size // inp.array.shape[0], out.size // out.array.shape[0]
    return json.dumps({
        "inputs": [{"name": info.input_name, "shape": [n, 3, info.height, info.width], "datatype": info.input_dtype,
                    "parameters": {"shared_memory_region": inp.name, "shared_memory_byte_size": n * row_in}}],
        "outputs": [{"name": info.output_name,
                     "parameters": {"shared_memory_region": out.name, "shared_memory_byte_size": n * row_out}}],
    }).encode()


def _http_error(status: int, answer: bytes) -> InferenceServerException:
    """An error answer as tritonclient.http reports it (its _get_error)."""
    try:
        text = answer.decode("utf-8")
        message = json.loads(text)["error"] if text else "client received an empty response from the server."
    except Exception as exc:  # not Triton's JSON error
        message = f"an exception occurred in the client while decoding the response: {exc}\nresponse: {answer!r}"
    return InferenceServerException(msg=str(message), status=str(status))


@dataclass
class InferSlot:
    """One request in flight: its input batch buffer and output buffer, in shared memory when possible.

    `use_shm`: create regions (the caller knows an endpoint is local). A local server that cannot open them (e.g. in a
    container without the host's /dev/shm) gets tensors over the network instead, unless `shm_required`."""

    info: ModelInfo
    batch: int
    protocol: str
    use_shm: bool
    shm_required: bool = False
    inputs: np.ndarray = field(init=False)
    bytes_sent: int = 0
    problems: list[str] = field(init=False, default_factory=list)
    _in: _Shm | None = field(init=False, default=None)
    _out: _Shm | None = field(init=False, default=None)
    _clients: dict[str, Any] = field(init=False, default_factory=dict)
    _registered: dict[str, int] = field(init=False, default_factory=dict)
    _wire_only: set[str] = field(init=False, default_factory=set)
    _fast: dict[str, _ShmInferConnection] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        in_shape = (self.batch, 3, self.info.height, self.info.width)
        out_shape = (self.batch, *self.info.output_shape)
        if not self.use_shm:
            self.inputs = np.empty(in_shape, self.info.input_np)
            return
        wanted: list[tuple[str, tuple[int, ...], np.dtype]] = [("in", in_shape, self.info.input_np)]
        if -1 not in self.info.output_shape:
            wanted.append(("out", out_shape, self.info.output_np))
        regions = create_regions(wanted)
        self._in, self._out = regions[0], (regions[1] if len(regions) > 1 else None)
        self.inputs = self._in.array

    def _regions(self) -> list[_Shm]:
        return [r for r in (self._in, self._out) if r is not None]

    def _uses_shm(self, ep: Upstream) -> bool:
        return self._in is not None and ep.local and ep.url not in self._wire_only

    def _client(self, ep: Upstream) -> Any:
        client = self._clients.get(ep.url)
        if client is None:
            client = self._clients[ep.url] = make_client(self.protocol, ep.endpoint)
        if self._uses_shm(ep) and self._registered.get(ep.url) != ep.generation:
            self._register_all(client, ep)
        return client

    def _register_all(self, client: Any, ep: Upstream) -> None:
        try:
            for region in self._regions():
                _register(client, ep.url, region)
        except TransientError:
            raise
        except TritonctlError as exc:  # the server answers but cannot map the region
            # Not the server's fault when our own region is gone from /dev/shm (another process removed it)
            gone = next((r for r in self._regions() if not _region_exists(r)), None)
            cause = f"shared-memory region {_shm_file(gone)} was {REMOVED_ELSEWHERE}" if gone else \
                f"Triton at {ep.url} cannot use this host's shared memory ({exc})"
            if self.shm_required:
                raise BadInput(f"--shm system: {cause}; {'run again' if gone else 'pass --shm none'}") from exc
            self._wire_only.add(ep.url)
            self.problems.append(f"{cause}: tensors sent to {ep.url} over the network" if gone else
                                 f"{ep.url} refused shared memory, tensors sent over the network")
            return
        self._registered[ep.url] = ep.generation

    def infer(self, ep: Upstream, n: int) -> np.ndarray:
        """Run rows [:n] of `inputs`; returns the output rows (a view of shared memory when it is used)."""
        try:
            return self._infer_once(ep, n)
        except RegionLost:
            self._registered.pop(ep.url, None)  # the server restarted between two requests: register again, once
            return self._infer_once(ep, n)

    def _infer_once(self, ep: Upstream, n: int) -> np.ndarray:
        module, info = protocol_module(self.protocol), self.info
        with self._call(ep, f"infer with model {info.name!r}"):
            client = self._client(ep)
            shm = self._uses_shm(ep)
            if shm and self._out is not None and self.protocol == "http":
                fast = self._fast.get(ep.url)
                if fast is None:
                    fast = self._fast[ep.url] = _ShmInferConnection(ep.endpoint)
                fast.request(info, self._in, self._out, n)  # type: ignore[arg-type]
                return self._out.array[:n]
            inp = module.InferInput(info.input_name, [n, 3, info.height, info.width], info.input_dtype)
            if shm:
                inp.set_shared_memory(self._in.name, n * self.inputs[0].nbytes)  # type: ignore[union-attr]
            else:
                inp.set_data_from_numpy(self.inputs[:n])
            out = module.InferRequestedOutput(info.output_name) if self.protocol == "grpc" else \
                module.InferRequestedOutput(info.output_name, binary_data=True)
            if shm and self._out is not None:
                out.set_shared_memory(self._out.name, n * self._out.array[0].nbytes)
            result = client.infer(info.name, [inp], outputs=[out])
        if not shm:
            self.bytes_sent += n * self.inputs[0].nbytes
        if shm and self._out is not None:
            return self._out.array[:n]
        array = result.as_numpy(info.output_name)
        if array is None:
            raise ModelError(f"Triton returned no {info.output_name!r} for model {info.name!r}")
        return np.asarray(array)

    @contextmanager
    def _call(self, ep: Upstream, what: str) -> Iterator[None]:
        """triton_call, forgetting what a failed endpoint held: its registrations, and on a broken connection its client."""
        try:
            with triton_call(ep.url, what):
                yield
        except RegionLost:
            self._registered.pop(ep.url, None)
            raise
        except TransientError:
            self._registered.pop(ep.url, None)
            if (fast := self._fast.pop(ep.url, None)) is not None:
                fast.close()
            client = self._clients.pop(ep.url, None)
            if client is not None:
                close_client(client, ep.url)
            raise

    def forget_others(self, keep: set[str]) -> list[str]:
        """Release what this slot holds for endpoints that left the pool (not in `keep`): unregister its regions there,
        close the connections. Called by the thread that uses the slot (tritonclient's HTTP client is gevent's, bound
        to it). A server that is gone took its registrations with it: that is no problem to report."""
        problems: list[str] = []
        for url in [u for u in {*self._clients, *self._fast} if u not in keep]:
            client = self._clients.pop(url, None)
            if client is not None and self._registered.pop(url, None) is not None:
                problems += _unregister(client, url, self._regions(), gone_ok=True)
            if client is not None:
                close_client(client, url)  # a server already gone cannot be closed cleanly: nothing to report
            if (fast := self._fast.pop(url, None)) is not None:
                fast.close()
            self._wire_only.discard(url)
        self.problems += problems
        return problems

    def close(self) -> list[str]:
        """Unregister and destroy the regions, close the clients; returns the problems met (for the summary)."""
        problems = list(self.problems)
        for url, client in self._clients.items():
            if url in self._registered:
                problems += _unregister(client, url, self._regions())
            problems += [p for p in [close_client(client, url)] if p]
        for fast in self._fast.values():
            fast.close()
        self._fast.clear()
        problems += destroy_regions(self._regions())
        self._clients.clear()
        self._in = self._out = None
        return problems


def _register(client: Any, url: str, region: _Shm) -> None:
    """Register a region; a server that still holds the name from before an outage gets it replaced."""
    try:
        with triton_call(url, f"register shared memory {region.name}"):
            client.register_system_shared_memory(region.name, region.key, region.size)
    except TransientError:
        raise
    except TritonctlError:
        with triton_call(url, f"register shared memory {region.name}"):
            client.unregister_system_shared_memory(region.name)
            client.register_system_shared_memory(region.name, region.key, region.size)


def _unregister(client: Any, url: str, regions: list[_Shm], gone_ok: bool = False) -> list[str]:
    """`gone_ok`: a server that cannot be reached is no problem (it left the pool; its registrations went with it)."""
    problems = []
    for region in regions:
        try:
            with triton_call(url, f"unregister {region.name}"):
                client.unregister_system_shared_memory(region.name)
        except TransientError as exc:
            if not gone_ok:
                problems.append(f"unregister {region.name} on {url}: {exc}")
        except TritonctlError as exc:
            problems.append(f"unregister {region.name} on {url}: {exc}")
    return problems


def create_regions(wanted: list[tuple[str, tuple[int, ...], np.dtype]]) -> list[_Shm]:
    """All the regions or none: when one cannot be created, those made before it are destroyed again."""
    made: list[_Shm] = []
    try:
        for role, shape, dtype in wanted:
            made.append(_create_region(role, shape, dtype))
    except BaseException:
        destroy_regions(made)
        raise
    return made


def destroy_regions(regions: list[_Shm]) -> list[str]:
    """Unmap and remove the regions; the problems met. A region already gone from /dev/shm (another process removed
    it) is no error of ours: one line says so, however many were gone, and nothing is left for the resource tracker
    to warn about at exit."""
    import tritonclient.utils.shared_memory as shm

    problems, gone = [], 0
    for region in regions:
        try:
            with triton_call("this host", f"destroy shared memory {region.name}"):
                try:
                    shm.destroy_shared_memory_region(region.handle)
                except FileNotFoundError:
                    gone += 1
                    _untrack(region)
        except TritonctlError as exc:
            problems.append(f"destroy {region.name}: {exc}")
    if gone:  # the same line from every slot, so that a run reports it once
        problems.append(f"shared-memory regions of this run were {REMOVED_ELSEWHERE} before it ended")
    return problems


def _shm_file(region: _Shm) -> str:
    """The /dev/shm name of the memory we created and mapped (the handle's: what we registered says only a key)."""
    name = getattr(getattr(region.handle, "_mpsm_handle", None), "name", None) or region.key
    return "/" + str(name).lstrip("/")


def _region_exists(region: _Shm) -> bool:
    return os.path.exists(SHM_DIR + _shm_file(region))


def _untrack(region: _Shm) -> None:
    """multiprocessing unregisters a region from its resource tracker only once shm_unlink succeeds: for one that
    someone else removed, the tracker would try again at exit and warn ("leaked shared_memory objects")."""
    from multiprocessing import resource_tracker

    handle = getattr(region.handle, "_mpsm_handle", None)
    name = getattr(handle, "_name", None)
    if name:
        resource_tracker.unregister(name, "shared_memory")


def _create_region(role: str, shape: tuple[int, ...], dtype: np.dtype) -> _Shm:
    import tritonclient.utils.shared_memory as shm

    name = f"{REGION_PREFIX}{os.getpid()}_{role}{next(_region_ids)}"
    size = int(np.prod(shape)) * dtype.itemsize
    with triton_call("this host", f"create shared memory {name} ({size} bytes)"):
        handle = shm.create_shared_memory_region(name, f"/{name}", size, create_only=True)
    return _Shm(name, f"/{name}", size, handle, shm.get_contents_as_numpy(handle, dtype, shape))


def server_stats(protocol: str, endpoint: Endpoint, model: str) -> dict[str, float]:
    """Cumulative success count, queue and compute nanoseconds of a model (for before/after deltas)."""
    client = make_client(protocol, endpoint, timeout_s=5)
    try:
        with triton_call(endpoint.url, f"report statistics of {model!r}"):
            stats = _as_dict(client.get_inference_statistics(model))
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
