"""The HTTP/1.1 exchange of a shared-memory inference request, written by hand, and the setting that turns it off.

Why by hand: when every tensor lives in shared memory, the request (line, headers, JSON body) is the same bytes for a
given batch size. Built once and sent with one sendall on a keep-alive socket, with the answer read to its end and only
its status looked at, it costs 12-15 µs of client CPU per request; http.client or h11 spend 71-79 µs on the same
exchange (header parsing by the email package, per-request objects), and tritonclient 0.34 ms (InferInput objects, a
JSON header and a gevent request each time). See benchmarks/client_cost.py.

Debugging a server's answer: `TRITONCTL_TRANSPORT=tritonclient` sends every request through tritonclient instead
(its own objects, its own parsing and errors), at tritonclient's cost; the outputs are the same either way. The
default, `direct`, is this module's exchange for HTTP requests whose tensors are all in shared memory. The setting is
read when an inference slot is made.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from tritonclient.utils import InferenceServerException

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import BadInput

if TYPE_CHECKING:
    from tritonctl.inference.regions import Region
    from tritonctl.inference.signature import ModelSignature

TRANSPORT_ENV = "TRITONCTL_TRANSPORT"
TRANSPORTS = ("direct", "tritonclient")


def transport_setting() -> str:
    """`direct` (this module, the default) or `tritonclient`, from $TRITONCTL_TRANSPORT."""
    value = os.environ.get(TRANSPORT_ENV, "").strip().lower() or "direct"
    if value not in TRANSPORTS:
        raise BadInput(f"{TRANSPORT_ENV}={value!r}: choose {' or '.join(TRANSPORTS)}")
    return value


class ShmInferConnection:
    """Inference requests over one keep-alive HTTP/1.1 connection, every tensor in shared memory (see the module's
    note). Errors are raised as tritonclient raises them (InferenceServerException with the HTTP status; OSError or
    http.client.HTTPException when the connection fails), so `triton_call` classifies them the same way."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 30.0) -> None:
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._sock: socket.socket | None = None
        self._used = False  # the socket has carried a request: the server may since have closed it
        self._requests: dict[tuple[str, int], bytes] = {}
        self._buf = bytearray(65536)

    def request(self, sig: ModelSignature, inputs: Sequence[Region], outputs: Sequence[Region], n: int) -> None:
        """Run rows [:n] of the input regions into the output regions (one each, in the signature's order); returns
        once the outputs are in shared memory."""
        key = (sig.name, n)
        if (data := self._requests.get(key)) is None:
            body = shm_infer_body(sig, inputs, outputs, n)
            data = self._requests[key] = (
                f"POST /v2/models/{quote(sig.name, safe='')}/infer HTTP/1.1\r\nHost: {self.endpoint.url}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        try:
            status, answer = self._exchange(data)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not self._used:
                raise
            # A keep-alive socket the server closed while idle: a fresh one, once (inference has no side effect).
            status, answer = self._exchange(data)
        if status != 200:
            raise http_error(status, answer)

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


def shm_infer_body(sig: ModelSignature, inputs: Sequence[Region], outputs: Sequence[Region], n: int) -> bytes:
    """The JSON of a request for rows [:n]: every tensor named by its region, in the signature's order."""

    def tensor(region: Region) -> dict[str, object]:
        row = region.size // region.array.shape[0]
        return {"shared_memory_region": region.name, "shared_memory_byte_size": n * row}

    return json.dumps({
        "inputs": [{"name": t.name, "shape": [n, *t.shape], "datatype": t.datatype, "parameters": tensor(r)}
                   for t, r in zip(sig.inputs, inputs, strict=True)],
        "outputs": [{"name": t.name, "parameters": tensor(r)} for t, r in zip(sig.outputs, outputs, strict=True)],
    }).encode()


def http_error(status: int, answer: bytes) -> InferenceServerException:
    """An error answer as tritonclient.http reports it (its _get_error)."""
    try:
        text = answer.decode("utf-8")
        message = json.loads(text)["error"] if text else "client received an empty response from the server."
    except Exception as exc:  # not Triton's JSON error
        message = f"an exception occurred in the client while decoding the response: {exc}\nresponse: {answer!r}"
    return InferenceServerException(msg=str(message), status=str(status))

