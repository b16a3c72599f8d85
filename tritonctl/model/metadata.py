"""The metadata every artifact carries (`model.json` beside ONNX files, plans and repository models).

A TensorRT plan cannot carry metadata of its own, so the sidecar is the one place `config`, `build-engine`
and `detect` read class names, image size, tensor names and precision from, instead of asking the user again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.core.errors import BadInput

SIDECAR = "model.json"

# ONNX TensorProto element types -> Triton data type names (without the TYPE_ prefix).
ONNX_TO_TRITON = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "FP64"}
TRITON_TO_NUMPY = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8", "INT8": "int8", "INT16": "int16",
                   "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP64": "float64"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # Triton name: FP32, FP16, UINT8, ...
    shape: tuple[int, ...]  # full shape, batch axis first; -1 where dynamic


@dataclass
class ModelMeta:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    names: dict[int, str] = field(default_factory=dict)
    imgsz: tuple[int, int] | None = None  # (height, width)
    stride: int | None = None
    task: str = "detect"
    precision: str = "fp32"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.inputs) and self.inputs[0].shape[:1] == (-1,)

    def to_json(self) -> str:
        data = asdict(self)
        data["names"] = {str(k): v for k, v in self.names.items()}
        return json.dumps(data, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        tensors = lambda key: [TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in data.get(key, [])]  # noqa: E731
        imgsz = data.get("imgsz")
        return cls(
            inputs=tensors("inputs"), outputs=tensors("outputs"),
            names={int(k): str(v) for k, v in (data.get("names") or {}).items()},
            imgsz=(int(imgsz[0]), int(imgsz[1])) if imgsz else None, stride=data.get("stride"),
            task=data.get("task", "detect"), precision=data.get("precision", "fp32"),
            source=data.get("source", ""), extra=data.get("extra", {}),
        )

    def write(self, folder: Path) -> Path:
        from tritonctl.core.files import write_text

        return write_text(folder / SIDECAR, self.to_json())


def read_sidecar(path: Path) -> ModelMeta | None:
    """The sidecar for a model file (its folder's model.json), or None when there is none."""
    sidecar = path if path.name == SIDECAR else path.parent / SIDECAR
    if not sidecar.is_file():
        return None
    try:
        return ModelMeta.from_dict(json.loads(sidecar.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{sidecar} is not a tritonctl model.json ({exc}): re-run `tritonctl export`") from exc


def read_onnx(path: Path) -> ModelMeta:
    """Tensors and tritonctl metadata straight from an ONNX file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInput(f"{path} is not a readable ONNX model ({exc.__class__.__name__}): export it again") from exc
    return meta_from_proto(model, str(path))


def tensors_of(model: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's real inputs (initializers excluded) and outputs, with Triton dtypes and -1 for symbolic axes."""
    initializers = {i.name for i in model.graph.initializer}

    def info(values: Any) -> list[TensorInfo]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(TensorInfo(v.name, ONNX_TO_TRITON.get(t.elem_type, f"ONNX{t.elem_type}"), dims))
        return out

    return info(model.graph.input), info(model.graph.output)


def meta_from_proto(model: Any, source: str = "") -> ModelMeta:
    inputs, outputs = tensors_of(model)
    props = {p.key: p.value for p in model.metadata_props}
    if "tritonctl" in props:
        stored = ModelMeta.from_dict(json.loads(props["tritonctl"]))
        stored.inputs, stored.outputs = inputs, outputs
        return stored
    return ModelMeta(inputs=inputs, outputs=outputs, source=source)


def load_meta(path: Path) -> ModelMeta:
    """What is known about a model file: the sidecar first (plans have nothing else), then the ONNX itself."""
    if path.suffix == ".onnx":
        meta = read_onnx(path)
        side = read_sidecar(path)
        if side is not None and not meta.names:
            side.inputs, side.outputs = meta.inputs, meta.outputs
            return side
        return meta
    side = read_sidecar(path)
    if side is None:
        raise BadInput(f"no {SIDECAR} beside {path}: a TensorRT plan carries no tensor names; build it with "
                       "`tritonctl build-engine` or put the ONNX export's model.json next to it")
    return side
