"""Measurement: perf_analyzer sweeps, accuracy (val) on datasets."""
