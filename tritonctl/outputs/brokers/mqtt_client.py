"""MQTT (paho-mqtt): QoS 1, each message acknowledged by its PUBACK."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from typing import Any

from tritonctl.outputs.brokers.outbox import Message
from tritonctl.outputs.brokers.spec import SinkSpec


class MqttPublisher:
    """QoS 1, waiting for each PUBACK. A fresh paho client per connection, so paho never resends on its own: the
    outbox is the only retry path (and the only place a message can be counted)."""

    def __init__(self, spec: SinkSpec, timeout_s: float, batch: int) -> None:
        self.spec, self.timeout_s, self.batch = spec, timeout_s, batch
        self.client: Any = None
        self.lost = threading.Event()  # the connection dropped: stop waiting for acks that cannot come

    def connect(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tritonctl-{uuid.uuid4().hex[:12]}",
                             reconnect_on_failure=False)
        client.max_inflight_messages_set(self.batch)  # a whole batch on the wire before the first PUBACK
        if self.spec.username:
            client.username_pw_set(self.spec.username, self.spec.password)
        connected, lost = threading.Event(), threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else lost.set()
        client.on_disconnect = lambda c, u, f, rc, p: lost.set()
        client.connect(self.spec.host, self.spec.port, keepalive=10)
        client.loop_start()
        self.client, self.lost = client, lost
        deadline = time.monotonic() + self.timeout_s
        while not connected.is_set():
            if lost.is_set() or time.monotonic() > deadline:
                self.close()
                raise ConnectionError(f"MQTT broker {self.spec.host}:{self.spec.port} refused or did not answer")
            connected.wait(0.05)

    def publish(self, batch: list[Message]) -> tuple[int, Exception | None]:
        infos = [self.client.publish(self.spec.target, m.payload, qos=1) for m in batch]
        deadline = time.monotonic() + self.timeout_s
        for i, info in enumerate(infos):
            try:
                while not info.is_published():
                    if self.lost.is_set() or time.monotonic() > deadline:
                        return i, ConnectionError("MQTT connection lost before PUBACK" if self.lost.is_set()
                                                  else f"no PUBACK within {self.timeout_s:g} s")
                    self._quick_ack()
                    info.wait_for_publish(0.002)
            except (RuntimeError, ValueError) as e:  # not queued: the connection is gone
                return i, e
        return len(batch), None

    def _quick_ack(self) -> None:
        """Acknowledge the broker's TCP segments at once. Mosquitto's default (set_tcp_nodelay false) holds the last
        PUBACK of a burst back (Nagle) until our kernel's delayed ACK, 40 ms later: 2,200 messages/s instead of
        26,000 here. Linux leaves quick-ack mode on its own, hence once per wait."""
        sock = self.client.socket() if self.client is not None else None
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
