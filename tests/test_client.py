"""client.py: tritonclient's failures classified by status code and exception type (never by words in the message),
shared-memory regions that are all-or-nothing, re-registered after a server restart, and no __del__ tracebacks."""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Triton, free_ports
from tritonclient.utils import InferenceServerException
from tritonclient.utils.shared_memory import SharedMemoryException

from tritonctl.core.endpoint import Endpoint, parse_endpoint
from tritonctl.core.errors import BadInput, ModelError, ServerError, TritonctlError
from tritonctl.inference.client import (
    REGION_PREFIX,
    InferSlot,
    ModelInfo,
    RegionLost,
    SharedMemoryError,
    TransientError,
    Upstream,
    fetch_model_info,
    make_client,
    served_model,
    triton_call,
)

server = pytest.mark.server


def _raised(exc: BaseException) -> TritonctlError:
    with pytest.raises(TritonctlError) as info, triton_call("h:1", "infer with model 'm'"):
        raise exc
    return info.value


@pytest.mark.parametrize(("status", "message", "kind"), [
    ("400", "unexpected shape for input 'images'", ModelError),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'images'", ModelError),
    # words the old heuristic took for an outage, in a refusal of the request itself
    ("400", "inference request timeout must be positive", ModelError),
    ("500", "socket of the python backend stub: unexpected EOF", ModelError),
    ("StatusCode.INTERNAL", "failed to copy shared memory input", ModelError),
    ("404", "Request for unknown model: 'm' is not found", ModelError),
    ("503", "Server is stopping", TransientError),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", TransientError),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", TransientError),
    ("404", "Unable to find shared memory region: 'tritonctl_1_in0'", RegionLost),
    ("StatusCode.NOT_FOUND", "Unable to find shared memory region: 'tritonctl_1_in0'", RegionLost),
    (None, "url should not include the scheme", ServerError),
])
def test_server_answers_are_classified_by_status(status: str | None, message: str, kind: type) -> None:
    error = _raised(InferenceServerException(message, status=status))
    assert type(error) is kind, (status, message, error)
    assert message in str(error)


def test_transport_failures_are_transient() -> None:
    import gevent
    from geventhttpclient.response import HTTPConnectionClosed

    for exc in (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), ConnectionResetError(),
                TimeoutError("timed out"), HTTPConnectionClosed("closed"), gevent.Timeout(1.0), BrokenPipeError()):
        assert type(_raised(exc)) is TransientError, exc


def test_shared_memory_exception_is_ours() -> None:
    try:
        raise SharedMemoryException("unable to create the shared memory region") from OSError(errno.ENOSPC, "No space")
    except SharedMemoryException as exc:
        error = _raised(exc)
    assert isinstance(error, SharedMemoryError) and "--shm none" in str(error) and "No space" in str(error)


def test_a_failed_client_constructor_leaves_no_del_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """tritonclient's __del__ after a failed __init__ raised AttributeError '_closed', printed at garbage collection."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(BadInput, match="Invalid IPv6 URL"):
        make_client("http", Endpoint("http://127.0.0.1", 1))  # an unparsed URL with its scheme
    gc.collect()
    assert unraisable == []


def _upstream(url: str) -> Upstream:
    return Upstream(parse_endpoint(url))


def _regions_on_disk() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"{REGION_PREFIX}{os.getpid()}_*")}


def _info(triton: Triton, protocol: str = "http") -> tuple[ModelInfo, str]:
    url = triton.url if protocol == "http" else triton.grpc_url
    return fetch_model_info(protocol, parse_endpoint(url), "tiny"), url


@server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("use_shm", [False, True])
def test_a_bad_request_is_a_model_error_not_an_outage(triton: Triton, protocol: str, use_shm: bool) -> None:
    info, url = _info(triton, protocol)
    wrong = dataclasses.replace(info, height=info.height + 4)  # Triton answers 400 / INVALID_ARGUMENT
    slot = InferSlot(wrong, 1, protocol, use_shm)
    try:
        with pytest.raises(ModelError, match="unexpected shape") as raised:
            slot.infer(_upstream(url), 1)
        assert not isinstance(raised.value, TransientError)
    finally:
        assert slot.close() == []


@server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_dead_endpoint_is_transient(triton: Triton, protocol: str) -> None:
    info, _ = _info(triton, protocol)
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    slot = InferSlot(info, 1, protocol, use_shm=False)
    with pytest.raises(TransientError):
        slot.infer(_upstream(dead), 1)
    slot.close()
    with pytest.raises(ServerError, match="no Triton server answers"):
        served_model(protocol, parse_endpoint(dead), "tiny")


@server
def test_the_metrics_port_is_not_mistaken_for_triton(triton: Triton, tmp_path: Path) -> None:
    """Triton's metrics port answers HTTP, with an empty body where JSON is expected: one clear error, no traceback."""
    from conftest import assert_one_line_error, run_cli

    metrics = f"127.0.0.1:{triton.server.settings.metrics_port}"  # type: ignore[attr-defined]
    with pytest.raises(ServerError, match="not with Triton's API"):
        served_model("http", parse_endpoint(metrics), "tiny")
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    result = run_cli("detect", str(tmp_path / "a.png"), "-m", "tiny", "--url", metrics)
    assert_one_line_error(result, 4, metrics)


@server
def test_regions_lost_by_a_restart_are_registered_again(triton: Triton) -> None:
    """What a server restart does to our regions (it forgets them): the next request registers them again and
    succeeds, instead of counting as an outage."""
    import tritonclient.http as http

    info, url = _info(triton)
    slot = InferSlot(info, 2, "http", use_shm=True)
    ep = _upstream(url)
    try:
        slot.inputs[:] = 0.5
        first = slot.infer(ep, 2).copy()
        admin = http.InferenceServerClient(url)
        admin.unregister_system_shared_memory()  # every region, as after a restart
        assert admin.get_system_shared_memory_status() == []
        np.testing.assert_array_equal(slot.infer(ep, 2), first)
        assert {r["name"] for r in admin.get_system_shared_memory_status()} == {slot._in.name, slot._out.name}  # type: ignore[union-attr]
        admin.close()
        assert slot.bytes_sent == 0
    finally:
        assert slot.close() == []
    assert _regions_on_disk() == set()


@server
def test_a_server_that_cannot_map_our_memory_gets_tensors_over_the_network(triton: Triton) -> None:
    info, url = _info(triton)
    slot = InferSlot(info, 1, "http", use_shm=True)
    slot._in.key = "/tritonctl_not_there"  # type: ignore[union-attr]  # the server answers 500: cannot open it
    try:
        out = slot.infer(_upstream(url), 1)
        assert out.shape[0] == 1 and slot.bytes_sent == slot.inputs[0].nbytes
        assert any("refused shared memory" in p for p in slot.problems)
    finally:
        slot.close()
    required = InferSlot(info, 1, "http", use_shm=True, shm_required=True)
    required._in.key = "/tritonctl_not_there"  # type: ignore[union-attr]
    try:
        with pytest.raises(BadInput, match="--shm none"):
            required.infer(_upstream(url), 1)
    finally:
        required.close()
    assert _regions_on_disk() == set()


def test_regions_are_named_apart_from_the_servers() -> None:
    """A local server's clean-up removes `tritonctl-srv-<id>_…` (and the `tritonctl_<16 hex>_…` of servers started
    before the split): never a client's region."""
    from tritonctl.serving.leftovers import region_server

    slot_names = [f"{REGION_PREFIX}{os.getpid()}_in0", f"{REGION_PREFIX}4194304_out17", "tritonctl_4194304_in0"]
    assert [region_server(n) for n in slot_names] == [None, None, None]
    assert region_server("tritonctl-srv-0123456789abcdef_1_0") == "0123456789abcdef"
    assert region_server("tritonctl_0123456789abcdef_1_0") == "0123456789abcdef"


@server
def test_a_region_removed_by_another_process_is_named_not_blamed_on_the_server(triton: Triton) -> None:
    """Our region gone from /dev/shm, then the server forgetting it (a restart): registering it again fails. That was
    reported as the server refusing shared memory; the cause is the other process, and the run goes on over the
    network."""
    import tritonclient.http as http

    info, url = _info(triton)
    slot = InferSlot(info, 1, "http", use_shm=True)
    ep = _upstream(url)
    try:
        slot.inputs[:] = 0.5
        first = slot.infer(ep, 1).copy()
        key = slot._in.key  # type: ignore[union-attr]
        Path("/dev/shm", key.lstrip("/")).unlink()  # what a server's clean-up did to clients' regions
        admin = http.InferenceServerClient(url)
        admin.unregister_system_shared_memory()  # as after a restart
        admin.close()
        np.testing.assert_array_equal(slot.infer(ep, 1), first)
        assert slot.bytes_sent == slot.inputs[0].nbytes  # over the network now
        assert slot.problems == [f"shared-memory region {key} was removed by another process on this host: tensors sent "
                                 f"to {url} over the network"]
    finally:
        problems = slot.close()
    assert problems[1:] == ["shared-memory regions of this run were removed by another process on this host before "
                            "it ended"]  # once, instead of a FileNotFoundError per region
    assert _regions_on_disk() == set()


@server
def test_shm_required_names_the_removed_region(triton: Triton) -> None:
    info, url = _info(triton)
    slot = InferSlot(info, 1, "http", use_shm=True, shm_required=True)
    try:
        key = slot._in.key  # type: ignore[union-attr]
        Path("/dev/shm", key.lstrip("/")).unlink()
        with pytest.raises(BadInput, match=f"--shm system: shared-memory region {key} was removed by another process"):
            slot.infer(_upstream(url), 1)
    finally:
        slot.close()


@server
def test_regions_removed_by_another_process_leave_no_warning_at_exit(triton: Triton) -> None:
    """The run that lost its regions ended with a `destroy …: FileNotFoundError` line per region and, at exit, the
    resource tracker's "leaked shared_memory objects" warnings: one line now, and nothing at exit."""
    import subprocess

    script = f"""
import pathlib
from tritonctl.inference.client import InferSlot, Upstream, fetch_model_info
from tritonctl.core.endpoint import parse_endpoint
ep = parse_endpoint({triton.url!r})
slots = [InferSlot(fetch_model_info("http", ep, "tiny"), 1, "http", use_shm=True) for _ in range(3)]
for slot in slots:
    slot.infer(Upstream(ep), 1)
for path in pathlib.Path("/dev/shm").glob("{REGION_PREFIX}*"):
    if path.name.startswith("{REGION_PREFIX}%d_" % __import__("os").getpid()):
        path.unlink()
print(sorted({{p for slot in slots for p in slot.close()}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['shared-memory regions of this run were removed by another process on this host " \
                                  "before it ended']", done.stdout
    assert done.stderr == "", done.stderr


def _failing_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """/dev/shm fills up after n regions."""
    import tritonclient.utils.shared_memory as shm

    real, made = shm.create_shared_memory_region, []

    def create(*args: Any, **kwargs: Any) -> Any:
        if len(made) >= n:
            raise SharedMemoryException("unable to create the shared memory region") from OSError(errno.ENOSPC, "full")
        made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(shm, "create_shared_memory_region", create)


@server
def test_slot_regions_are_all_or_nothing(triton: Triton, monkeypatch: pytest.MonkeyPatch) -> None:
    info, _ = _info(triton)
    _failing_after(monkeypatch, 1)  # the input region is made, the output one fails
    with pytest.raises(SharedMemoryError, match="--shm none"):
        InferSlot(info, 1, "http", use_shm=True)
    assert _regions_on_disk() == set()


@server
def test_a_later_worker_failing_to_start_leaks_nothing(triton: Triton, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from tritonctl.stream.detect import DetectSettings, run_detect

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    _failing_after(monkeypatch, 5)  # workers 0 and 1 get their two regions, worker 2 only one
    settings = DetectSettings.create(sources=[str(tmp_path / "a.png")], urls=[triton.url], model="tiny", concurrency=3,
                                     json_path=tmp_path / "out.jsonl")
    with pytest.raises(SharedMemoryError):
        run_detect(settings)
    assert _regions_on_disk() == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no output file started either


@server
def test_shm_over_http_answers_what_tensors_over_the_network_answer(triton: Triton) -> None:
    info, url = _info(triton)
    fast, wire = InferSlot(info, 2, "http", use_shm=True), InferSlot(info, 2, "http", use_shm=False)
    try:
        for slot in (fast, wire):
            slot.inputs[:] = np.linspace(0, 1, slot.inputs.size, dtype=slot.inputs.dtype).reshape(slot.inputs.shape)
        for n in (2, 1, 2):
            np.testing.assert_array_equal(fast.infer(_upstream(url), n), wire.infer(_upstream(url), n))
        assert list(fast._fast) == [url] and fast.bytes_sent == 0
    finally:
        assert fast.close() == [] and wire.close() == []
    assert _regions_on_disk() == set()
