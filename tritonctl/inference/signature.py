"""What a served model takes and gives, read from the server: any model's tensors (`ModelSignature`), and the
detector's view on top of it (`ModelInfo`: one image input, a YOLO head, class names).

Shapes are kept without the batch axis: every tensor of a request is [n, *shape]. A model served without batching
(max_batch 0) is read the same way, its first axis taken as the batch (an export fixed at [1,3,H,W] takes n = 1).
A -1 is an axis the model leaves free: an input's must be fixed by the caller before a buffer can be made for it; an
output's is read from the answer (it cannot be given a shared-memory region of its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonctl.core.errors import BadInput, ModelError
from tritonctl.model.metadata import TRITON_TO_NUMPY
from tritonctl.vision.postprocess import head_layout


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, Triton's datatype ("FP32", "INT64", ...) and its shape without the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        if self.datatype not in TRITON_TO_NUMPY or self.datatype == "BYTES":
            raise BadInput(f"tensor {self.name!r} is {self.datatype}: only numeric tensors can be sent")
        return np.dtype(TRITON_TO_NUMPY[self.datatype])

    @property
    def fixed(self) -> bool:
        return -1 not in self.shape

    def row_bytes(self) -> int:
        """Bytes of one batch row (a fixed shape only)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class ModelSignature:
    """Every input and output of a model, in the server's order, and its max batch (0: no batching)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int

    @property
    def signature(self) -> ModelSignature:
        """Itself: a slot takes anything with a signature, this or a `ModelInfo`."""
        return self


def _tensors(entries: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(e["name"], e["datatype"], tuple(int(d) for d in e["shape"][1:])) for e in entries)


def read_signature(model: str, meta: dict[str, Any], config: dict[str, Any]) -> ModelSignature:
    """The signature from the server's model metadata and config (as `served_model` returns them)."""
    inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
    if not inputs or not outputs:
        raise ModelError(f"model {model!r} has {len(inputs)} inputs and {len(outputs)} outputs: it needs one of each")
    if any(not e.get("shape") for e in [*inputs, *outputs]):
        raise ModelError(f"model {model!r} has a tensor without a batch axis: its shapes are "
                         f"{[e.get('shape') for e in [*inputs, *outputs]]}")
    return ModelSignature(model, _tensors(inputs), _tensors(outputs), int(config.get("max_batch_size", 0)))


# ---------------------------------------------------------------- the detector's view


@dataclass(frozen=True)
class ModelInfo:
    """A detector: one image input [B,3,H,W], one YOLO head output, its class names and head layout."""

    name: str
    input_name: str
    input_dtype: str
    height: int
    width: int
    output_name: str
    output_shape: tuple[int, ...]  # without the batch axis
    output_dtype: str
    max_batch: int
    names: dict[int, str]
    layout: str

    @property
    def input_np(self) -> np.dtype:
        return np.dtype(TRITON_TO_NUMPY[self.input_dtype])

    @property
    def output_np(self) -> np.dtype:
        return np.dtype(TRITON_TO_NUMPY[self.output_dtype])

    @property
    def signature(self) -> ModelSignature:
        """The tensors a request carries: the image input at this size, the head output."""
        return ModelSignature(self.name, (TensorSpec(self.input_name, self.input_dtype, (3, self.height, self.width)),),
                              (TensorSpec(self.output_name, self.output_dtype, self.output_shape),), self.max_batch)


def model_info(model: str, meta: dict[str, Any], config: dict[str, Any]) -> ModelInfo:
    """The detector's view of a served model; one clear error for a model that is not a detector."""
    inputs = meta.get("inputs", [])
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise ModelError(f"model {model!r} takes {len(inputs)} inputs {[i.get('shape') for i in inputs]}: "
                         "detect needs one image input [B,3,H,W]")
    if not meta.get("outputs"):
        raise ModelError(f"model {model!r} has no output")
    extra = json.loads(config.get("parameters", {}).get("tritonctl", {}).get("string_value", "{}") or "{}")
    names = {int(k): v for k, v in (extra.get("names") or {}).items()}
    layout = head_layout(tuple(int(d) for d in meta["outputs"][0]["shape"]), len(names) or None)
    sig = read_signature(model, meta, config)
    inp, out = sig.inputs[0], sig.outputs[0]
    height, width = inp.shape[1:]
    if -1 in (height, width):
        size = extra.get("imgsz") or [640, 640]
        height, width = int(size[0]), int(size[1])
    return ModelInfo(model, inp.name, inp.datatype, height, width, out.name, out.shape, out.datatype, sig.max_batch,
                     names, layout)
