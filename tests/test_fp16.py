"""FP16 conversion with a region kept in FP32: Cast round trips inside the region are removed, the graph stays valid."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tritonctl.model.fp16 import convert, toposort


def _chain(n: int = 4) -> onnx.ModelProto:
    """x -> Mul(w0) -> Mul(w1) -> ... -> y: every node reads the previous one's output."""
    nodes, inits, prev = [], [], "x"
    for k in range(n):
        inits.append(helper.make_tensor(f"w{k}", TensorProto.FLOAT, [1], [1.0 + k / 1000]))
        nodes.append(helper.make_node("Mul", [prev, f"w{k}"], [f"t{k}"], name=f"mul{k}"))
        prev = f"t{k}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_kept_region_has_casts_only_at_its_border() -> None:
    import onnxruntime as ort

    model = _chain(4)
    half = convert(model, ["mul2", "mul3"], fp16_io=True)
    onnx.checker.check_model(half.model)  # topologically sorted again
    casts = [n for n in half.model.graph.node if n.op_type == "Cast"]
    # one Cast into the kept region (mul1's FP16 output -> FP32), one out of it (y back to FP16)
    assert len(casts) == 2 and half.casts == 2
    producer = {o: n for n in half.model.graph.node for o in n.output}
    assert producer[next(n for n in half.model.graph.node if n.name == "mul3").input[0]].name == "mul2"
    x = np.linspace(1, 100, 8, dtype=np.float32).reshape(1, 8)
    got = ort.InferenceSession(half.model.SerializeToString()).run(None, {"x": x.astype(np.float16)})[0]
    want = x * 1.0 * 1.001 * 1.002 * 1.003
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3)


def test_toposort_restores_order_and_rejects_cycles() -> None:
    model = _chain(3)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    toposort(model.graph)
    assert [n.name for n in model.graph.node] == ["mul0", "mul1", "mul2"]
    model.graph.node[0].input[0] = "y"  # mul0 now reads mul2's output: a cycle
    try:
        toposort(model.graph)
    except ValueError as exc:
        assert "cycle" in str(exc)
    else:
        raise AssertionError("a cycle was accepted")
