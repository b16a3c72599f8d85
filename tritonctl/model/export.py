"""`tritonctl export`: a YOLO .pt -> model_fp32.onnx and model_fp16.onnx with a dynamic batch axis and metadata.

Ultralytics' own exporter writes the FP32 graph (it knows every YOLO head); we pin the spatial axes so that only
the batch is dynamic (what TensorRT profiles and Triton's batcher want), convert FP16 from the FP32 graph (no GPU
needed), stamp our metadata into both, and check FP16 against FP32 (parity.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonctl.core.errors import BadInput, ModelError
from tritonctl.core.files import commit, write_text
from tritonctl.model.metadata import ModelMeta, tensors_of
from tritonctl.model.parity import ParityTolerance

if TYPE_CHECKING:
    from tritonctl.model.fp16 import Fp16Model

SUPPORTED_TASKS = ("detect",)
FILES = {"fp32": "model_fp32.onnx", "fp16": "model_fp16.onnx"}


@dataclass(frozen=True)
class ExportSettings:
    model_path: Path
    out_dir: Path
    imgsz: int | None = None
    opset: int | None = None
    simplify: bool = True
    dynamic: bool = True
    batch: int = 1  # the fixed batch of a --static export
    precisions: tuple[str, ...] = ("fp32", "fp16")  # what is built (FP16 is converted from FP32)
    keep: tuple[str, ...] = ("fp32", "fp16")  # what is written
    fp16_io: bool = True
    check_images: Path | None = None
    n_check: int = 64  # generated scenes: 16 left the mAP difference within ±0.009 between seeds, 64 within ±0.004
    tolerance: ParityTolerance = field(default_factory=ParityTolerance)
    strict: bool = False  # "not judged" (too few detections to compare) is an error

    @classmethod
    def create(cls, *, precision: str = "both", **kw: Any) -> ExportSettings:
        from tritonctl.core.extras import require

        require("export", "tritonctl export")
        precisions = {"both": ("fp32", "fp16"), "fp32": ("fp32",), "fp16": ("fp32", "fp16")}.get(precision)
        if precisions is None:
            raise BadInput(f"--precision {precision!r}: choose fp32, fp16 or both")
        s = cls(precisions=precisions, keep=precisions if precision != "fp16" else ("fp16",), **kw)
        if not s.model_path.is_file():
            raise BadInput(f"checkpoint {s.model_path} does not exist: pass the .pt to export with --model-path")
        if s.model_path.suffix != ".pt":
            raise BadInput(f"{s.model_path.name} is not a PyTorch checkpoint (.pt): export takes a YOLO .pt file")
        if s.imgsz is not None and (s.imgsz < 32 or s.imgsz % 32):
            raise BadInput(f"--imgsz {s.imgsz} must be a multiple of 32, at least 32")
        if s.check_images is not None and not s.check_images.is_dir():
            raise BadInput(f"--check-images {s.check_images} is not a folder of images")
        t = s.tolerance
        if not 0 < t.min_matched <= 1 or t.max_map_drop < 0 or not 0 <= t.max_box_shift <= 1:
            raise BadInput("parity tolerance: --min-matched in (0, 1], --max-map-drop >= 0, --max-box-shift in 0..1 "
                           "(a fraction of the input size)")
        _check_writable(s.out_dir)
        return s


def _check_writable(folder: Path) -> None:
    """Asked of the folder, or of its nearest existing parent, without creating anything: an export refused here, or
    failing on its checkpoint, leaves no empty --out-dir behind."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise BadInput(f"cannot write to --out-dir {folder} ({existing} is not a folder): pick a writable folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write to --out-dir {folder} (permission denied on {existing}): pick a writable folder")


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _make_out_dir(folder: Path) -> Path | None:
    """Create --out-dir; returns the topmost folder this created (None: it existed), for `_remove_made`."""
    top = _nearest_existing(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot write to --out-dir {folder} ({exc.strerror}): pick a writable folder") from exc
    if top == folder:
        return None
    return next(p for p in [folder, *folder.parents] if p.parent == top)


def _remove_made(folder: Path, top: Path | None) -> None:
    """Remove the folders `_make_out_dir` created, as long as they are empty (a failed export wrote nothing there)."""
    if top is None:
        return
    for path in [folder, *folder.parents]:
        try:
            path.rmdir()
        except OSError:  # not empty, or gone
            return
        if path == top:
            return


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    meta: ModelMeta | None = None
    timings: dict[str, float] = field(default_factory=dict)
    parity: Any = None


def load_checkpoint(path: Path, shown_as: Path | None = None) -> Any:
    """The Ultralytics model in a checkpoint, refusing what we cannot serve as a detector."""
    shown = shown_as or path
    try:
        from ultralytics import YOLO

        model = YOLO(str(path))
    except Exception as exc:
        raise BadInput(f"{shown} is not a checkpoint Ultralytics can load ({_root_cause(exc, path, shown)})") from exc
    if model.task not in SUPPORTED_TASKS:
        raise ModelError(f"{shown.name} is a {model.task} model: tritonctl exports detection models only "
                         f"(YOLOv5u/v8/v9/v10/11 detect)")
    return model


# Ultralytics' own messages start with "ERROR ❌️" (emoji included): its wording, not the cause.
_ULTRALYTICS_PREFIX = re.compile(r"^\s*ERROR\W*\s")


def _root_cause(exc: BaseException, loaded: Path, shown: Path) -> str:
    """`Class: first line` of the innermost exception (what Ultralytics wraps), naming the user's file, not the copy
    in our temp folder."""
    root, seen = exc, {id(exc)}
    while (inner := root.__cause__ or root.__context__) is not None and id(inner) not in seen:
        root = inner
        seen.add(id(inner))
    text = (str(root).strip().splitlines() or ["no detail"])[0]
    text = _ULTRALYTICS_PREFIX.sub("", text.replace(str(loaded), str(shown)).replace(str(loaded.parent), str(shown.parent)))
    return f"{type(root).__name__}: {text if len(text) <= 160 else text[:159] + '…'}"


def _pin_spatial_axes(model: Any, imgsz: tuple[int, int], dynamic: bool) -> None:
    """Keep only the batch axis dynamic: fixed H and W on the input, fixed sizes on the outputs' other axes."""
    import numpy as np
    import onnxruntime as ort

    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = imgsz
    # Shape inference cannot see through every head's reshapes: one real run at batch 1 tells the output sizes.
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros((1, 3, *imgsz), np.float32) for i in session.get_inputs()}
    shapes = {o.name: r.shape for o, r in zip(session.get_outputs(), session.run(None, feed), strict=True)}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for axis, size in enumerate(shapes.get(value.name, ())):
            if axis > 0:
                dims[axis].dim_value = size
        if dynamic:
            dims[0].dim_param = "batch"


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Ultralytics' exporter prints its own banner and hints; our progress lines replace them."""
    import logging

    def run(*args: Any, **kwargs: Any) -> Any:
        from ultralytics.utils import LOGGER

        level = LOGGER.level
        LOGGER.setLevel(logging.ERROR)
        try:
            return fn(*args, **kwargs)
        finally:
            LOGGER.setLevel(level)

    return run


def _stamp(model: Any, meta: ModelMeta) -> None:
    props = {p.key: p for p in model.metadata_props}
    entry = props.get("tritonctl") or model.metadata_props.add(key="tritonctl")
    entry.value = meta.to_json()


def _save(model: Any, path: Path) -> None:
    import onnx

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        onnx.save(model, str(tmp))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _head_nodes(model: Any) -> list[str]:
    """The nodes of the detection head (Ultralytics names them /model.<last index>/...)."""
    names = [n.name for n in model.graph.node]
    indexes = [int(n.split("/")[1].split(".")[1]) for n in names if n.startswith("/model.") and n.count("/") > 1
               and n.split("/")[1].split(".")[1].isdigit()]
    if not indexes:
        return []
    prefix = f"/model.{max(indexes)}/"
    return [n for n in names if n.startswith(prefix)]


def _to_fp16(model: Any, fp16_io: bool) -> Fp16Model:
    from tritonctl.model.fp16 import convert

    # The detection head stays FP32: DFL turns box logits into distances times the stride (32 px per bin at the
    # coarsest level) and class scores decide which anchor wins NMS. It is a small share of the compute; most of
    # the FP16 box shift comes from the backbone and depends on the CPU's FP16 kernels, so the parity gate judges
    # matched detections and mAP rather than a sub-pixel shift.
    return convert(model, _head_nodes(model), fp16_io)


# Ultralytics stamps the export time into the metadata; everything else it writes depends on the checkpoint only.
_UNSTABLE_PROPS = ("date",)


def _make_deterministic(model: Any) -> None:
    """Same checkpoint and flags -> byte-identical file: drop the export time and the intermediate shape records
    (value_info), whose number differs from run to run; ONNX Runtime and TensorRT infer shapes themselves."""
    keep = [p for p in model.metadata_props if p.key not in _UNSTABLE_PROPS]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    del model.graph.value_info[:]


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(s: ExportSettings, progress: Callable[[str, float], None] = lambda step, secs: None) -> ExportResult:
    made = _make_out_dir(s.out_dir)
    try:
        return _export(s, progress)
    except BaseException:
        _remove_made(s.out_dir, made)
        raise


def _export(s: ExportSettings, progress: Callable[[str, float], None]) -> ExportResult:
    result = ExportResult()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=s.out_dir, prefix=".export-") as tmp:
        # Ultralytics writes its ONNX next to the checkpoint it loaded: load a copy in our temp folder, once.
        pt_copy = Path(tmp) / s.model_path.name
        shutil.copy2(s.model_path, pt_copy)
        yolo = load_checkpoint(pt_copy, shown_as=s.model_path)
        imgsz = s.imgsz or int(yolo.overrides.get("imgsz") or getattr(yolo.model, "args", {}).get("imgsz", 640))
        progress("load checkpoint", time.perf_counter() - t0)

        t = time.perf_counter()
        fp32 = _export_fp32(yolo, s, imgsz)
        progress("export FP32 ONNX", time.perf_counter() - t)
        inputs, outputs = tensors_of(fp32)  # after pinning: only the batch axis is dynamic
        meta = ModelMeta(inputs=inputs, outputs=outputs, names={int(k): str(v) for k, v in yolo.names.items()},
                         imgsz=(imgsz, imgsz), stride=int(max(yolo.model.stride)), task=yolo.task, precision="fp32",
                         source=s.model_path.name, extra={"ultralytics_model": type(yolo.model).__name__})
        metas = {"fp32": meta}
        models = {"fp32": fp32}
        if "fp16" in s.precisions:
            t = time.perf_counter()
            half = _to_fp16(fp32, s.fp16_io)
            models["fp16"] = half.model
            del half.model.graph.value_info[:]
            metas["fp16"] = _meta_for(meta, half.model, "fp16", {"fp16": {
                "kept_fp32_nodes": list(half.kept_fp32), "cast_nodes": half.casts}})
            progress("convert to FP16", time.perf_counter() - t)
        staged = {}
        for precision, model in models.items():
            _stamp(model, metas[precision])
            staged[precision] = Path(tmp) / FILES[precision]
            _save(model, staged[precision])
        if "fp16" in staged:
            from tritonctl.model.parity import check_parity

            t = time.perf_counter()
            result.parity = check_parity(staged["fp32"], staged["fp16"], s)
            progress("FP16 vs FP32 parity", time.perf_counter() - t)
        for precision in s.keep:
            result.files[precision] = commit(staged[precision], s.out_dir / staged[precision].name)
    result.meta = meta
    result.files["metadata"] = _write_sidecar(s.out_dir, meta, {k: metas[k] for k in s.keep}, result.files)
    if result.parity is not None:
        result.files["parity"] = s.out_dir / "parity.json"
        result.parity.write(result.files["parity"])
    result.timings["total"] = time.perf_counter() - t0
    return result


def _export_fp32(yolo: Any, s: ExportSettings, imgsz: int) -> Any:
    import onnx

    # A head with an NMS-free branch (YOLOv10) exports it: [B, 300, 6] boxes that need no NMS downstream.
    end2end = {"nms": False} if hasattr(yolo.model.model[-1], "one2one_cv2") else {}
    exported = _quiet(yolo.export)(format="onnx", imgsz=imgsz, dynamic=s.dynamic, batch=s.batch, simplify=s.simplify,
                                   opset=s.opset, half=False, device="cpu", verbose=False, **end2end)
    fp32 = onnx.load(str(exported))
    _make_deterministic(fp32)
    _pin_spatial_axes(fp32, (imgsz, imgsz), s.dynamic)
    return fp32


def _write_sidecar(folder: Path, meta: ModelMeta, metas: dict[str, ModelMeta], files: dict[str, Path]) -> Path:
    """model.json: the model's metadata, and per file its tensors, sha256 and (FP16) the nodes kept in FP32."""
    entries = {}
    for precision, m in metas.items():
        data = json.loads(m.to_json())
        entries[precision] = {"file": FILES[precision], "sha256": _sha256(files[precision]), "inputs": data["inputs"],
                              "outputs": data["outputs"], **m.extra.get("fp16", {})}
    return write_text(folder / "model.json", json.dumps({**json.loads(meta.to_json()), "files": entries}, indent=2))


def _meta_for(meta: ModelMeta, model: Any, precision: str, extra: dict[str, Any] | None = None) -> ModelMeta:
    inputs, outputs = tensors_of(model)
    return ModelMeta(inputs=inputs, outputs=outputs, names=meta.names, imgsz=meta.imgsz, stride=meta.stride,
                     task=meta.task, precision=precision, source=meta.source, extra={**meta.extra, **(extra or {})})
