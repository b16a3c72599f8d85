"""Redis Streams (redis-py): XADD in a pipeline, each message acknowledged by its id."""

from __future__ import annotations

from typing import Any

from tritonctl.outputs.brokers.outbox import Message
from tritonctl.outputs.brokers.spec import SinkSpec


class RedisPublisher:
    """XADD to a stream, the batch in one pipeline; each returned entry id is the acknowledgement. redis-py's own
    retries are off: the outbox retries, and counts."""

    def __init__(self, spec: SinkSpec, timeout_s: float) -> None:
        self.spec, self.timeout_s = spec, timeout_s
        self.client: Any = None

    def connect(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(host=self.spec.host, port=self.spec.port, username=self.spec.username,
                             password=self.spec.password, socket_timeout=self.timeout_s,
                             socket_connect_timeout=min(self.timeout_s, 2.0), retry=Retry(NoBackoff(), 0))
        client.ping()
        self.client = client

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]:
        pipe = self.client.pipeline(transaction=False)
        for m in batch:
            pipe.xadd(self.spec.target, {"data": m.payload, "id": m.msg_id})
        try:
            ids = pipe.execute(raise_on_error=False)
        except Exception as e:  # the connection went: nothing in this batch is known to be stored
            return 0, e
        for i, entry in enumerate(ids):
            if isinstance(entry, Exception) or not entry:
                return i, entry if isinstance(entry, Exception) else RuntimeError("XADD returned no id")
        return len(batch), None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
