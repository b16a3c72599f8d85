"""Where results go: files (video, images, JSON Lines), brokers (MQTT, Redis, NATS), the live view."""
