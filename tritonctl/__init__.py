"""tritonctl: from a YOLO checkpoint to real-time detection on NVIDIA Triton Inference Server."""

__version__ = "0.2.0"
