"""fleet.py and signature.py: the one failover loop (retries, an interruptible wait while every endpoint is down, the
time actually down, departed endpoints released), slots made all or none, and a model that is no detector (two inputs
of two dtypes, two outputs) described from the server and inferred through shared memory and over the network, with
the outputs ONNX Runtime gives."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_ports, start_server

from tritonctl.core.endpoint import Endpoint, parse_endpoint
from tritonctl.core.errors import ModelError, ServerError
from tritonctl.inference.calls import SharedMemoryError, TransientError
from tritonctl.inference.client import fetch_model_info, fetch_signature
from tritonctl.inference.endpoints import Upstream
from tritonctl.inference.fleet import Fleet
from tritonctl.inference.regions import REGION_PREFIX
from tritonctl.inference.signature import ModelSignature, TensorSpec

server = pytest.mark.server


def _regions_on_disk() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"{REGION_PREFIX}{os.getpid()}_*")}


# ---------------------------------------------------------------- the failover loop, with a scripted slot


@dataclass
class _Slot:
    """Stands in for an InferSlot: fails transiently on the urls in `down`, answers elsewhere."""

    down: set[str] = field(default_factory=set)
    tried: list[str] = field(default_factory=list)
    forgotten: list[set[str]] = field(default_factory=list)
    pool_version: int = 0

    def infer_all(self, ep: Upstream, n: int) -> dict[str, np.ndarray]:
        self.tried.append(ep.url)
        if ep.url in self.down:
            raise TransientError("connection refused")
        return {"out": np.full((n, 2), 7.0)}

    def forget_others(self, keep: set[str]) -> list[str]:
        self.forgotten.append(keep)
        return []


def _fleet(*urls: str, timeout_s: float = 30.0) -> Fleet:
    return Fleet([parse_endpoint(u) for u in urls], shm="none", server_timeout_s=timeout_s)


def test_a_failed_endpoint_is_retried_elsewhere_and_counted() -> None:
    fleet, slot = _fleet("10.0.0.1:8000", "10.0.0.2:8000"), _Slot(down={"10.0.0.1:8000"})
    answers = [fleet.infer(slot, 3) for _ in range(3)]  # type: ignore[arg-type]
    assert all(a is not None and a.url == "10.0.0.2:8000" and a.outputs["out"].shape == (3, 2) for a in answers)
    figures = fleet.figures
    assert (figures.requests, figures.retries, figures.all_down_s) == (3, 1, 0.0)  # the failed one sits out its back-off
    assert slot.tried[0] == "10.0.0.1:8000" and slot.tried.count("10.0.0.1:8000") == 1


def test_the_wait_while_all_are_down_ends_when_stopped() -> None:
    fleet, slot = _fleet("10.0.0.1:8000"), _Slot(down={"10.0.0.1:8000"})
    fleet.pool.backoff_s = fleet.pool.max_backoff_s = 30.0  # the back-off alone would outlast the test
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert fleet.infer(slot, 1, stop) is None  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 1.5
    figures = fleet.figures
    assert figures.retries == 1 and figures.requests == 0 and 0.1 < figures.all_down_s < 1.5


def test_giving_up_reports_the_time_actually_down() -> None:
    fleet, slot = _fleet("10.0.0.1:8000", timeout_s=0.7), _Slot(down={"10.0.0.1:8000"})
    fleet.pool.backoff_s = fleet.pool.max_backoff_s = 30.0
    with pytest.raises(ServerError, match="no Triton endpoint answered for") as raised:
        fleet.infer(slot, 1)  # type: ignore[arg-type]
    down = fleet.figures.all_down_s
    assert 0.7 < down < 2.0 and f"answered for {down:.0f} s (last error 10.0.0.1:8000: connection refused)" in \
        str(raised.value)


def test_endpoints_that_left_are_released_by_the_slot_that_used_them() -> None:
    a, b = Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000)
    fleet, slot = Fleet([a, b], shm="none"), _Slot()
    fleet.infer(slot, 1)  # type: ignore[arg-type]
    assert slot.forgotten == []  # nothing left yet
    fleet.pool.drain(a)
    fleet.infer(slot, 1)  # type: ignore[arg-type]
    fleet.infer(slot, 1)  # type: ignore[arg-type]
    assert slot.forgotten == [{"10.0.0.2:8000"}]  # once per change


def test_slots_are_made_all_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import tritonclient.utils.shared_memory as shm

    real, made = shm.create_shared_memory_region, []

    def create(*args: Any, **kwargs: Any) -> Any:
        if len(made) >= 5:  # two slots of two regions, the third gets one
            raise shm.SharedMemoryException("unable to create the shared memory region") from OSError(errno.ENOSPC, "")
        made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(shm, "create_shared_memory_region", create)
    sig = ModelSignature("m", (TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (2,)),), 8)
    fleet = Fleet([Endpoint("127.0.0.1", 8000)], shm="auto")
    assert fleet.use_shm
    with pytest.raises(SharedMemoryError, match="--shm none"):
        fleet.slots(sig, 2, 3)
    assert len(made) == 5 and _regions_on_disk() == set()


# ---------------------------------------------------------------- any model: an embedding model, served


def _embedder(path: Path) -> Path:
    """pixels FP32 [B,3,32,32] and offset INT32 [B,16] -> embedding FP32 [B,16] (an 8x8 average pool, a 4x4 conv,
    plus the offset), norm FP32 [B,1] (its L2 norm): no detection head, two inputs of two dtypes, two outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (16, 3, 4, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["pixels"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
            helper.make_node("Conv", ["pooled", "w"], ["conv"]),
            helper.make_node("Flatten", ["conv"], ["flat"]),
            helper.make_node("Cast", ["offset"], ["offset_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["flat", "offset_f"], ["embedding"]),
            helper.make_node("ReduceL2", ["embedding"], ["norm"], axes=[1], keepdims=1),
        ],
        "embedder",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 32, 32]),
         helper.make_tensor_value_info("offset", TensorProto.INT32, ["batch", 16])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 16]),
         helper.make_tensor_value_info("norm", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@dataclass
class _Served:
    url: str
    grpc_url: str
    onnx: Path


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Served]:
    """A local Triton serving the embedding model as `tritonctl config --platform local_onnx` writes it."""
    from tritonctl.model.repository import ConfigSettings, write_model

    tmp = tmp_path_factory.mktemp("embed")
    onnx_file = _embedder(tmp / "embed.onnx")
    repo = tmp / "repo"
    write_model(ConfigSettings.create(name="embed", model_file=onnx_file, repo=repo, platform="local_onnx", max_batch=8,
                                      preferred_batch=(4,), instances=1))
    ports = free_ports(3)
    srv = start_server(repo, ports)
    try:
        yield _Served(f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", onnx_file)
    finally:
        srv.stop()  # type: ignore[attr-defined]


def _expected(onnx_file: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@server
def test_the_signature_of_any_model_is_read_from_the_server(embed_server: _Served) -> None:
    for protocol, url in (("http", embed_server.url), ("grpc", embed_server.grpc_url)):
        sig = fetch_signature(protocol, parse_endpoint(url), "embed")
        assert sig == ModelSignature("embed", (TensorSpec("pixels", "FP32", (3, 32, 32)),
                                               TensorSpec("offset", "INT32", (16,))),
                                     (TensorSpec("embedding", "FP32", (16,)), TensorSpec("norm", "FP32", (1,))), 8)
    with pytest.raises(ModelError, match="detect needs one image input"):
        fetch_model_info("http", parse_endpoint(embed_server.url), "embed")


@server
@pytest.mark.parametrize(("protocol", "shm"), [("http", "system"), ("http", "none"), ("grpc", "system"),
                                               ("grpc", "none")])
def test_an_embedding_model_through_the_fleet_answers_what_onnx_runtime_answers(embed_server: _Served, protocol: str,
                                                                               shm: str) -> None:
    url = embed_server.url if protocol == "http" else embed_server.grpc_url
    sig = fetch_signature(protocol, parse_endpoint(url), "embed")
    fleet = Fleet([parse_endpoint(url)], protocol=protocol, shm=shm)
    [slot] = fleet.slots(sig, 4, 1)
    rng = np.random.default_rng(1)
    try:
        for n in (3, 4, 1):
            feeds = {"pixels": rng.random((n, 3, 32, 32), np.float32),
                     "offset": rng.integers(-5, 5, (n, 16), dtype=np.int32)}
            for name, rows in feeds.items():
                slot.buffers[name][:n] = rows
            answer = fleet.infer(slot, n)
            assert answer is not None and answer.url == url
            expected = _expected(embed_server.onnx, feeds)
            assert set(answer.outputs) == {"embedding", "norm"}
            for name, value in expected.items():
                assert answer.outputs[name].shape == value.shape
                np.testing.assert_allclose(answer.outputs[name], value, rtol=1e-5, atol=1e-5)
        assert (slot.bytes_sent == 0) == (shm == "system")
        assert bool(slot._fast) == (protocol == "http" and shm == "system")  # the direct transport, when it applies
    finally:
        assert slot.close() == []
    assert fleet.figures.requests == 3 and fleet.figures.retries == 0
    assert _regions_on_disk() == set()
