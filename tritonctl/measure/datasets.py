"""Labelled image sets for `tritonctl val`: an Ultralytics dataset yaml (YOLO txt labels) or a COCO annotation json.

Both become one `Dataset`: image paths with their ground-truth boxes, and the class names in the model's order.
Ultralytics' own rules are followed where a YOLO set is ambiguous, so `val` and Ultralytics' val read the same set:
labels live where `/images/` becomes `/labels/`, an image without a label file is a background image, a split is a
folder of images, a .txt list of them, or a list of either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.core.errors import BadInput

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".dng", ".mpo", ".pfm"})


@dataclass(frozen=True)
class Sample:
    """One image and its ground truth: boxes xyxy, normalized to 0..1 (YOLO) or in pixels (COCO)."""

    image_id: int
    path: Path
    classes: np.ndarray  # [n] int: class index in `Dataset.names`
    boxes: np.ndarray  # [n, 4] float xyxy
    normalized: bool

    def pixel_boxes(self, height: int, width: int) -> np.ndarray:
        if not self.normalized:
            return self.boxes.astype(np.float64)
        return self.boxes.astype(np.float64) * np.array([width, height, width, height], np.float64)


@dataclass(frozen=True)
class Dataset:
    source: Path
    kind: str  # "yolo" or "coco"
    split: str
    names: dict[int, str]
    samples: list[Sample]
    category_ids: list[int]  # COCO category id of class index i (YOLO: i itself)


def load_dataset(data: Path, split: str, images: Path | None = None) -> Dataset:
    """Read a dataset yaml or a COCO json; BadInput (one line) for anything that cannot be used."""
    if not data.is_file():
        raise BadInput(f"--data {data}: no such file (give an Ultralytics dataset yaml or a COCO annotation json)")
    if data.suffix.lower() == ".json":
        return load_coco(data, images)
    if data.suffix.lower() in (".yaml", ".yml"):
        return load_yolo(data, split)
    raise BadInput(f"--data {data}: expected a dataset .yaml or a COCO .json")


# ---------------------------------------------------------------- YOLO


def _read_yaml(path: Path) -> dict[str, Any]:
    """PyYAML when installed (Ultralytics brings it); otherwise the flat subset dataset yamls use, so the core install
    (no PyYAML) still reads them."""
    text = path.read_text(errors="replace")
    try:
        import yaml
    except ImportError:
        return _simple_yaml(text, path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"--data {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise BadInput(f"--data {path}: expected a mapping with names and splits, got {type(data).__name__}")
    return data


def _scalar(text: str) -> Any:
    text = text.strip().strip("'\"")
    return int(text) if text.lstrip("-").isdigit() else text


def _simple_yaml(text: str, path: Path) -> dict[str, Any]:
    data: dict[str, Any] = {}
    block: str | None = None
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if line[0] in " \t" and block is not None:
            item = line.strip()
            if item.startswith("- "):
                data[block] = [*(data[block] or []), _scalar(item[2:])]
            elif ":" in item:
                key, value = item.split(":", 1)
                data[block] = {**(data[block] or {}), _scalar(key): _scalar(value)}
            continue
        if ":" not in line:
            raise BadInput(f"--data {path}: cannot read line {line.strip()!r} (expected key: value)")
        key, value = (part.strip() for part in line.split(":", 1))
        if value.startswith("[") and value.endswith("]"):
            data[key] = [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
        elif value:
            data[key] = _scalar(value)
        else:
            data[key], block = None, key
            continue
        block = None
    return data


def _yolo_names(data: dict[str, Any], path: Path) -> dict[int, str]:
    names = data.get("names")
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        try:
            return {int(k): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}
        except ValueError:
            raise BadInput(f"--data {path}: class ids under names must be whole numbers") from None
    if isinstance(data.get("nc"), int):
        return {i: f"class{i}" for i in range(data["nc"])}
    raise BadInput(f"--data {path}: no class names (a `names:` list or mapping)")


def _root(data: dict[str, Any], path: Path) -> Path:
    root = Path(str(data.get("path") or path.parent)).expanduser()
    if root.is_absolute():
        return root
    beside = path.parent / root  # relative to the yaml first, as a set moved with its yaml still reads
    return beside if beside.exists() else root


def _split_images(entry: Any, root: Path, path: Path, split: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    found: list[Path] = []
    for item in entries:
        where = Path(str(item)).expanduser()
        where = where if where.is_absolute() else root / where
        if where.is_dir():
            found += sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif where.suffix == ".txt" and where.is_file():
            lines = [ln.strip() for ln in where.read_text().splitlines() if ln.strip()]
            found += [p if p.is_absolute() else where.parent / p for p in map(Path, lines)]
        else:
            raise BadInput(f"--data {path}: split {split!r} names {where}, which is neither an image folder nor a .txt list")
    return found


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `/images/` of the path becomes `/labels/`, the suffix `.txt`."""
    text = str(image)
    head, sep, tail = text.rpartition("/images/")
    return Path(f"{head}/labels/{tail}" if sep else text).with_suffix(".txt")


def _read_labels(file: Path, nc: int) -> tuple[np.ndarray, np.ndarray]:
    if not file.is_file():
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float64)
    rows = []
    for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if len(values) != 5 or not values[0].is_integer() or not 0 <= values[0] < nc:
            raise BadInput(f"label {file}:{number}: {line.strip()!r} is not `class cx cy w h` with a class id below {nc}")
        rows.append(values)
    labels = np.array(rows, np.float64).reshape(-1, 5)
    cx, cy, w, h = labels[:, 1], labels[:, 2], labels[:, 3], labels[:, 4]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clip(0, 1)
    return labels[:, 0].astype(np.int64), boxes


def load_yolo(path: Path, split: str) -> Dataset:
    data = _read_yaml(path)
    names = _yolo_names(data, path)
    if split not in data or not data[split]:
        present = ", ".join(k for k in ("train", "val", "test") if data.get(k)) or "none"
        raise BadInput(f"--data {path} has no {split!r} split (it has: {present}); pass --split")
    images = _split_images(data[split], _root(data, path), path, split)
    if not images:
        raise BadInput(f"--data {path}: split {split!r} holds no images")
    label_dirs = {label_path(p).parent for p in images}
    if not any(d.is_dir() for d in label_dirs):
        raise BadInput(f"--data {path}: no labels folder for split {split!r} (expected {sorted(label_dirs)[0]}, "
                       "where /images/ becomes /labels/)")
    samples = [Sample(i, p, *_read_labels(label_path(p), len(names)), normalized=True) for i, p in enumerate(images)]
    return Dataset(path, "yolo", split, names, samples, list(names))


# ---------------------------------------------------------------- COCO


def _coco_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"--data {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise BadInput(f"--data {path}: not a COCO annotation file (needs `images`, `annotations` and `categories` lists)")
    return data


def _image_folder(path: Path, images: Path | None, first: str) -> Path:
    """Where the json's file_names are: --images, else the json's folder or an images/ folder beside it or above it."""
    if images is not None:
        if not images.is_dir():
            raise BadInput(f"--images {images}: no such folder")
        return images
    for folder in (path.parent, path.parent / "images", path.parent.parent / "images", path.parent.parent):
        if (folder / first).is_file():
            return folder
    raise BadInput(f"--data {path}: cannot find image {first!r} beside it or in images/; pass --images FOLDER")


def load_coco(path: Path, images: Path | None = None) -> Dataset:
    data = _coco_json(path)
    try:
        return _coco_dataset(path, data, images)
    except (KeyError, TypeError, ValueError) as exc:  # an entry without a field, or of another shape
        what = f"no {exc.args[0]!r} field" if isinstance(exc, KeyError) else " ".join(str(exc).split())
        raise BadInput(f"--data {path}: an entry is not COCO ({what}); images need id and file_name, annotations "
                       "image_id, category_id and bbox [x, y, w, h], categories id") from None


def _coco_dataset(path: Path, data: dict[str, Any], images: Path | None) -> Dataset:
    if not data["images"]:
        raise BadInput(f"--data {path}: holds no images")
    cats = sorted(int(c["id"]) for c in data["categories"])
    names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    index = {cid: i for i, cid in enumerate(cats)}  # the model's class i is the i-th category by id (Ultralytics' rule)
    folder = _image_folder(path, images, str(data["images"][0]["file_name"]))
    per_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):
        per_image.setdefault(int(ann["image_id"]), []).append(ann)
    samples = []
    for img in data["images"]:
        anns = [a for a in per_image.get(int(img["id"]), []) if not a.get("iscrowd", 0)]
        if any(int(a["category_id"]) not in index for a in anns):
            raise BadInput(f"--data {path}: image {img['id']} has an annotation of a category not in `categories`")
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        classes = np.array([index[int(a["category_id"])] for a in anns], np.int64)
        samples.append(Sample(int(img["id"]), folder / str(img["file_name"]), classes, boxes, normalized=False))
    return Dataset(path, "coco", "", {i: names_by_id[c] for i, c in enumerate(cats)}, samples, cats)
