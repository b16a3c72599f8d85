"""Small ONNX graphs built in the test session (no downloads): stand-ins with a detection head's shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_detector(path: Path, imgsz: int = 32, n_classes: int = 4, fp16: bool = False, batch: int | None = None) -> Path:
    """images [B,3,S,S] -> output0 [B,4+nc,A]: a 1x1 conv after 4x4 average pooling, deterministic weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dt = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    np_dt = np.float16 if fp16 else np.float32
    channels = 4 + n_classes
    anchors = (imgsz // 4) ** 2
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (channels, 3, 1, 1)).astype(np_dt), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np_dt), "b")
    shape = numpy_helper.from_array(np.array([0, channels, anchors], np.int64), "shape")
    b = batch if batch is not None else "batch"
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
            helper.make_node("Conv", ["pooled", "w", "b"], ["conv"]),
            helper.make_node("Reshape", ["conv", "shape"], ["output0"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", dt, [b, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", dt, [b, channels, anchors])],
        initializer=[weight, bias, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def classifier(path: Path, imgsz: int = 32, n_out: int = 10) -> Path:
    """images [B,3,S,S] -> logits [B,n_out]: a model whose output is no detection head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((n_out, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Conv", ["pooled", "w"], ["conv"]),
            helper.make_node("Flatten", ["conv"], ["output0"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
