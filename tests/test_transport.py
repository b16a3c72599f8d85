"""transport.py: the hand-written HTTP/1.1 exchange of shared-memory requests (one constant request per batch size,
keep-alive, answers read by Content-Length, chunked or up to the close, errors raised as tritonclient raises them), the
request body for any signature, and TRITONCTL_TRANSPORT=tritonclient, which answers the same."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from conftest import Triton, free_ports

from tritonctl.core.endpoint import Endpoint, parse_endpoint
from tritonctl.core.errors import BadInput, ModelError, TritonctlError
from tritonctl.inference.calls import RegionLost, TransientError, triton_call
from tritonctl.inference.endpoints import Upstream
from tritonctl.inference.signature import ModelInfo, ModelSignature, TensorSpec
from tritonctl.inference.slots import InferSlot
from tritonctl.inference.transport import TRANSPORT_ENV, ShmInferConnection, shm_infer_body, transport_setting

server = pytest.mark.server


class _ScriptedServer:
    """A local socket server answering each request with the next scripted bytes; `close_after` requests per
    connection (then it closes it, as a server dropping an idle keep-alive connection does)."""

    def __init__(self, answers: list[bytes], close_after: int = 1_000_000) -> None:
        import socket
        import threading

        self.answers, self.close_after, self.requests, self.connections = list(answers), close_after, [], 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                for _ in range(self.close_after):
                    data = b""
                    while b"\r\n\r\n" not in data:
                        if not (chunk := conn.recv(65536)):
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    while len(body) < length:
                        body += conn.recv(65536)
                    self.requests.append((head, body))
                    conn.sendall(self.answers.pop(0))
                    if not self.answers:
                        break

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def _fast_parts() -> tuple[Any, Any, Any]:
    from types import SimpleNamespace

    info = ModelInfo("yolo", "images", "FP32", 8, 8, "output0", (8, 10), "FP32", 4, {}, "anchors")
    inp = SimpleNamespace(name="tritonctl_1_in0", size=4 * 3 * 8 * 8 * 4, array=np.zeros((4, 3, 8, 8), np.float32))
    out = SimpleNamespace(name="tritonctl_1_out1", size=4 * 8 * 10 * 4, array=np.zeros((4, 8, 10), np.float32))
    return info, inp, out


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_shm_requests_are_one_constant_json_request() -> None:
    import json

    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n"
    srv = _ScriptedServer([OK, chunked, OK])
    conn = ShmInferConnection(Endpoint("127.0.0.1", srv.port))
    info, inp, out = _fast_parts()
    try:
        for n in (2, 2, 3):
            conn.request(info.signature, [inp], [out], n)  # type: ignore[list-item]
    finally:
        conn.close()
        srv.close()
    assert srv.connections == 1  # kept alive, a chunked answer included
    heads = [head.split(b"\r\n")[0] for head, _ in srv.requests]
    assert heads == [b"POST /v2/models/yolo/infer HTTP/1.1"] * 3
    body = json.loads(srv.requests[2][1])
    assert body["inputs"] == [{"name": "images", "shape": [3, 3, 8, 8], "datatype": "FP32", "parameters": {
        "shared_memory_region": "tritonctl_1_in0", "shared_memory_byte_size": 3 * 3 * 8 * 8 * 4}}]
    assert body["outputs"] == [{"name": "output0", "parameters": {
        "shared_memory_region": "tritonctl_1_out1", "shared_memory_byte_size": 3 * 8 * 10 * 4}}]


def test_a_keepalive_connection_the_server_closed_is_opened_again_once() -> None:
    srv = _ScriptedServer([OK, OK, OK], close_after=1)  # the server closes every connection after one answer
    conn = ShmInferConnection(Endpoint("127.0.0.1", srv.port))
    info, inp, out = _fast_parts()
    try:
        for _ in range(3):
            conn.request(info.signature, [inp], [out], 1)  # type: ignore[list-item]
    finally:
        conn.close()
        srv.close()
    assert len(srv.requests) == 3 and srv.connections == 3


@pytest.mark.parametrize(("answer", "kind", "words"), [
    (b'HTTP/1.1 400 Bad Request\r\nContent-Length: 44\r\n\r\n{"error":"unexpected shape for input images"}',
     ModelError, "unexpected shape"),
    (b'HTTP/1.1 404 Not Found\r\nContent-Length: 53\r\n\r\n{"error":"Unable to find shared memory region: \'x\'."}',
     RegionLost, "shared memory region"),
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", TransientError, "empty response"),
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 7\r\n\r\nnot json", ModelError, "decoding the response"),
    (b"garbage\r\n\r\n", TransientError, "garbage"),
])
def test_fast_path_errors_are_classified_as_tritonclient_s(answer: bytes, kind: type, words: str) -> None:
    srv = _ScriptedServer([answer])
    conn = ShmInferConnection(Endpoint("127.0.0.1", srv.port))
    info, inp, out = _fast_parts()
    try:
        with pytest.raises(TritonctlError) as raised, triton_call(f"127.0.0.1:{srv.port}", "infer with model 'yolo'"):
            conn.request(info.signature, [inp], [out], 1)  # type: ignore[list-item]
    finally:
        conn.close()
        srv.close()
    assert type(raised.value) is kind and words in str(raised.value), raised.value


def test_fast_path_to_a_dead_port_is_transient() -> None:
    conn = ShmInferConnection(Endpoint("127.0.0.1", free_ports(1)[0]))
    info, inp, out = _fast_parts()
    with pytest.raises(TransientError), triton_call("127.0.0.1", "infer with model 'yolo'"):
        conn.request(info.signature, [inp], [out], 1)  # type: ignore[list-item]


def test_the_body_names_every_tensor_of_any_signature_in_order() -> None:
    from types import SimpleNamespace

    sig = ModelSignature("embed", (TensorSpec("pixels", "FP32", (3, 4, 4)), TensorSpec("mask", "INT64", (4,))),
                         (TensorSpec("vector", "FP16", (16,)), TensorSpec("norm", "FP32", (1,))), 8)
    regions = [SimpleNamespace(name=f"r{k}", size=8 * rows, array=np.zeros((8, 1))) for k, rows in
               enumerate((3 * 4 * 4 * 4, 4 * 8, 16 * 2, 4))]
    body = json.loads(shm_infer_body(sig, regions[:2], regions[2:], 5))  # type: ignore[arg-type]
    assert body["inputs"] == [
        {"name": "pixels", "shape": [5, 3, 4, 4], "datatype": "FP32",
         "parameters": {"shared_memory_region": "r0", "shared_memory_byte_size": 5 * 3 * 4 * 4 * 4}},
        {"name": "mask", "shape": [5, 4], "datatype": "INT64",
         "parameters": {"shared_memory_region": "r1", "shared_memory_byte_size": 5 * 4 * 8}}]
    assert body["outputs"] == [
        {"name": "vector", "parameters": {"shared_memory_region": "r2", "shared_memory_byte_size": 5 * 16 * 2}},
        {"name": "norm", "parameters": {"shared_memory_region": "r3", "shared_memory_byte_size": 5 * 4}}]


def test_the_transport_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)
    assert transport_setting() == "direct"
    monkeypatch.setenv(TRANSPORT_ENV, " TritonClient ")
    assert transport_setting() == "tritonclient"
    monkeypatch.setenv(TRANSPORT_ENV, "h11")
    with pytest.raises(BadInput, match=f"{TRANSPORT_ENV}='h11': choose direct or tritonclient"):
        transport_setting()


@server
def test_tritonclient_transport_answers_what_the_direct_one_answers(triton: Triton,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """TRITONCTL_TRANSPORT=tritonclient, for debugging a server's answer: the same requests through tritonclient
    (shared memory still), the same outputs, and its errors classified the same way."""
    import dataclasses

    from tritonctl.inference.client import fetch_model_info

    info = fetch_model_info("http", parse_endpoint(triton.url), "tiny")
    ep = Upstream(parse_endpoint(triton.url))
    direct = InferSlot(info, 2, "http", use_shm=True)
    monkeypatch.setenv(TRANSPORT_ENV, "tritonclient")
    debug = InferSlot(info, 2, "http", use_shm=True)
    wrong = InferSlot(dataclasses.replace(info, height=info.height + 4), 1, "http", use_shm=True)
    try:
        for slot in (direct, debug):
            slot.inputs[:] = np.linspace(0, 1, slot.inputs.size, dtype=slot.inputs.dtype).reshape(slot.inputs.shape)
        for n in (2, 1, 2):
            np.testing.assert_array_equal(direct.infer(ep, n), debug.infer(ep, n))
        assert list(direct._fast) == [triton.url] and debug._fast == {}
        assert debug.bytes_sent == 0  # still shared memory, only not this module's exchange
        with pytest.raises(ModelError, match="unexpected shape"):
            wrong.infer(ep, 1)
    finally:
        assert direct.close() == [] and debug.close() == [] and wrong.close() == []
