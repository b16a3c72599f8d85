"""Deployment: Kubernetes manifests and capacity plans."""
