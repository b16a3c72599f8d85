"""--discover: endpoints from what a name resolves to, asked of a real DNS server (dnslib's, started here on
localhost), kept in step while a run goes on. End to end: four local Tritons on 127.0.0.2..5 behind one name; detect
spreads over them, then one is killed and removed from DNS, one removed alive, one added: no frame lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_ports, run_cli

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import BadInput, ServerError
from tritonctl.inference.client import server_stats
from tritonctl.inference.discovery import DiscoverTarget, Discovery, DnsResolver, parse_discover, resolve_endpoints
from tritonctl.inference.endpoints import EndpointPool

NAME = "triton-headless.default.svc.cluster.local"


# ---------------------------------------------------------------- a real DNS server on localhost


class _Table:
    """dnslib resolver answering A/AAAA records from a table the test changes while the server runs."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def set(self, name: str, addresses: list[str]) -> None:
        with self.lock:
            self.records[name.rstrip(".").lower()] = list(addresses)

    def resolve(self, request: Any, handler: Any) -> Any:
        import ipaddress

        from dnslib import AAAA, QTYPE, RCODE, RR, A

        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            addresses = self.records.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for a in addresses:
            v6 = ipaddress.ip_address(a).version == 6
            if request.q.qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                reply.add_answer(RR(request.q.qname, request.q.qtype, ttl=1, rdata=AAAA(a) if v6 else A(a)))
        return reply


@dataclass
class Dns:
    table: _Table
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def dns() -> Iterator[Dns]:
    from dnslib.server import DNSLogger, DNSServer

    table = _Table()
    server = DNSServer(table, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _s: None))
    server.start_thread()
    try:
        yield Dns(table, server.server.server_address[1])
    finally:
        server.stop()
        server.server.server_close()


# ---------------------------------------------------------------- the pieces, without Triton


def test_discover_parses_name_port_dns_and_interval() -> None:
    t = parse_discover("triton-headless:8001", "grpc", "127.0.0.1:5353", 0.5)
    assert (t.name, t.port, t.dns, t.interval_s) == ("triton-headless", 8001, Endpoint("127.0.0.1", 5353), 0.5)
    assert parse_discover("triton", "grpc").port == 8001  # the protocol's port, as --url's default
    assert parse_discover("triton", dns="10.0.0.10").dns == Endpoint("10.0.0.10", 53)
    with pytest.raises(BadInput, match="--discover-interval"):
        parse_discover("triton:8000", interval_s=0)
    with pytest.raises(BadInput, match="--discover"):
        parse_discover("triton:http")


def test_a_real_dns_server_answers_a_and_aaaa_and_no_name_is_no_address(dns: Dns) -> None:
    dns.table.set(NAME, ["127.0.0.3", "::1", "127.0.0.2"])
    target = parse_discover(f"{NAME}:8000", dns=dns.address)
    assert [e.url for e in resolve_endpoints(target)] == ["127.0.0.2:8000", "127.0.0.3:8000", "[::1]:8000"]
    assert resolve_endpoints(parse_discover("nobody.example:8000", dns=dns.address)) == []


def test_a_dns_server_that_does_not_answer_is_a_server_error() -> None:
    [port] = free_ports(1)  # nothing listens: the UDP question goes unanswered
    with pytest.raises(ServerError, match="did not answer"):
        DnsResolver(Endpoint("127.0.0.1", port), timeout_s=0.2).resolve(NAME)


def test_a_drained_endpoint_takes_no_request_and_leaves_once_idle() -> None:
    a, b, c = (Endpoint(f"127.0.0.{i}", 8000) for i in (2, 3, 4))
    pool = EndpointPool([a, b])
    held = [pool.acquire() for _ in range(4)]
    assert {u.url for u in held if u} == {a.url, b.url}
    version = pool.version
    assert pool.drain(a) and pool.version == version  # two requests still in flight there: it stays, taking none
    assert all(pool.acquire().endpoint == b for _ in range(3))  # type: ignore[union-attr]
    assert pool.urls() == {b.url}
    for u in held:
        if u is not None and u.endpoint == a:
            pool.release(u, ok=False)  # a failure on the way out is no back-off of a server that is leaving
    assert [u.endpoint for u in pool.endpoints] == [b] and pool.version > version
    old_generation = next(u.generation for u in held if u is not None and u.endpoint == a)
    assert pool.add(c) and not pool.add(c)
    newcomer = pool.endpoints[-1]
    assert newcomer.requests == pool.endpoints[0].requests  # level with the others: not every tie until it caught up
    assert pool.add(a) and pool.endpoints[-1].generation != old_generation  # back again: its regions registered anew


def test_no_endpoint_left_waits_like_a_back_off() -> None:
    pool = EndpointPool([])
    assert pool.acquire() is None and 0 < pool.next_retry_s() <= pool.backoff_s


@dataclass
class _Answers:
    """A resolver whose next answers the test sets: addresses, or an exception."""

    answer: list[str] | Exception = field(default_factory=list)

    def resolve(self, name: str) -> list[str]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


def test_discovery_adds_and_drains_keeps_urls_given_and_survives_bad_lookups() -> None:
    given = Endpoint("127.0.0.9", 8000)
    pool = EndpointPool([given])
    answers = _Answers(["127.0.0.2", "127.0.0.3"])
    problems: list[str] = []
    d = Discovery(DiscoverTarget("svc", 8000), pool, answers, problems.append)
    d.first()
    assert {u.url for u in pool.endpoints} == {"127.0.0.9:8000", "127.0.0.2:8000", "127.0.0.3:8000"}
    answers.answer = ["127.0.0.3", "127.0.0.4"]
    d.refresh()
    assert pool.urls() == {"127.0.0.9:8000", "127.0.0.3:8000", "127.0.0.4:8000"}
    bad_answers: list[list[str] | Exception] = [[], ServerError("DNS server 127.0.0.1:53 did not answer")]
    for bad in bad_answers:
        answers.answer = bad
        d.refresh()  # a failed lookup, or an empty answer, drains nothing
        assert pool.urls() == {"127.0.0.9:8000", "127.0.0.3:8000", "127.0.0.4:8000"}
    answers.answer = ["127.0.0.9"]  # the --url endpoint is never the name's to drain
    d.refresh()
    assert pool.urls() == {"127.0.0.9:8000"}
    assert [(e.change, e.url) for e in d.events] == [
        ("added", "127.0.0.2:8000"), ("added", "127.0.0.3:8000"), ("added", "127.0.0.4:8000"),
        ("removed", "127.0.0.2:8000"), ("removed", "127.0.0.3:8000"), ("removed", "127.0.0.4:8000")]
    assert len(problems) == 2 and d.report()["failed_lookups"] == 1


def test_shm_system_leaves_out_addresses_off_this_host() -> None:
    pool = EndpointPool([])
    problems: list[str] = []
    Discovery(DiscoverTarget("svc", 8000), pool, _Answers(["10.1.2.3", "127.0.0.2"]), problems.append,
              local_only=True).first()
    assert pool.urls() == {"127.0.0.2:8000"} and "10.1.2.3:8000 is not on this host" in problems[0]
    with pytest.raises(BadInput, match="--shm system"):
        Discovery(DiscoverTarget("svc", 8000), EndpointPool([]), _Answers(["10.1.2.3"]), local_only=True).first()


def test_detect_refuses_discover_options_without_discover(tmp_path: Path) -> None:
    from conftest import assert_one_line_error

    result = run_cli("detect", str(tmp_path / "v.mp4"), "--model", "m", "--discover-dns", "127.0.0.1:5353", timeout=60)
    assert_one_line_error(result, 2, "--discover")


def test_benchmark_measures_the_first_replica_and_names_them_all(dns: Dns, tmp_path: Path) -> None:
    from tritonctl.measure.benchmark import BenchmarkSettings

    dns.table.set(NAME, ["127.0.0.4", "127.0.0.2"])
    s = BenchmarkSettings.create(model="m", batch_sizes="1", concurrency="1", out_dir=tmp_path / "r",
                                 discover=f"{NAME}:8000", discover_dns=dns.address)
    assert s.url == "127.0.0.2:8000" and s.replicas == ("127.0.0.2:8000", "127.0.0.4:8000")
    with pytest.raises(BadInput, match="not both"):
        BenchmarkSettings.create(model="m", batch_sizes="1", concurrency="1", out_dir=tmp_path / "r", url="h:1",
                                 discover=f"{NAME}:8000", discover_dns=dns.address)
    with pytest.raises(ServerError, match="resolves to no address"):
        BenchmarkSettings.create(model="m", batch_sizes="1", concurrency="1", out_dir=tmp_path / "r",
                                 discover="nobody.example:8000", discover_dns=dns.address)


# ---------------------------------------------------------------- end to end: four Tritons behind one name

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
# About 10 s of detect with 3 requests in flight (each waits up to the tiny model's 20 ms batching delay): time for
# the pods to change while it runs.
FRAMES = 1500


def _port_free_on_all(hosts: list[str]) -> int:
    """An HTTP port free on every address: the name carries one port for all its pods, as a Service does."""
    for _ in range(50):
        [port] = free_ports(1)
        socks = []
        try:
            for host in hosts:
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no port free on all of " + ", ".join(hosts))


class _Server(threading.Thread):
    """A local Triton started and stopped by one thread that lives as long as it does: tritonserver gets SIGTERM
    when the thread that started it ends (Linux ties the parent-death signal to the thread)."""

    def __init__(self, repo: Path, host: str, port: int, log: Path) -> None:
        super().__init__(name=f"triton-{host}", daemon=True)
        self.repo, self.host, self.port, self.log = repo, host, port, log
        self.ready, self.done = threading.Event(), threading.Event()
        self.server: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from tritonctl.serving.local import start_local
        from tritonctl.serving.settings import ServeSettings

        grpc, metrics = free_ports(2)
        try:
            self.server = start_local(ServeSettings.create(runtime="local", repo=self.repo, host=self.host,
                                                           http_port=self.port, grpc_port=grpc, metrics_port=metrics,
                                                           log_file=self.log, timeout_s=120))
        except BaseException as exc:
            self.error = exc
            return
        finally:
            self.ready.set()
        self.done.wait()
        self.server.stop(timeout_s=10)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    def kill(self) -> None:
        """SIGKILL: a pod that dies with requests in flight (connections reset, nothing drained)."""
        os.kill(self.server.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)


@contextmanager
def _tritons(repo: Path, hosts: list[str], logs: Path) -> Iterator[list[_Server]]:
    port = _port_free_on_all(hosts)
    servers = [_Server(repo, host, port, logs / f"triton-{host}.log") for host in hosts]
    try:
        for s in servers:
            s.start()  # in parallel: each takes a few seconds to load the model
        for s in servers:
            s.ready.wait(150)
            if s.error is not None:
                raise s.error
        yield servers
    finally:
        for s in servers:
            s.stop()


def _count(endpoint: Endpoint) -> float:
    return server_stats("http", endpoint, "tiny")["count"]


def _regions_on(endpoint: Endpoint) -> list[str]:
    """Our shared-memory regions registered on that server (the server's own names are not ours)."""
    import tritonclient.http as http

    client = http.InferenceServerClient(endpoint.url)
    try:
        return [r["name"] for r in client.get_system_shared_memory_status() if r["name"].startswith("tritonctl-cli-")]
    finally:
        client.close()


def _wait(what: str, check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _detect(video: Path, dns: Dns, port: int, out: Path, *extra: str) -> Any:
    """`tritonctl detect --discover` as a user runs it, in its own process, while the test changes the DNS table."""
    import subprocess

    from conftest import ROOT, TRITONCTL

    args = [*TRITONCTL, "detect", str(video), "--model", "tiny", "--discover", f"{NAME}:{port}",
            "--discover-dns", dns.address, "--discover-interval", "0.2", "--json", str(out / "frames.jsonl"),
            "--summary-json", str(out / "summary.json"), *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _finished(proc: Any, out: Path) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, (stdout, stderr)
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    frames = [json.loads(line)["frame"] for line in (out / "frames.jsonl").read_text().splitlines()]
    assert frames == list(range(len(frames))), "JSON Lines frames are not contiguous"
    [src] = summary["sources"]
    assert src["read"] == src["inferred"] == len(frames) == FRAMES, src
    assert src["interrupted"] == src["failed"] == src["dropped"] == 0, src
    return summary


@pytest.mark.server
def test_detect_spreads_over_every_address_and_follows_pods_that_come_and_go(
        tiny_repo: Path, dns: Dns, tmp_path: Path) -> None:
    from tritonctl.vision.synthetic import write_video, write_yolo_dataset

    video = tmp_path / "long.mp4"
    write_video(video, n_frames=FRAMES, width=256, height=160, seed=3)
    with _tritons(tiny_repo, HOSTS, tmp_path) as (a, b, c, d):
        dns.table.set(NAME, [a.host, b.host, c.host])

        # 1. Three pods: requests spread over all of them.
        (tmp_path / "spread").mkdir()
        summary = _finished(_detect(video, dns, a.port, tmp_path / "spread"), tmp_path / "spread")
        per = summary["per_endpoint"]
        assert set(per) == {s.endpoint.url for s in (a, b, c)}, per
        mean = sum(per.values()) / 3
        spread = max(abs(n - mean) / mean for n in per.values())
        print(f"per endpoint {per}: largest deviation from the mean {spread:.1%}")
        assert spread <= 0.10, per

        # val takes the same flags: its images go to every address too.
        data = write_yolo_dataset(tmp_path / "valdata", 0, 24, imgsz=64, seed=5)
        before = {s.host: _count(s.endpoint) for s in (a, b, c)}
        result = run_cli("val", "-m", "tiny", "--data", str(data), "--out-dir", str(tmp_path / "val"), "--batch", "1",
                         "--discover", f"{NAME}:{a.port}", "--discover-dns", dns.address, timeout=120)
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / "val" / "val.json").read_text())
        assert report["images"] == 24 and report["settings"]["discovery"]["endpoints"] == [
            s.endpoint.url for s in (a, b, c)]
        assert all(_count(s.endpoint) > before[s.host] for s in (a, b, c))

        # 2. Mid-run: a is killed and leaves DNS, b leaves DNS alive (drained), d joins.
        out = tmp_path / "churn"
        out.mkdir()
        before = {s.host: _count(s.endpoint) for s in (b, c, d)}
        proc = _detect(video, dns, a.port, out, "--concurrency", "3")
        try:
            _wait("the run to stream", lambda: _count(c.endpoint) - before[c.host] >= 100)
            a.kill()
            dns.table.set(NAME, [b.host, c.host])
            time.sleep(0.5)
            dns.table.set(NAME, [c.host, d.host])
            _wait("the new pod to serve", lambda: _count(d.endpoint) - before[d.host] >= 50)
            b_after = _count(b.endpoint)
            time.sleep(0.5)  # b left the pool several lookups ago: nothing more reaches it
            assert _count(b.endpoint) == b_after
            assert _regions_on(b.endpoint) == [], "a drained endpoint keeps our shared-memory registrations"
            assert proc.poll() is None, "the video ended before the changes were all made: make it longer"
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        summary = _finished(proc, out)
        assert _count(b.endpoint) == b_after, "the drained pod got requests after it left"
        assert summary["per_endpoint"].get(d.endpoint.url, 0) >= 50, summary["per_endpoint"]
        changes = [(e["change"], e["url"]) for e in summary["discovery"]["events"]]
        assert ("added", d.endpoint.url) in changes and ("removed", a.endpoint.url) in changes
        assert ("removed", b.endpoint.url) in changes
        assert sum(summary["per_endpoint"].values()) == summary["frames"]["inferred"]
        print(f"churn: per endpoint {summary['per_endpoint']}, retries {summary['retries']}")
