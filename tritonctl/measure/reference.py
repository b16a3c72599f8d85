"""`val --reference X.pt`: the checkpoint's own Ultralytics val on exactly the images scored, checked before the
served run, scored by the same COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonctl.core.errors import BadInput, ToolMissing
from tritonctl.core.extras import install_hint
from tritonctl.measure.coco import Metrics, _match_names, evaluate
from tritonctl.measure.datasets import Dataset
from tritonctl.measure.val_settings import ValSettings


@dataclass(frozen=True)
class Reference:
    """The checkpoint's own val: its predictions scored by the same COCOeval as the served model's (so the difference
    is the deployment's alone), and the figures Ultralytics computes itself, for the record."""

    metrics: Metrics
    ultralytics: dict[str, float]
    predictions: int = 0  # boxes it predicted at the val confidence: 0 scores 0 (and Ultralytics writes no predictions.json)
    class_map: str = "index"  # how its classes were matched to the data's, as for the served model


@dataclass(frozen=True)
class Checkpoint:
    """--reference, loaded (and checked) before the served run, so a checkpoint that cannot be compared fails first."""

    path: Path
    model: Any  # ultralytics.YOLO
    class_map: dict[int, int]  # checkpoint class -> data class
    how: str  # "names" or "index"


def load_reference(s: ValSettings, ds: Dataset, paths: list[Path]) -> Checkpoint:
    """Ultralytics' own loader; a file it cannot load, another task, another class count: one line (BadInput)."""
    assert s.reference is not None
    from collections import Counter

    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ToolMissing(f"--reference needs Ultralytics ({exc}): {install_hint('export')}") from None
    try:
        with _quiet_ultralytics():
            model = YOLO(str(s.reference))
    except Exception as exc:  # Ultralytics' own reasons (truncated, not a checkpoint), several lines with emojis: the first
        raise BadInput(f"--reference {s.reference}: Ultralytics cannot load it: {_reason(exc, s.reference)}") from None
    if model.task != "detect":
        raise BadInput(f"--reference {s.reference} is a {model.task} checkpoint: give the detection checkpoint (.pt) "
                       "the served model came from")
    names = {int(k): str(v) for k, v in model.names.items()}
    if len(names) != len(ds.names):
        raise BadInput(f"--reference {s.reference} has {len(names)} classes, --data {ds.source} has {len(ds.names)}: "
                       "give the checkpoint the served model came from")
    shared = sorted(name for name, n in Counter(p.name for p in paths).items() if n > 1)[:3]
    if shared:  # Ultralytics names its predictions by file name only: they could not be told apart
        raise BadInput(f"--reference: images in different folders share a file name ({', '.join(shared)}), which "
                       "Ultralytics' predictions cannot tell apart; validate the folders one at a time")
    class_map, how = _match_names(names, ds)
    return Checkpoint(s.reference, model, class_map, how)


def _reason(exc: BaseException, path: Path) -> str:
    """The first line of an Ultralytics error, without its emoji and the path the message already names."""
    line = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
    line = " ".join(line.replace("ERROR ❌️", "").replace(str(path), "the file").split())
    return line if line.startswith("the file") else f"{type(exc).__name__}: {line}"


@contextlib.contextmanager
def _quiet_ultralytics() -> Any:
    """Ultralytics logs progress and a summary to stdout: its errors still raise."""
    import logging

    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        LOGGER.setLevel(level)


def reference_val(s: ValSettings, ckpt: Checkpoint, ds: Dataset, gt: dict[str, Any], paths: list[Path],
                  imgsz: int) -> Reference:
    """Ultralytics' val of the checkpoint on exactly these images (a .txt list), square letterbox, same decoding.

    Scored by COCOeval from its predictions.json: Ultralytics' own AP (matching by IoU, its own interpolation) differs
    from COCOeval's on the same predictions: by 0.0003 on 50 demo images, 0.0025 on 300, more than the FP32 gate.
    A checkpoint that predicts nothing (untrained, weak, other classes) gets no predictions.json: it scores 0."""
    folder = (s.out_dir / "reference").resolve()
    m, save_dir = _ultralytics_val(s, ckpt, ds, paths, imgsz, folder)
    chosen = set(paths)
    by_name = {smp.path.name: smp.image_id for smp in ds.samples if smp.path in chosen}
    file = save_dir / "predictions.json"
    preds = json.loads(file.read_text()) if file.is_file() else []
    for p in preds:  # Ultralytics numbers a non-COCO set's classes 1..nc and names images by their file
        p["image_id"] = by_name[p.pop("file_name")]
        p["category_id"] = ds.category_ids[ckpt.class_map[int(p["category_id"]) - 1]]
    metrics, _ = evaluate(gt, preds, ds.names, s.post.max_det)
    own = {"map50_95": float(m.box.map), "map50": float(m.box.map50), "map75": float(m.box.map75),
           "precision": float(m.box.mp), "recall": float(m.box.mr)}
    return Reference(metrics, own, len(preds), ckpt.how)


def _ultralytics_val(s: ValSettings, ckpt: Checkpoint, ds: Dataset, paths: list[Path], imgsz: int,
                     folder: Path) -> tuple[Any, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images.txt").write_text("".join(f"{p.resolve()}\n" for p in paths))
    names = "".join(f"  {i}: {json.dumps(n)}\n" for i, n in ds.names.items())
    data = folder / "data.yaml"
    data.write_text(f"path: {folder}\ntrain: {folder / 'images.txt'}\nval: {folder / 'images.txt'}\nnames:\n{names}")
    try:
        with _quiet_ultralytics():
            m = ckpt.model.val(
                data=str(data), imgsz=imgsz, batch=16, rect=False, conf=s.post.conf, iou=s.post.iou, max_det=s.post.max_det,
                plots=False, save_json=True, device="cpu", workers=0, verbose=False, project=str(folder), name="run",
                exist_ok=True)
    except Exception as exc:  # checked up front what we could; Ultralytics' own refusals of these images, in one line
        raise BadInput(f"--reference {ckpt.path}: Ultralytics' val of it failed: {_reason(exc, ckpt.path)}") from None
    return m, folder / "run"


# ---------------------------------------------------------------- one run


