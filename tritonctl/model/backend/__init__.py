"""Files that run inside Triton's Python backend, copied into a model repository by `tritonctl config`."""
