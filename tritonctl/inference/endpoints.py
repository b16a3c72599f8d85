"""A pool of Triton endpoints: least outstanding requests, failed ones taken out for a back-off and retried later,
endpoints joining and leaving (--discover) while requests go on."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from tritonctl.core.endpoint import Endpoint

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

