"""Synthetic detection data: shape images, YOLO datasets and short videos with ground truth.

Nothing can be downloaded here, so the demo model, its tests and the `detect` tests all learn from and
are checked against scenes this module draws. One seeded generator draws every scene, so a dataset, a
video and its ground truth are reproducible from the seed alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class Box:
    """One ground-truth object in pixel coordinates of its frame."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class Shape:
    """A shape that can move across frames of a video."""

    cls: int
    cx: float
    cy: float
    size: float
    color: tuple[int, int, int]
    angle: float = 0.0
    vx: float = 0.0
    vy: float = 0.0


@dataclass
class SceneSpec:
    width: int = 320
    height: int = 320
    min_objects: int = 1
    max_objects: int = 5
    min_size: float = 0.08
    max_size: float = 0.35
    rng_seed: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    kind = rng.integers(0, 3)
    if kind == 0:
        img: np.ndarray = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    elif kind == 1:
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img = np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8)
    else:
        # About six blobs along the short side at any resolution: the texture the model was trained on (~192 px
        # images) looks the same in a 1080p video after letterboxing.
        cells = 6 / min(h, w)
        small = rng.integers(0, 256, (max(2, round(h * cells)), max(2, round(w * cells)), 3)).astype(np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, (h, w, 3))
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _contrasting_color(rng: np.random.Generator, bg: np.ndarray) -> tuple[int, int, int]:
    mean = bg.reshape(-1, 3).mean(0)
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if np.abs(c - mean).sum() > 180:
            break
    return int(c[0]), int(c[1]), int(c[2])


def _shape_points(shape: Shape) -> np.ndarray:
    r = shape.size / 2
    if shape.cls == 2:  # triangle
        ang = np.deg2rad(shape.angle) + np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        return np.stack([shape.cx + r * np.cos(ang), shape.cy + r * np.sin(ang)], 1)
    if shape.cls == 1:  # square
        ang = np.deg2rad(shape.angle) + np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([shape.cx + r * np.cos(ang), shape.cy + r * np.sin(ang)], 1)
    raise ValueError(shape.cls)


def draw_shape(img: np.ndarray, shape: Shape) -> Box | None:
    """Draw one shape and return its tight box clipped to the frame, or None when it is off-frame."""
    import cv2

    h, w = img.shape[:2]
    r = shape.size / 2
    if shape.cls == 0:
        cv2.circle(img, (round(shape.cx), round(shape.cy)), round(r), shape.color, -1, cv2.LINE_AA)
        x1, y1, x2, y2 = shape.cx - r, shape.cy - r, shape.cx + r, shape.cy + r
    elif shape.cls == 3:
        t = max(2, round(shape.size / 5))
        p1 = (round(shape.cx - r), round(shape.cy))
        p2 = (round(shape.cx + r), round(shape.cy))
        cv2.line(img, p1, p2, shape.color, t, cv2.LINE_AA)
        cv2.line(img, (round(shape.cx), round(shape.cy - r)), (round(shape.cx), round(shape.cy + r)), shape.color, t)
        x1, y1, x2, y2 = shape.cx - r, shape.cy - r, shape.cx + r, shape.cy + r
    else:
        pts = _shape_points(shape)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], shape.color, cv2.LINE_AA)
        x1, y1 = pts.min(0)
        x2, y2 = pts.max(0)
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    if x2 - x1 < 3 or y2 - y1 < 3:
        return None
    return Box(shape.cls, float(x1), float(y1), float(x2), float(y2))


def random_shapes(rng: np.random.Generator, spec: SceneSpec, bg: np.ndarray) -> list[Shape]:
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    side = min(spec.width, spec.height)
    shapes = []
    for _ in range(n):
        size = float(rng.uniform(spec.min_size, spec.max_size) * side)
        shapes.append(
            Shape(
                cls=int(rng.integers(0, len(CLASS_NAMES))),
                cx=float(rng.uniform(size / 2, spec.width - size / 2)),
                cy=float(rng.uniform(size / 2, spec.height - size / 2)),
                size=size,
                color=_contrasting_color(rng, bg),
                angle=float(rng.uniform(0, 360)),
            )
        )
    return shapes


def render(bg: np.ndarray, shapes: list[Shape]) -> tuple[np.ndarray, list[Box]]:
    """Draw shapes in order; a later shape may occlude an earlier one, which keeps its full box."""
    img = bg.copy()
    boxes = [b for b in (draw_shape(img, s) for s in shapes) if b is not None]
    return img, boxes


def random_scene(rng: np.random.Generator, spec: SceneSpec) -> tuple[np.ndarray, list[Box]]:
    bg = _background(rng, spec.height, spec.width)
    return render(bg, random_shapes(rng, spec, bg))


def write_yolo_dataset(root: str | Path, n_train: int, n_val: int, imgsz: int = 256, seed: int = 0) -> Path:
    """Write an Ultralytics dataset (images, labels, data.yaml) and return the yaml's path."""
    import cv2

    root = Path(root)

    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            w = int(rng.integers(imgsz * 3 // 4, imgsz * 5 // 4))
            h = int(rng.integers(imgsz * 3 // 4, imgsz * 5 // 4))
            img, boxes = random_scene(rng, SceneSpec(width=w, height=h))
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = [
                f"{b.cls} {(b.x1 + b.x2) / 2 / w:.6f} {(b.y1 + b.y2) / 2 / h:.6f} {(b.x2 - b.x1) / w:.6f} {(b.y2 - b.y1) / h:.6f}"
                for b in boxes
            ]
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml_path


def video_frames(
    n_frames: int, width: int, height: int, seed: int = 0, n_objects: int = 3
) -> Iterator[tuple[np.ndarray, list[Box]]]:
    """Frames of shapes drifting over a fixed background, with each frame's ground truth."""
    rng = np.random.default_rng(seed)
    spec = SceneSpec(width=width, height=height, min_objects=n_objects, max_objects=n_objects, min_size=0.12, max_size=0.3)
    bg = _background(rng, height, width)
    shapes = random_shapes(rng, spec, bg)
    for s in shapes:
        s.vx, s.vy = (float(v) for v in rng.uniform(-0.004, 0.004, 2) * min(width, height))
    for _ in range(n_frames):
        yield render(bg, shapes)
        for s in shapes:
            s.cx, s.cy = s.cx + s.vx, s.cy + s.vy
            half = s.size / 2
            if not half <= s.cx <= width - half:
                s.vx = -s.vx
            if not half <= s.cy <= height - half:
                s.vy = -s.vy


def write_video(path: str | Path, n_frames: int = 60, width: int = 640, height: int = 360, fps: float = 30.0,
                seed: int = 0) -> Path:
    """Write an MP4 and `<path>.gt.json` (per-frame ground-truth boxes); returns the ground-truth path."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    gt = []
    try:
        for frame, boxes in video_frames(n_frames, width, height, seed):
            writer.write(frame)
            gt.append([[b.cls, b.x1, b.y1, b.x2, b.y2] for b in boxes])
    finally:
        writer.release()
    gt_path = path.with_suffix(path.suffix + ".gt.json")
    gt_path.write_text(json.dumps({"names": list(CLASS_NAMES), "frames": gt}))
    return gt_path


def write_h264(path: str | Path, seconds: float = 10.0, width: int = 1280, height: int = 720, fps: int = 30,
               gop: int = 30, seed: int = 0) -> Path:
    """Write the scenes of `video_frames` as a raw Annex-B H.264 stream (a fake camera's feed) and return its path.

    Shaped for serving over RTSP without re-encoding, looped: constrained baseline (no B-frames, so decode order is
    display order and the loop point needs no reordering), an IDR exactly every `gop` frames (no scene cuts, so a
    late viewer waits at most one GOP) with SPS/PPS repeated before each (x264 does so when the stream has no global
    header), and the first frame an IDR, so jumping from the last frame back to the first is a clean restart.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = max(1, round(seconds * fps))
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            "preset": "veryfast", "tune": "zerolatency", "profile": "baseline", "crf": "30",
            # sliced threads (what zerolatency picks) split frames into slices: harmless, but one slice per frame
            # keeps every RTP frame a single NAL unit, which is what most cameras send
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:sliced-threads=0:repeat-headers=1",
        }
        for frame, _ in video_frames(n_frames, width, height, seed):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode(None))
    return path


def write_mot_ground_truth(path: str | Path, n_frames: int = 60, width: int = 640, height: int = 360, seed: int = 0,
                           n_objects: int = 3) -> Path:
    """The MOT Challenge ground truth (`frame,id,x,y,w,h,1,-1,-1,-1`, frames and ids 1-based) of the video that
    `video_frames` (and `write_video`) draw with the same arguments, for scoring `detect --track` with a MOT evaluator.

    A shape's id is its place in the drawing order (1..n_objects), which `video_frames` keeps: shapes bounce inside
    the frame, so none is ever dropped from a frame's list and the order never shifts."""
    path = Path(path)
    lines = []
    for frame, (_, boxes) in enumerate(video_frames(n_frames, width, height, seed, n_objects), 1):
        if len(boxes) != n_objects:  # an id would shift to another shape: refuse rather than write wrong identities
            raise ValueError(f"frame {frame}: {len(boxes)} of {n_objects} shapes visible, identities would be ambiguous")
        lines += [f"{frame},{i},{b.x1:.2f},{b.y1:.2f},{b.x2 - b.x1:.2f},{b.y2 - b.y1:.2f},1,-1,-1,-1"
                  for i, b in enumerate(boxes, 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
