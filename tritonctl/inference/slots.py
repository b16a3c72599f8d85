"""An inference slot: one request in flight for any model's signature, its tensors in shared memory when the server is
on this host, over the network otherwise; the connections and registrations it holds per endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tritonctl.core.errors import BadInput, ModelError, TritonctlError
from tritonctl.inference.calls import RegionLost, TransientError, close_client, make_client, protocol_module, triton_call
from tritonctl.inference.endpoints import Upstream
from tritonctl.inference.regions import (
    REMOVED_ELSEWHERE,
    Region,
    create_regions,
    destroy_regions,
    region_exists,
    register_region,
    shm_file,
    unregister_regions,
)
from tritonctl.inference.signature import ModelSignature, TensorSpec
from tritonctl.inference.transport import ShmInferConnection, transport_setting


class Described(Protocol):
    """A model description that knows its tensors: a `ModelSignature`, or the detector's `ModelInfo`."""

    @property
    def signature(self) -> ModelSignature: ...


@dataclass
class InferSlot:
    """One request in flight: a batch buffer per input and, in shared memory, a region per output of fixed shape.

    `use_shm`: create regions (the caller knows an endpoint is local). A local server that cannot open them (e.g. in a
    container without the host's /dev/shm) gets tensors over the network instead, unless `shm_required`. An output
    whose shape the model leaves free comes back over the network whatever `use_shm` says."""

    info: Described
    batch: int
    protocol: str
    use_shm: bool
    shm_required: bool = False
    bytes_sent: int = 0
    pool_version: int = field(init=False, default=0)  # the endpoint pool's, when it last released departed endpoints
    problems: list[str] = field(init=False, default_factory=list)
    sig: ModelSignature = field(init=False)
    buffers: dict[str, np.ndarray] = field(init=False, default_factory=dict)  # per input name: [batch, *shape]
    _ins: list[Region] = field(init=False, default_factory=list)
    _outs: dict[str, Region] = field(init=False, default_factory=dict)
    _clients: dict[str, Any] = field(init=False, default_factory=dict)
    _registered: dict[str, int] = field(init=False, default_factory=dict)
    _wire_only: set[str] = field(init=False, default_factory=set)
    _fast: dict[str, ShmInferConnection] = field(init=False, default_factory=dict)
    _direct: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.sig = self.info.signature
        loose = [t.name for t in self.sig.inputs if not t.fixed]
        if loose:
            raise BadInput(f"model {self.sig.name!r}: input {', '.join(loose)} has a free axis; give it a size first")
        self._direct = transport_setting() == "direct"
        if not self.use_shm:
            self.buffers = {t.name: np.empty((self.batch, *t.shape), t.dtype) for t in self.sig.inputs}
            return
        outs = [t for t in self.sig.outputs if t.fixed]
        wanted = [("in", (self.batch, *t.shape), t.dtype) for t in self.sig.inputs]
        wanted += [("out", (self.batch, *t.shape), t.dtype) for t in outs]
        regions = create_regions(wanted)
        self._ins = regions[:len(self.sig.inputs)]
        self._outs = {t.name: r for t, r in zip(outs, regions[len(self.sig.inputs):], strict=True)}
        self.buffers = {t.name: r.array for t, r in zip(self.sig.inputs, self._ins, strict=True)}

    @property
    def inputs(self) -> np.ndarray:
        """The first input's batch buffer (the detector's image batch): fill rows [:n], then infer."""
        return self.buffers[self.sig.inputs[0].name]

    @property
    def _in(self) -> Region | None:
        return self._ins[0] if self._ins else None

    @property
    def _out(self) -> Region | None:
        return self._outs.get(self.sig.outputs[0].name)

    def _regions(self) -> list[Region]:
        return [*self._ins, *self._outs.values()]

    def _uses_shm(self, ep: Upstream) -> bool:
        return bool(self._ins) and ep.local and ep.url not in self._wire_only

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
                register_region(client, ep.url, region)
        except TransientError:
            raise
        except TritonctlError as exc:  # the server answers but cannot map the region
            # Not the server's fault when our own region is gone from /dev/shm (another process removed it)
            gone = next((r for r in self._regions() if not region_exists(r)), None)
            cause = f"shared-memory region {shm_file(gone)} was {REMOVED_ELSEWHERE}" if gone else \
                f"Triton at {ep.url} cannot use this host's shared memory ({exc})"
            if self.shm_required:
                raise BadInput(f"--shm system: {cause}; {'run again' if gone else 'pass --shm none'}") from exc
            self._wire_only.add(ep.url)
            self.problems.append(f"{cause}: tensors sent to {ep.url} over the network" if gone else
                                 f"{ep.url} refused shared memory, tensors sent over the network")
            return
        self._registered[ep.url] = ep.generation

    def infer(self, ep: Upstream, n: int) -> np.ndarray:
        """Run rows [:n] of the input buffers; returns the first output's rows (a view of shared memory when used)."""
        return self.infer_all(ep, n)[self.sig.outputs[0].name]

    def infer_all(self, ep: Upstream, n: int) -> dict[str, np.ndarray]:
        """Run rows [:n] of the input buffers; every output's rows by name (views of shared memory when used)."""
        try:
            return self._infer_once(ep, n)
        except RegionLost:
            self._registered.pop(ep.url, None)  # the server restarted between two requests: register again, once
            return self._infer_once(ep, n)

    def _infer_once(self, ep: Upstream, n: int) -> dict[str, np.ndarray]:
        with self._call(ep, f"infer with model {self.sig.name!r}"):
            client = self._client(ep)
            shm = self._uses_shm(ep)
            if shm and self._direct and self.protocol == "http" and len(self._outs) == len(self.sig.outputs):
                fast = self._fast.get(ep.url)
                if fast is None:
                    fast = self._fast[ep.url] = ShmInferConnection(ep.endpoint)
                fast.request(self.sig, self._ins, list(self._outs.values()), n)
                return {name: r.array[:n] for name, r in self._outs.items()}
            result = client.infer(self.sig.name, self._request_inputs(n, shm),
                                  outputs=[self._requested(t, n, shm) for t in self.sig.outputs])
        if not shm:
            self.bytes_sent += sum(n * b[0].nbytes for b in self.buffers.values())
        return {t.name: self._answer(t, result, n, shm) for t in self.sig.outputs}

    def _request_inputs(self, n: int, shm: bool) -> list[Any]:
        module, made = protocol_module(self.protocol), []
        for k, t in enumerate(self.sig.inputs):
            inp = module.InferInput(t.name, [n, *t.shape], t.datatype)
            if shm:
                inp.set_shared_memory(self._ins[k].name, n * self._ins[k].array[0].nbytes)
            else:
                inp.set_data_from_numpy(self.buffers[t.name][:n])
            made.append(inp)
        return made

    def _requested(self, t: TensorSpec, n: int, shm: bool) -> Any:
        module = protocol_module(self.protocol)
        out = module.InferRequestedOutput(t.name) if self.protocol == "grpc" else \
            module.InferRequestedOutput(t.name, binary_data=True)
        if shm and (region := self._outs.get(t.name)) is not None:
            out.set_shared_memory(region.name, n * region.array[0].nbytes)
        return out

    def _answer(self, t: TensorSpec, result: Any, n: int, shm: bool) -> np.ndarray:
        if shm and (region := self._outs.get(t.name)) is not None:
            return region.array[:n]
        array = result.as_numpy(t.name)
        if array is None:
            raise ModelError(f"Triton returned no {t.name!r} for model {self.sig.name!r}")
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
                problems += unregister_regions(client, url, self._regions(), gone_ok=True)
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
                problems += unregister_regions(client, url, self._regions())
            problems += [p for p in [close_client(client, url)] if p]
        for fast in self._fast.values():
            fast.close()
        self._fast.clear()
        problems += destroy_regions(self._regions())
        self._clients.clear()
        self._ins, self._outs = [], {}
        return problems
