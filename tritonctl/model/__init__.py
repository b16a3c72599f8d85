"""The model: export to ONNX (FP32/FP16), the FP16 parity gate, TensorRT engines, metadata, the Triton model repository."""
