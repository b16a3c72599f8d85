"""Calls into tritonclient, and what their failures mean: `triton_call` turns every tritonclient failure into ours.

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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tritonclient.utils import InferenceServerException
from tritonclient.utils.shared_memory import SharedMemoryException

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import BadInput, ModelError, ServerError, TritonctlError


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


def as_dict(obj: Any) -> dict[str, Any]:
    """HTTP answers dicts, gRPC protobuf messages: one shape for both."""
    if isinstance(obj, dict):
        return obj
    from google.protobuf.json_format import MessageToDict

    return dict(MessageToDict(obj, preserving_proto_field_name=True))
