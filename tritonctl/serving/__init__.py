"""Serving: the local runtime and the NGC container, server records, status."""
