"""`--discover NAME:PORT`: every address NAME resolves to (A and AAAA) is a Triton endpoint, e.g. the pods behind a
Kubernetes headless Service, and the set is kept up to date while a run goes on.

Why on the client: HTTP/gRPC keep-alive pins a client to the one pod its connection reached, so a ClusterIP Service
leaves the other replicas idle (triton-inference-server/server #6177). Resolving the headless Service gives one
address per ready pod; the endpoint pool balances over them, with its failover.

A `Discovery` re-resolves every `interval_s` in a thread the run owns: an address that appears joins the pool; one
that goes away is drained (no new request; those in flight finish) and then leaves it. A frame whose request failed on
a pod that vanished is sent again to another endpoint by the pool's failover, so none is lost. A lookup that fails, or
answers no address at all, changes nothing: an empty pool could only stop the run, while keeping the endpoints lets
the failover's back-off try them again (a DNS hiccup must not drain a healthy cluster).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from tritonctl.core.endpoint import DEFAULT_PORTS, Endpoint, parse_endpoint
from tritonctl.core.errors import BadInput, ServerError
from tritonctl.inference.endpoints import EndpointPool

DEFAULT_INTERVAL_S = 5.0
DNS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class DiscoverTarget:
    """What `--discover`, `--discover-dns` and `--discover-interval` say."""

    name: str
    port: int
    dns: Endpoint | None = None  # a DNS server to ask directly; None: the system resolver (/etc/hosts, resolv.conf)
    interval_s: float = DEFAULT_INTERVAL_S

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


def parse_discover(text: str, protocol: str = "http", dns: str | None = None,
                   interval_s: float | None = None) -> DiscoverTarget:
    """`NAME[:PORT]` (the port defaults to the protocol's, as --url's does); a DNS server as `host[:port]` (53)."""
    if protocol not in DEFAULT_PORTS:
        raise BadInput(f"--protocol {protocol!r}: choose http or grpc")
    where = parse_endpoint(text, default_port=DEFAULT_PORTS[protocol], flag="--discover")
    server = parse_endpoint(dns, default_port=53, flag="--discover-dns") if dns else None
    interval = DEFAULT_INTERVAL_S if interval_s is None else interval_s
    if not interval > 0:
        raise BadInput(f"--discover-interval {interval:g}: give the seconds between lookups, more than 0 (default 5)")
    return DiscoverTarget(where.host, where.port, server, interval)


# ---------------------------------------------------------------- resolvers


class Resolver(Protocol):
    def resolve(self, name: str) -> list[str]:
        """Every IPv4 and IPv6 address of `name` (empty: the name has none); raises ServerError when it cannot ask."""
        ...


class SystemResolver:
    """The host's resolver (getaddrinfo): /etc/hosts, then the DNS servers of resolv.conf, as every program sees them."""

    def resolve(self, name: str) -> list[str]:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return []  # the name has no address: an answer, not a failure
            raise ServerError(f"cannot resolve {name}: {exc.strerror}") from exc
        return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


class DnsResolver:
    """Asks one DNS server directly (UDP, TCP when the answer was truncated) for A and AAAA records: a cluster's DNS
    from outside it, or a test's own server, without touching the host's resolver configuration."""

    def __init__(self, server: Endpoint, timeout_s: float = DNS_TIMEOUT_S) -> None:
        self.server, self.timeout_s = server, timeout_s

    def resolve(self, name: str) -> list[str]:
        return [a for qtype in ("A", "AAAA") for a in self._ask(name, qtype)]

    def _ask(self, name: str, qtype: str) -> list[str]:
        from dnslib import QTYPE, RCODE, DNSRecord

        question = DNSRecord.question(name, qtype)
        try:
            reply = DNSRecord.parse(question.send(self.server.host, self.server.port, timeout=self.timeout_s))
            if reply.header.tc:  # too many pods for one UDP answer
                reply = DNSRecord.parse(question.send(self.server.host, self.server.port, tcp=True,
                                                      timeout=self.timeout_s))
        except Exception as exc:  # a timeout (OSError), or dnslib's own DNSError on a garbled answer
            raise ServerError(f"DNS server {self.server.url} did not answer for {name} ({type(exc).__name__}: "
                              f"{exc})") from exc
        if reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
            raise ServerError(f"DNS server {self.server.url} answered {RCODE[reply.header.rcode]} for {name}")
        wanted = getattr(QTYPE, qtype)
        return [str(rr.rdata) for rr in reply.rr if rr.rtype == wanted]  # CNAMEs in the chain are followed by the server


def make_resolver(target: DiscoverTarget) -> Resolver:
    return DnsResolver(target.dns) if target.dns is not None else SystemResolver()


def resolve_endpoints(target: DiscoverTarget, resolver: Resolver | None = None) -> list[Endpoint]:
    """The endpoints NAME resolves to now, each address once, in a stable order (IPv4 first, then by address)."""
    addresses = (resolver or make_resolver(target)).resolve(target.name)
    ordered = sorted({ipaddress.ip_address(a) for a in addresses}, key=lambda a: (a.version, a))
    return [Endpoint(str(a), target.port) for a in ordered]


def first_endpoints(target: DiscoverTarget, resolver: Resolver | None = None) -> list[Endpoint]:
    """The lookup a run starts with: one clear line when NAME has no address, before anything else starts."""
    found = resolve_endpoints(target, resolver)
    if not found:
        where = f"DNS server {target.dns.url}" if target.dns else "this host's resolver"
        raise ServerError(f"--discover {target}: {target.name} resolves to no address ({where}); is the headless "
                          "Service's name right, and is a pod ready?")
    return found


# ---------------------------------------------------------------- keeping a pool in step


@dataclass
class DiscoveryEvent:
    at_s: float  # since the discovery started
    change: str  # "added" or "removed"
    url: str


@dataclass
class Discovery:
    """Keeps `pool`'s discovered endpoints equal to what `target` resolves to. Endpoints the pool held before (the
    --url ones) are never drained: they are the user's, not the name's."""

    target: DiscoverTarget
    pool: EndpointPool
    resolver: Resolver | None = None
    on_problem: Callable[[str], None] = lambda text: None
    local_only: bool = False  # --shm system: an address off this host cannot take the run's shared memory
    events: list[DiscoveryEvent] = field(default_factory=list)
    lookups: int = 0
    failures: int = 0
    _owned: set[Endpoint] = field(default_factory=set)
    _static: set[Endpoint] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.resolver = self.resolver or make_resolver(self.target)
        self._static = {u.endpoint for u in self.pool.endpoints}

    def first(self) -> None:
        """The first lookup, before the run starts: an error is raised (a run with no endpoint cannot start)."""
        self.lookups += 1
        found = first_endpoints(self.target, self.resolver)
        if self.local_only:
            found = self._local(found)
        if not found and not self._static:
            raise BadInput(f"--shm system needs servers on this host; --discover {self.target} resolves to none: "
                           "use --shm auto or none")
        self._apply(found)

    def refresh(self) -> None:
        """One lookup; failures and empty answers keep the current endpoints (see the module's note)."""
        self.lookups += 1
        try:
            found = resolve_endpoints(self.target, self.resolver)
        except ServerError as exc:
            self.failures += 1
            self.on_problem(f"--discover {self.target}: {exc}; keeping the endpoints found before")
            return
        if self.local_only:
            found = self._local(found)
        if not found:
            self.on_problem(f"--discover {self.target}: {self.target.name} resolved to no address; keeping the "
                            "endpoints found before")
            return
        self._apply(found)

    def _local(self, found: Iterable[Endpoint]) -> list[Endpoint]:
        kept = [e for e in found if e.local]
        for e in found:
            if not e.local:
                self.on_problem(f"--discover {self.target}: {e.url} is not on this host; --shm system leaves it out")
        return kept

    def _apply(self, found: list[Endpoint]) -> None:
        wanted = set(found)
        for endpoint in found:
            if endpoint not in self._owned and endpoint not in self._static:
                self.pool.add(endpoint)
                self._owned.add(endpoint)
                self._event("added", endpoint)
        for endpoint in sorted(self._owned - wanted, key=str):
            self.pool.drain(endpoint)
            self._owned.discard(endpoint)
            self._event("removed", endpoint)

    def _event(self, change: str, endpoint: Endpoint) -> None:
        self.events.append(DiscoveryEvent(round(time.monotonic() - self._t0, 3), change, endpoint.url))

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="discover", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.target.interval_s):
            try:
                self.refresh()
            except Exception as exc:  # never the run's end: the endpoints found so far go on serving
                self.on_problem(f"--discover {self.target}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop looking up (a lookup under way ends within the DNS timeout)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=DNS_TIMEOUT_S * 2 + 1)

    def report(self) -> dict[str, object]:
        """For the run's summary: the name, the lookups, what joined and what left, when."""
        return {"name": str(self.target), "dns": self.target.dns.url if self.target.dns else "system",
                "interval_s": self.target.interval_s, "lookups": self.lookups, "failed_lookups": self.failures,
                "endpoints": sorted(e.url for e in self._owned),
                "events": [{"at_s": e.at_s, "change": e.change, "url": e.url} for e in self.events]}
