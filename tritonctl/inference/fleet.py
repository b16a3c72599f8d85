"""The inference fleet: every Triton endpoint a command infers on, for any model, with its failover.

One `Fleet` per run (`detect`, `val`, a second model): the endpoint pool (the --url endpoints, and --discover's, kept
up to date by a `Discovery` thread), whether tensors go through shared memory, the inference slots (made all or none),
and `infer`, the one failover loop: a request goes to the least busy healthy endpoint; a transient failure takes that
endpoint out for a back-off and the request goes again (a retry) to another one, or to the same once it is back; while
every endpoint is down the loop waits, interruptibly (`stop`), and gives up after `server_timeout_s` of being down.
Its figures (requests, retries, the longest time every endpoint was down) are `FleetFigures`.

Threads: `infer` is called by the thread that owns the slot (tritonclient's HTTP client is gevent's, bound to it), and
that thread closes the slot too; any number of threads infer through one fleet at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import ServerError
from tritonctl.inference.calls import TransientError
from tritonctl.inference.discovery import DiscoverTarget, Discovery, Resolver
from tritonctl.inference.endpoints import EndpointPool
from tritonctl.inference.slots import Described, InferSlot

SHM_MODES = ("auto", "system", "none")


@dataclass(slots=True)
class FleetFigures:
    """What the fleet did, for a summary: answered requests, failed attempts sent again, and the longest stretch every
    endpoint was down at once (as one waiting request saw it)."""

    requests: int = 0
    retries: int = 0
    all_down_s: float = 0.0


@dataclass(slots=True)
class Answer:
    """A request's outputs by name (views of the slot's shared memory when it is used: read them before its next
    request), the endpoint that answered, and what this request met on the way (0 and 0.0 when all went well)."""

    outputs: dict[str, np.ndarray]
    url: str
    retries: int = 0
    down_s: float = 0.0


def _ignore(text: str) -> None:
    pass


class Fleet:
    """Endpoints, discovery, slots and the failover loop of one run (see the module's note).

    `shm`: auto (shared memory when an endpoint is on this host), system (required: off-host addresses that --discover
    finds are left out) or none. The first --discover lookup happens here, so a name without address fails before
    anything else starts; `start` begins the lookups that follow, `drain` ends them."""

    def __init__(self, endpoints: list[Endpoint], *, protocol: str = "http", shm: str = "auto",
                 discover: DiscoverTarget | None = None, server_timeout_s: float = 30.0,
                 down_hint: str = "raise --server-timeout or restart the server",
                 on_problem: Callable[[str], None] = _ignore, resolver: Resolver | None = None) -> None:
        self.protocol, self.shm, self.server_timeout_s, self.down_hint = protocol, shm, server_timeout_s, down_hint
        self.pool = EndpointPool(endpoints)
        self.discovery: Discovery | None = None
        if discover is not None:
            self.discovery = Discovery(discover, self.pool, resolver, on_problem=on_problem, local_only=shm == "system")
            self.discovery.first()
        self._figures = FleetFigures()
        self._lock = threading.Lock()

    @property
    def use_shm(self) -> bool:
        """Slots get shared-memory regions: required, or asked for and some endpoint is on this host."""
        return self.shm == "system" or (self.shm == "auto" and any(e.local for e in self.pool.endpoints))

    @property
    def figures(self) -> FleetFigures:
        """A copy, consistent in itself, of the figures so far."""
        with self._lock:  # by hand: dataclasses.replace costs microseconds, and this is read after every request
            f = self._figures
            return FleetFigures(f.requests, f.retries, f.all_down_s)

    # ------------------------------------------------------------ slots

    def slot(self, model: Described, batch: int) -> InferSlot:
        return InferSlot(model, batch, self.protocol, self.use_shm, shm_required=self.shm == "system")

    def slots(self, model: Described, batch: int, count: int) -> list[InferSlot]:
        """`count` slots or none: a failure (e.g. /dev/shm full) releases the ones made before it."""
        made: list[InferSlot] = []
        try:
            for _ in range(count):
                made.append(self.slot(model, batch))
        except BaseException:
            for slot in made:
                slot.close()
            raise
        return made

    # ------------------------------------------------------------ the run

    def start(self) -> None:
        """Keep --discover's endpoints up to date from now on."""
        if self.discovery is not None:
            self.discovery.start()

    def drain(self) -> None:
        """No more lookups: the endpoints stay as they are while the last requests finish."""
        if self.discovery is not None:
            self.discovery.close()

    def infer(self, slot: InferSlot, n: int, stop: threading.Event | None = None) -> Answer | None:
        """Rows [:n] of the slot's input buffers, on a healthy endpoint, failing over and waiting with back-off while
        all are down. None only once `stop` is set (the wait ends at once); raises ServerError once every endpoint
        has been unreachable for longer than `server_timeout_s`."""
        stop = stop or threading.Event()
        down_since: float | None = None
        last_error, retries, down_s = "", 0, 0.0
        while not stop.is_set():
            self._release_departed(slot)
            ep = self.pool.acquire()
            if ep is not None:
                if down_since is not None:  # back after an outage: it lasted until now, not until the last wait began
                    down_s = time.monotonic() - down_since
                    self._count(down_s=down_s)
                ok = False
                try:
                    outputs = slot.infer_all(ep, n)
                    ok = True
                except TransientError as exc:
                    last_error = f"{ep.url}: {exc}"
                    retries += 1
                    self._count(retries=1)
                finally:
                    self.pool.release(ep, ok)
                if not ok:
                    continue
                with self._lock:  # inline, not _count: this runs once per request
                    self._figures.requests += 1
                return Answer(outputs, ep.url, retries, down_s)
            now = time.monotonic()
            down_since = down_since or now
            self._count(down_s=now - down_since)
            if now - down_since > self.server_timeout_s:
                hint = f"; {self.down_hint}" if self.down_hint else ""
                raise ServerError(f"no Triton endpoint answered for {now - down_since:.0f} s (last error {last_error})"
                                  f"{hint}")
            stop.wait(min(0.5, self.pool.next_retry_s() + 0.01))
        if down_since is not None:  # stopped while waiting: down until now
            self._count(down_s=time.monotonic() - down_since)
        return None

    def _release_departed(self, slot: InferSlot) -> None:
        """Endpoints left the pool (--discover) since this slot last looked: release what it held there."""
        if slot.pool_version != self.pool.version:
            slot.pool_version = self.pool.version
            slot.forget_others(self.pool.urls())

    def _count(self, retries: int = 0, down_s: float = 0.0) -> None:
        with self._lock:
            f = self._figures
            f.retries += retries
            f.all_down_s = max(f.all_down_s, down_s)
