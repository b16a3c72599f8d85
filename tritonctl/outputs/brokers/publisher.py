"""What a broker client does for the sink (connect, publish a batch and say how much of it was acknowledged, close),
and the client for a sink URL."""

from __future__ import annotations

from typing import Protocol

from tritonctl.outputs.brokers.mqtt_client import MqttPublisher
from tritonctl.outputs.brokers.nats_client import NatsPublisher
from tritonctl.outputs.brokers.outbox import Message
from tritonctl.outputs.brokers.redis_client import RedisPublisher
from tritonctl.outputs.brokers.spec import SinkSpec


class Publisher(Protocol):
    """One broker connection, used from the publisher thread only."""

    def connect(self) -> None: ...

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]: ...  # (acked prefix, error)

    def close(self) -> None: ...


def make_publisher(spec: SinkSpec, timeout_s: float, batch: int) -> Publisher:
    if spec.kind == "mqtt":
        return MqttPublisher(spec, timeout_s, batch)
    if spec.kind == "redis":
        return RedisPublisher(spec, timeout_s)
    return NatsPublisher(spec, timeout_s)
