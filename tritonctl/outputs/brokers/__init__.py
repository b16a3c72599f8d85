"""The message brokers results are published to (`--sink`): the sink URL, the message schema, the bounded outbox
with its delivery accounting, and one client per broker (MQTT, Redis Streams, NATS JetStream). The sink that ties
them together is outputs/events.py."""
