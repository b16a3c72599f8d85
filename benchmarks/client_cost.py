#!/usr/bin/env python3
"""Client-side cost per 1080p frame on one core: letterbox + normalize + decode + NMS.

tritonctl's preprocess/postprocess against Ultralytics' own (LetterBox, its tensor conversion, non_max_suppression,
scale_boxes) on the same frame and the same raw model output (a real run of the demo model, exported at 640).
Prints both in ms and the ratio. Target: tritonctl <= 3 ms.

Run: taskset -c 0 .venv/bin/python benchmarks/client_cost.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def timeit(fn, repeat: int = 200) -> float:  # type: ignore[no-untyped-def]
    for _ in range(10):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def main() -> int:
    import cv2
    import onnxruntime as ort
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    from tritonctl.export import ExportSettings, export
    from tritonctl.postprocess import PostSettings, decode, head_layout
    from tritonctl.preprocess import Preprocessor
    from tritonctl.synthetic import SceneSpec, random_scene

    imgsz = 640
    with tempfile.TemporaryDirectory() as tmp:
        export(ExportSettings.create(model_path=ROOT / "models" / "shapes-yolov8n.pt", out_dir=Path(tmp), imgsz=imgsz,
                                     precision="fp32"))
        session = ort.InferenceSession(str(Path(tmp) / "model_fp32.onnx"))
    frame, _ = random_scene(np.random.default_rng(0), SceneSpec(width=1920, height=1080, min_objects=5, max_objects=8))
    pre = Preprocessor(imgsz, imgsz, "float32")
    pre(frame)
    raw = session.run(None, {"images": pre.batch})[0]
    layout = head_layout(raw.shape, 4)
    post = PostSettings()

    def ours() -> np.ndarray:
        b = pre(frame)
        det = decode(raw, layout, post)[0]
        return b.to_source(det)

    letterbox = LetterBox((imgsz, imgsz), auto=False, stride=32)

    def theirs() -> torch.Tensor:
        im = letterbox(image=frame)
        im = np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)[None])
        tensor = torch.from_numpy(im).float() / 255
        det = non_max_suppression(torch.from_numpy(raw), 0.25, 0.45, max_det=300)[0]
        det[:, :4] = ops.scale_boxes(tensor.shape[2:], det[:, :4], frame.shape)
        return det

    n_ours, n_theirs = len(ours()), len(theirs())
    t_ours, t_theirs = timeit(ours), timeit(theirs)
    pre_only = timeit(lambda: pre(frame))
    print(f"1080p frame -> {imgsz}x{imgsz}, {raw.shape} head, {n_ours} detections (Ultralytics {n_theirs}), one core")
    print(f"tritonctl   letterbox+normalize+decode+NMS: {t_ours:.2f} ms  (of which preprocess {pre_only:.2f} ms)")
    print(f"ultralytics letterbox+normalize+decode+NMS: {t_theirs:.2f} ms")
    print(f"ratio ultralytics/tritonctl: {t_theirs / t_ours:.2f}x; target tritonctl <= 3 ms: "
          f"{'met' if t_ours <= 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
