"""Inference: endpoints, discovery, the Triton client with shared memory and failover."""
