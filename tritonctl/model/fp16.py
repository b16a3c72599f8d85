"""FP32 -> FP16 ONNX on the CPU, with a region of the graph kept in FP32 for real.

onnxruntime's converter honours `node_block_list` by wrapping *every* blocked node in its own Cast pair, so a chain
of blocked nodes still rounds each intermediate to FP16 (228 Cast nodes on a YOLOv8n head). We collapse those
pairs: inside the kept region tensors stay FP32, and Casts remain only where FP16 and FP32 nodes meet. The
converter also appends its Casts at the end of the node list (not in topological order, which onnx.checker
rejects), so the result is sorted again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types


@dataclass(frozen=True)
class Fp16Model:
    model: Any  # onnx.ModelProto
    kept_fp32: tuple[str, ...]  # node names computed in FP32
    casts: int  # Cast nodes in the result (each at the border of the kept region, or the model's own)


def convert(model: Any, keep_fp32: list[str], fp16_io: bool) -> Fp16Model:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=not fp16_io, disable_shape_infer=False,
                                         node_block_list=keep_fp32)
    collapse_cast_pairs(converted.graph, set(keep_fp32))
    toposort(converted.graph)
    casts = sum(1 for n in converted.graph.node if n.op_type == "Cast")
    return Fp16Model(converted, tuple(keep_fp32), casts)


def _cast_to(node: Any) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def collapse_cast_pairs(graph: Any, fp32_nodes: set[str]) -> int:
    """Remove every FP32 -> FP16 -> FP32 round trip: a Cast to FP16 of an FP32 tensor whose only readers are Casts
    back to FP32. Their readers read the FP32 tensor instead. Returns the number of Cast nodes removed."""
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    rename: dict[str, str] = {}
    for node in graph.node:
        if _cast_to(node) != FLOAT16 or node.output[0] in graph_outputs:
            continue
        source = producers.get(node.input[0])
        source_is_fp32 = source is not None and (source.name in fp32_nodes or _cast_to(source) == FLOAT)
        users = readers.get(node.output[0], [])
        if not source_is_fp32 or not users or not all(_cast_to(u) == FLOAT for u in users):
            continue
        if any(u.output[0] in graph_outputs for u in users):
            continue
        removed.add(id(node))
        for user in users:
            removed.add(id(user))
            rename[user.output[0]] = node.input[0]
    kept = [n for n in graph.node if id(n) not in removed]
    for node in kept:
        for k, name in enumerate(node.input):
            while name in rename:  # chains: a renamed tensor may itself come from a removed pair
                name = rename[name]
            node.input[k] = name
    del graph.node[:]
    graph.node.extend(kept)
    return len(removed)


def toposort(graph: Any) -> None:
    """Order nodes so that each reads only graph inputs, initializers or earlier nodes' outputs; among the nodes
    that are ready, the original order is kept (Kahn's algorithm with a heap on the original index)."""
    import heapq

    nodes = list(graph.node)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    waiting_on: list[int] = []
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        missing = {name for name in node.input if name not in available}
        waiting_on.append(len(missing))
        for name in missing:
            readers.setdefault(name, []).append(index)
    heap = [i for i, n in enumerate(waiting_on) if n == 0]
    heapq.heapify(heap)
    ordered = []
    while heap:
        index = heapq.heappop(heap)
        ordered.append(nodes[index])
        for name in nodes[index].output:
            for reader in readers.pop(name, []):
                waiting_on[reader] -= 1
                if waiting_on[reader] == 0:
                    heapq.heappush(heap, reader)
    if len(ordered) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting_on[i] > 0)
        raise ValueError(f"the graph has a cycle or an undefined input at node {stuck.name!r}")
    del graph.node[:]
    graph.node.extend(ordered)
