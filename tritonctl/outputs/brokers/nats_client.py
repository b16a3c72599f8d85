"""NATS JetStream (nats-py): each message acknowledged by its PubAck."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from tritonctl.outputs.brokers.outbox import Message
from tritonctl.outputs.brokers.spec import SinkSpec


class NatsPublisher:
    """JetStream publish_async with a Nats-Msg-Id header (JetStream drops a retried duplicate within its window),
    then every PubAck awaited. nats-py is asyncio: this thread runs its own event loop. When no stream captures the
    subject, one is created (TRITONCTL_<subject>, file storage, the server's default limits)."""

    def __init__(self, spec: SinkSpec, timeout_s: float) -> None:
        self.spec, self.timeout_s = spec, timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.js: Any = None

    def _run(self, coro: Any) -> Any:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(asyncio.wait_for(coro, self.timeout_s + 1.0))

    def connect(self) -> None:
        self._run(self._connect())

    async def _connect(self) -> None:
        import nats
        from nats.errors import NoServersError
        from nats.js.errors import NotFoundError

        errors: list[Exception] = []

        async def keep(error: Exception) -> None:  # nats-py logs every error by default; the sink counts them instead
            errors.append(error)

        async def quiet(*_: Any) -> None:
            return None

        # max_reconnect_attempts=0 would make nats-py retry a refused first connection for ever (until our timeout,
        # 6 s later, with no reason given); 1 without a wait: two quick tries, then the socket's own error.
        try:
            self.nc = await nats.connect(f"nats://{self.spec.host}:{self.spec.port}", user=self.spec.username,
                                         password=self.spec.password, connect_timeout=min(self.timeout_s, 2.0),
                                         allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
                                         error_cb=keep, disconnected_cb=quiet, closed_cb=quiet)
        except NoServersError:
            if errors:
                raise errors[-1] from None
            raise
        self.js = self.nc.jetstream(timeout=self.timeout_s)
        try:
            try:
                await self.js.find_stream_name_by_subject(self.spec.target)
            except NotFoundError:
                name = "TRITONCTL_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in self.spec.target)
                await self.js.add_stream(name=name, subjects=[self.spec.target])
        except BaseException:  # no JetStream (a server without -js), or it timed out: no connection left behind
            await self.nc.close()
            self.nc = None
            raise

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]:
        try:
            results = self._run(self._publish(batch))
        except Exception as e:  # a timeout or a dropped connection: nothing in the batch is known to be stored
            return 0, e
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                return i, r if isinstance(r, Exception) else RuntimeError(str(r))
        return len(batch), None

    async def _publish(self, batch: list[Message]) -> list[Any]:
        futures = [await self.js.publish_async(self.spec.target, m.payload, headers={"Nats-Msg-Id": m.msg_id})
                   for m in batch]
        # Without reconnects a dropped connection never answers the futures: stop waiting as soon as it is closed.
        deadline = time.monotonic() + self.timeout_s
        while not all(f.done() for f in futures) and not self.nc.is_closed and time.monotonic() < deadline:
            await asyncio.wait(futures, timeout=0.05)
        return [(f.exception() or f.result()) if f.done() and not f.cancelled()
                else ConnectionError("no JetStream PubAck") for f in futures]

    def close(self) -> None:
        if self.nc is not None:
            nc, self.nc, self.js = self.nc, None, None
            with contextlib.suppress(Exception):  # already gone: closing is best effort
                self._run(nc.close())
        if self.loop is not None:
            self.loop.close()
            self.loop = None
