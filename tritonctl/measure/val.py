"""`tritonctl val`: the accuracy of a model as Triton serves it, on a labelled dataset, optionally against the checkpoint.

Images take `detect`'s path (letterbox into the request buffer, shared memory when local, several requests in flight
over the endpoint pool, the same decoder), with Ultralytics' validation decoding (conf 0.001, IoU 0.7, max_det 300).
The figures come from pycocotools' COCOeval, the reference implementation of the COCO metrics (what "COCO mAP" means
in papers and in Ultralytics' own `save_json` check): mAP50-95 is precision averaged over 101 recall points, 10 IoU
thresholds 0.50..0.95 and the classes. Its maxDets is raised to max_det, so every decoded box counts, as in Ultralytics.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.core.endpoint import Endpoint, parse_endpoints
from tritonctl.core.errors import BadInput, ServerError, ToleranceExceeded, ToolMissing
from tritonctl.core.extras import install_hint
from tritonctl.inference.client import EndpointPool, InferSlot, ModelInfo, TransientError, fetch_model_info, server_status
from tritonctl.inference.discovery import DiscoverTarget, Discovery, first_endpoints, parse_discover
from tritonctl.measure.datasets import Dataset, Sample, load_dataset
from tritonctl.vision.postprocess import PostSettings, decode
from tritonctl.vision.preprocess import Preprocessor

VAL_DECODING = {"conf": 0.001, "iou": 0.7, "max_det": 300, "multi_label": True}  # Ultralytics' val defaults


@dataclass(frozen=True)
class ValSettings:
    model: str
    data: Path
    endpoints: list[Endpoint]
    out_dir: Path
    protocol: str = "http"
    shm: str = "auto"
    split: str = "val"
    images: Path | None = None  # a COCO json's image folder
    max_images: int | None = None
    reference: Path | None = None
    max_drop: float = 0.005
    post: PostSettings = field(default_factory=lambda: PostSettings(**VAL_DECODING))  # type: ignore[arg-type]
    batch: int | None = None
    concurrency: int = 4
    server_timeout_s: float = 30.0
    discover: DiscoverTarget | None = None  # --discover: the addresses of a name join --url's, kept up to date

    @classmethod
    def create(cls, *, model: str, data: Path, urls: list[str], out_dir: Path | None = None, discover: str | None = None,
               discover_dns: str | None = None, discover_interval_s: float | None = None, **kw: Any) -> ValSettings:
        protocol = kw.get("protocol", "http")
        if discover:
            kw["discover"] = parse_discover(discover, protocol, discover_dns, discover_interval_s)
        elif discover_dns or discover_interval_s is not None:
            raise BadInput("--discover-dns and --discover-interval go with --discover NAME:PORT")
        # With --discover, no --url means no fixed endpoint (not this host's default): the name's addresses only.
        endpoints = parse_endpoints(urls, protocol) if urls or not discover else []
        out = out_dir or Path("reports") / f"val-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        s = cls(model=model, data=data, endpoints=endpoints, out_dir=out, **kw)
        s._check()
        return s

    def _check(self) -> None:
        if not self.data.is_file():
            raise BadInput(f"--data {self.data}: no such file (give an Ultralytics dataset yaml or a COCO annotation json)")
        if self.data.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise BadInput(f"--data {self.data}: expected a dataset .yaml or a COCO .json")
        if self.shm not in ("auto", "system", "none"):
            raise BadInput(f"--shm {self.shm!r}: choose auto, system or none")
        if self.max_images is not None and self.max_images < 1:
            raise BadInput(f"--max-images {self.max_images}: give at least 1")
        if (self.batch is not None and self.batch < 1) or self.concurrency < 1:
            raise BadInput("--batch and --concurrency must be at least 1")
        if not 0 <= self.max_drop <= 1:
            raise BadInput(f"--max-drop {self.max_drop:g}: an mAP difference lies in 0..1, e.g. 0.005")
        if self.reference is not None:
            if self.reference.suffix != ".pt" or not self.reference.is_file():
                raise BadInput(f"--reference {self.reference}: give the checkpoint (.pt) the served model came from")
            if self.data.suffix.lower() == ".json":
                raise BadInput("--reference needs a YOLO dataset yaml: Ultralytics' val does not read COCO json labels")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise BadInput(f"--out-dir {self.out_dir} is a file: name a folder")
        # Checked now, made at the end: a folder that cannot be made fails before the run, and a failed run leaves none.
        above = next(p for p in (self.out_dir, *self.out_dir.parents) if p.exists())
        if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
            raise BadInput(f"--out-dir {self.out_dir}: cannot make the folder ({above} is "
                           f"{'not a folder' if not above.is_dir() else 'not writable'})")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Metrics:
    map50_95: float
    map50: float
    map75: float
    precision: float  # at the confidence of the best mean F1 (Ultralytics' rule)
    recall: float
    f1_conf: float
    per_class: dict[str, float | None]  # AP50-95 per class name; None: no ground truth of that class

    @classmethod
    def zero(cls, names: dict[int, str]) -> Metrics:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, {n: 0.0 for n in names.values()})


@dataclass
class ValResult:
    model: str
    served: Metrics
    reference: Reference | None
    images: int
    instances: int
    failed: list[str]  # images that did not decode: skipped, listed here
    seconds: float
    class_map: str  # how the model's classes were matched to the data's: "names" or "index"
    settings: dict[str, Any]
    server: dict[str, str]
    files: list[Path] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # [predicted + background][true + background], see below
    notes: list[str] = field(default_factory=list)  # one line each, shown under the table (a model that predicted nothing)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def drop(self) -> float | None:
        return None if self.reference is None else self.reference.metrics.map50_95 - self.served.map50_95

    def gate_error(self, max_drop: float) -> ToleranceExceeded | None:
        if self.drop is None or self.drop <= max_drop:
            return None
        assert self.reference is not None
        return ToleranceExceeded(
            f"served {self.model!r} mAP50-95 {self.served.map50_95:.4f} is {self.drop:.4f} below the checkpoint's "
            f"{self.reference.metrics.map50_95:.4f} (--max-drop {max_drop:g})")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [str(p) for p in self.files]
        data.update(images_per_s=round(self.images_per_s, 2), drop=self.drop)
        return data


# ---------------------------------------------------------------- inference through the server


class _Inference:
    """Concurrent requests over the endpoint pool, each worker with its own slot (shared memory) and letterbox."""

    def __init__(self, s: ValSettings, info: ModelInfo, samples: list[Sample]) -> None:
        self.s, self.info, self.samples = s, info, samples
        self.batch = s.batch or max(1, min(4, info.max_batch or 1))
        if self.batch > max(1, info.max_batch):
            raise BadInput(f"--batch {self.batch} exceeds the max batch of model {info.name!r} ({info.max_batch})")
        self.pool = EndpointPool(s.endpoints)
        self.results: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
        self.failed: list[str] = []
        self.done = 0
        self._next = 0
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._seen: dict[int, int] = {}  # per slot, the pool version it last released departed endpoints at
        self.problems: list[str] = []
        self.discovery: Discovery | None = None
        if s.discover is not None:  # first lookup now: shared memory is decided from the endpoints found
            self.discovery = Discovery(s.discover, self.pool, on_problem=self._problem, local_only=s.shm == "system")
            self.discovery.first()

    def _problem(self, text: str) -> None:
        with self._lock:
            if text not in self.problems:
                self.problems.append(text)

    def run(self) -> None:
        if self.discovery is not None:
            self.discovery.start()
        try:
            self._run()
        finally:
            if self.discovery is not None:
                self.discovery.close()

    def _run(self) -> None:
        use_shm = self.s.shm == "system" or (self.s.shm == "auto" and any(e.local for e in self.pool.endpoints))
        slots: list[InferSlot] = []
        try:
            for _ in range(min(self.s.concurrency, -(-len(self.samples) // self.batch))):
                slots.append(InferSlot(self.info, self.batch, self.s.protocol, use_shm, shm_required=self.s.shm == "system"))
        except BaseException:
            for slot in slots:
                slot.close()
            raise
        threads = [threading.Thread(target=self._work, args=(slot,), daemon=True) for slot in slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._errors:
            raise self._errors[0]

    def _take(self) -> list[Sample]:
        with self._lock:
            if self._errors:
                return []
            chunk = self.samples[self._next:self._next + self.batch]
            self._next += len(chunk)
            return chunk

    def _work(self, slot: InferSlot) -> None:
        """Closes its slot itself: tritonclient's HTTP client (gevent) can only be closed by the thread that used it."""
        try:
            pre = Preprocessor(self.info.height, self.info.width, self.info.input_np, self.batch, out=slot.inputs)
            while chunk := self._take():
                self._chunk(slot, pre, chunk)
        except BaseException as exc:  # raised by run(); the other workers stop at their next take
            with self._lock:
                self._errors.append(exc)
        finally:
            slot.close()

    def _chunk(self, slot: InferSlot, pre: Preprocessor, chunk: list[Sample]) -> None:
        import cv2

        loaded: list[tuple[Sample, tuple[int, int], Any]] = []
        for sample in chunk:
            image = cv2.imread(str(sample.path))
            if image is None:  # counted and listed; the run goes on
                with self._lock:
                    self.failed.append(str(sample.path))
                continue
            resized = loader_resize(image, max(self.info.height, self.info.width))
            loaded.append((sample, (image.shape[0], image.shape[1]), pre(resized, row=len(loaded))))
        if loaded:
            output = self._infer(slot, len(loaded))
            for (sample, hw, box), det in zip(loaded, decode(output, self.info.layout, self.s.post), strict=True):
                box.to_source(det.boxes)
                det.boxes[:, [0, 2]] *= hw[1] / box.src_w  # from the resized image back to the file's pixels
                det.boxes[:, [1, 3]] *= hw[0] / box.src_h
                with self._lock:
                    self.results[sample.image_id] = (hw, det.rows())
        with self._lock:
            self.done += len(chunk)

    def _infer(self, slot: InferSlot, n: int) -> np.ndarray:
        """On the least busy healthy endpoint; failing over, and waiting up to server_timeout_s while all are down."""
        down_since: float | None = None
        last = ""
        while True:
            if self._seen.get(id(slot), 0) != self.pool.version:  # endpoints left (--discover): release them here
                self._seen[id(slot)] = self.pool.version
                slot.forget_others(self.pool.urls())
            ep = self.pool.acquire()
            if ep is not None:
                ok = False
                try:
                    output = slot.infer(ep, n)
                    ok = True
                    return output
                except TransientError as exc:
                    last = f"{ep.url}: {exc}"
                finally:
                    self.pool.release(ep, ok)
                continue
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > self.s.server_timeout_s:
                raise ServerError(f"no Triton endpoint answered for {self.s.server_timeout_s:.0f} s (last error {last})")
            time.sleep(min(0.5, self.pool.next_retry_s() + 0.01))


def loader_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Ultralytics' val loader (8.4, `BaseDataset.load_image`): long side to `size`, short side rounded up, INTER_LINEAR,
    before the letterbox (which then only pads). `detect`'s letterbox (Ultralytics' predict) rounds the short side to
    the nearest pixel instead: on 50 demo images at 192 that 1-pixel difference alone moved mAP50-95 by 0.0035, so
    `val` loads images as the reference does, and the comparison measures the deployment, not the two loaders."""
    import math

    import cv2

    h0, w0 = image.shape[:2]
    r = size / max(h0, w0)
    if r == 1:
        return image
    w, h = min(math.ceil(w0 * r), size), min(math.ceil(h0 * r), size)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- the COCO evaluator


def _quiet_coco() -> contextlib.AbstractContextManager[Any]:
    """pycocotools prints its progress ("loading annotations ...") to stdout: not ours to show."""
    return contextlib.redirect_stdout(io.StringIO())


def coco_ground_truth(ds: Dataset, sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """The dataset as a COCO annotation dict, for the images that decoded (their pixel size from the decoded image)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for sample in ds.samples:
        if sample.image_id not in sizes:
            continue
        h, w = sizes[sample.image_id]
        images.append({"id": sample.image_id, "width": w, "height": h, "file_name": sample.path.name})
        for cls, (x1, y1, x2, y2) in zip(sample.classes, sample.pixel_boxes(h, w), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": sample.image_id, "iscrowd": 0,
                                "category_id": ds.category_ids[int(cls)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": cid, "name": ds.names[i]} for i, cid in enumerate(ds.category_ids)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_predictions(ds: Dataset, dets: dict[int, np.ndarray], class_map: dict[int, int]) -> list[dict[str, Any]]:
    """Detections in COCO results format: [x, y, w, h] in source pixels, the data's category id."""
    out = []
    for image_id, det in dets.items():
        for x1, y1, x2, y2, score, cls in det.tolist():
            if int(cls) not in class_map:  # a model without class names (end2end) was not counted up front
                raise BadInput(f"the model predicted class {int(cls)}, --data {ds.source} has {len(ds.names)} classes: "
                               "validate a model on data of its own classes")
            out.append({"image_id": image_id, "category_id": ds.category_ids[class_map[int(cls)]],
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(score, 5)})
    return out


def evaluate(gt: dict[str, Any], preds: list[dict[str, Any]], names: dict[int, str], max_det: int) -> tuple[Metrics, Any]:
    """COCOeval (bbox) over the given images; returns the metrics and the evaluator (for the PR curve)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not preds or not gt["annotations"]:
        return Metrics.zero(names), None
    with _quiet_coco():
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(p) for p in preds])  # it adds id, area, segmentation to what it is given
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = [img["id"] for img in gt["images"]]
        ev.params.maxDets = [1, 10, max_det]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]  # only "all" is reported: a quarter of the work
        ev.evaluate()
        ev.accumulate()
    return _metrics(ev, names), ev


def _mean_valid(a: np.ndarray) -> float:
    valid = a[a > -1]  # -1: a class without ground truth (COCOeval's marker)
    return float(valid.mean()) if valid.size else 0.0


def _metrics(ev: Any, names: dict[int, str]) -> Metrics:
    """The averages COCOeval.summarize() prints (area all, the last maxDets), read from its precision array."""
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [IoU 10, recall 101, class]
    iou = ev.params.iouThrs
    per_class = {}
    for k, name in names.items():
        ap = precision[:, :, k]
        per_class[name] = _mean_valid(ap) if (ap > -1).any() else None
    p, r, conf = pr_at_best_f1(ev, len(names))
    return Metrics(_mean_valid(precision), _mean_valid(precision[np.isclose(iou, 0.5)]),
                   _mean_valid(precision[np.isclose(iou, 0.75)]), p, r, conf, per_class)


def _smooth(y: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Ultralytics' box filter over the F1 curve, so the best-F1 point is picked as it picks it."""
    nf = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(nf // 2)
    return np.convolve(np.concatenate([pad * y[0], y, pad * y[-1]]), np.ones(nf) / nf, mode="valid")


def pr_at_best_f1(ev: Any, n_classes: int) -> tuple[float, float, float]:
    """Precision and recall at IoU 0.5 at the confidence where the class-mean F1 is highest.

    From the evaluator's own matches (evalImgs: dtMatches, dtIgnore, gtIgnore at IoU 0.5, area all): per class,
    cumulative TP/FP by descending score give P and R as functions of confidence, sampled on 1000 thresholds and
    averaged over the classes that have ground truth; F1 = 2PR/(P+R), smoothed; P and R are read at its maximum."""
    px = np.linspace(0, 1, 1000)
    curves_p, curves_r = [], []
    for cat in ev.params.catIds[:n_classes]:
        scores, hits, npos = _class_matches(ev, cat)
        if npos == 0:
            continue
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(hits[order])
        fp = np.cumsum(~hits[order])
        conf = scores[order]
        curves_r.append(np.interp(-px, -conf, tp / npos, left=0) if len(conf) else np.zeros_like(px))
        curves_p.append(np.interp(-px, -conf, tp / np.maximum(tp + fp, 1), left=1) if len(conf) else np.ones_like(px))
    if not curves_p:
        return 0.0, 0.0, 0.0
    p, r = np.mean(curves_p, 0), np.mean(curves_r, 0)
    i = int(_smooth(2 * p * r / (p + r + 1e-16)).argmax())
    return float(p[i]), float(r[i]), float(px[i])


def _class_matches(ev: Any, cat: int) -> tuple[np.ndarray, np.ndarray, int]:
    scores, hits, npos = [], [], 0
    all_area = ev.params.areaRng[0]
    for e in ev.evalImgs:
        if e is None or e["category_id"] != cat or list(e["aRng"]) != list(all_area):
            continue
        keep = ~np.asarray(e["dtIgnore"], bool)[0]
        scores.append(np.asarray(e["dtScores"], float)[keep])
        hits.append(np.asarray(e["dtMatches"])[0][keep] > 0)
        npos += int((~np.asarray(e["gtIgnore"], bool)).sum())
    if not scores:
        return np.zeros(0), np.zeros(0, bool), npos
    return np.concatenate(scores), np.concatenate(hits), npos


# ---------------------------------------------------------------- the checkpoint's own val (Ultralytics)


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


def _class_map(info: ModelInfo, ds: Dataset) -> tuple[dict[int, int], str]:
    """Model class -> data class: by name when both name the same classes (a server with the names of another model
    then scores as badly as its users would see it), else by index. A different class count is refused."""
    nc = len(info.names) or (info.output_shape[0] - 4 if info.layout == "anchors" else 0)
    if nc and nc != len(ds.names):
        raise BadInput(f"model {info.name!r} has {nc} classes, --data {ds.source} has {len(ds.names)}: "
                       "validate a model on data of its own classes")
    return _match_names(info.names, ds)


def _match_names(names: dict[int, str], ds: Dataset) -> tuple[dict[int, int], str]:
    """By name when the model's names are the data's (in any order, each once), else by index."""
    if names and set(names.values()) == set(ds.names.values()) and len(set(ds.names.values())) == len(ds.names):
        by_name = {n: i for i, n in ds.names.items()}
        return {m: by_name[n] for m, n in names.items()}, "names"
    return {i: i for i in ds.names}, "index"


def _first_endpoint(s: ValSettings) -> Endpoint:
    """The endpoint asked about the model: the first --url, else the first address --discover's name has now."""
    if s.endpoints or s.discover is None:
        return s.endpoints[0]
    return first_endpoints(s.discover)[0]


def _server_versions(s: ValSettings, endpoint: Endpoint) -> dict[str, str]:
    status = server_status(endpoint)
    version = next((m.version for m in status.models if m.name == s.model and m.state == "READY"), "")
    return {"url": status.url, "triton": status.version, "model": s.model, "model_version": version}


def run_val(s: ValSettings, progress: Any = None) -> ValResult:
    """Check the data and the model, infer every image through the server, evaluate, compare, write the files."""
    ds = load_dataset(s.data, s.split, s.images)
    samples = ds.samples[: s.max_images] if s.max_images else ds.samples
    _check_labelled(ds, samples, "")
    endpoint = _first_endpoint(s)
    info = fetch_model_info(s.protocol, endpoint, s.model)
    class_map, how = _class_map(info, ds)
    server = _server_versions(s, endpoint)
    ckpt = load_reference(s, ds, [smp.path for smp in samples]) if s.reference is not None else None
    inference = _Inference(s, info, samples)
    t0 = time.perf_counter()
    with _progress(inference, progress):
        inference.run()
    seconds = time.perf_counter() - t0
    sizes = {i: hw for i, (hw, _) in inference.results.items()}
    _check_labelled(ds, [smp for smp in samples if smp.image_id in sizes], _decoded_note(inference.failed))
    gt = coco_ground_truth(ds, sizes)
    preds = coco_predictions(ds, {i: det for i, (_, det) in inference.results.items()}, class_map)
    served, ev = evaluate(gt, preds, ds.names, s.post.max_det)
    paths = [smp.path for smp in samples if smp.image_id in sizes]
    reference = reference_val(s, ckpt, ds, gt, paths, info.height) if ckpt is not None else None
    result = ValResult(s.model, served, reference, len(sizes), len(gt["annotations"]), sorted(inference.failed), seconds,
                       how, _settings_dict(s, ds, info, inference.batch), server)
    result.notes = _notes(s, ds, len(preds), reference)
    if inference.discovery is not None:
        result.settings["discovery"] = {**inference.discovery.report(), "problems": inference.problems}
    result.confusion = confusion_matrix(gt, preds, ds.category_ids).tolist()
    write_outputs(s, result, preds, ev, ds.names)  # sets result.files, which val.json lists
    return result


def _check_labelled(ds: Dataset, samples: list[Sample], why: str) -> None:
    """mAP needs ground truth: a set (or what of it decoded) without one labelled object cannot be scored."""
    if not samples:
        raise BadInput(f"--data {ds.source}: no image could be read{why}: nothing to validate on")
    if not any(len(smp.classes) for smp in samples):
        raise BadInput(f"--data {ds.source}: its {len(samples)} image(s){why} hold no labelled object, so there is "
                       "nothing to score against (check its labels)")


def _decoded_note(failed: list[str]) -> str:
    return f" ({len(failed)} did not decode, e.g. {sorted(failed)[0]})" if failed else ""


def _notes(s: ValSettings, ds: Dataset, served_predictions: int, reference: Reference | None) -> list[str]:
    """A model that predicted nothing scores 0: said in a line, as a 0 alone reads like a broken evaluation."""
    why = f"no box reached conf {s.post.conf:g} (an untrained or weak model, or one of other classes?)"
    notes = [f"served {s.model} predicted nothing on {ds.source.name}: mAP 0; {why}"] if not served_predictions else []
    if reference is not None and not reference.predictions and s.reference is not None:
        notes.append(f"reference {s.reference.name} predicted nothing on {ds.source.name}: mAP 0; {why}")
    return notes


def _settings_dict(s: ValSettings, ds: Dataset, info: ModelInfo, batch: int) -> dict[str, Any]:
    from importlib.metadata import version

    return {"data": str(s.data), "kind": ds.kind, "split": ds.split, "max_images": s.max_images,
            "imgsz": [info.height, info.width], "conf": s.post.conf, "iou": s.post.iou, "max_det": s.post.max_det,
            "batch": batch, "concurrency": s.concurrency, "protocol": s.protocol, "shm": s.shm,
            "urls": [e.url for e in s.endpoints], "reference": str(s.reference) if s.reference else None,
            "discover": str(s.discover) if s.discover else None,
            "max_drop": s.max_drop, "evaluator": f"pycocotools {version('pycocotools')} COCOeval bbox, "
                                                 f"maxDets [1, 10, {s.post.max_det}], area all"}


def write_outputs(s: ValSettings, result: ValResult, preds: list[dict[str, Any]], ev: Any, names: dict[int, str]) -> list[Path]:
    s.out_dir.mkdir(parents=True, exist_ok=True)
    files = [s.out_dir / "predictions.json", s.out_dir / "val.json"]
    files[0].write_text(json.dumps(preds))
    if ev is not None:
        files.append(pr_curve_png(ev, names, s.out_dir / "pr_curve.png"))
    files.append(confusion_png(np.array(result.confusion), names, s.out_dir / "confusion_matrix.png"))
    result.files = files
    files[1].write_text(json.dumps(result.to_dict(), indent=2))
    return files


def pr_curve_png(ev: Any, names: dict[int, str], path: Path) -> Path:
    """Precision over recall at IoU 0.5 per class (COCOeval's interpolated curve) and their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision = ev.eval["precision"][0, :, :, 0, -1]  # [101 recall points, class]
    recall = ev.params.recThrs
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for k, name in names.items():
        if (precision[:, k] > -1).any():
            ax.plot(recall, precision[:, k], lw=1, label=f"{name} {_mean_valid(precision[:, k]):.3f}")
    ax.plot(recall, np.where(precision > -1, precision, np.nan).mean(1), lw=3, color="blue",
            label=f"all classes {_mean_valid(precision):.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall at IoU 0.5")
    ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path)
    plt.close(fig)
    return path


CONFUSION_CONF, CONFUSION_IOU = 0.25, 0.45  # Ultralytics' confusion-matrix thresholds: boxes a user would see


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes a [n, 4] against b [m, 4]."""
    ax2, bx2 = a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:]
    wh = (np.minimum(ax2, bx2) - np.maximum(a[:, None, :2], b[None, :, :2])).clip(0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter + 1e-9)


def confusion_matrix(gt: dict[str, Any], preds: list[dict[str, Any]], category_ids: list[int]) -> np.ndarray:
    """Counts [predicted class or background][true class or background] for detections above CONFUSION_CONF, each
    matched once to the ground-truth box it overlaps most (IoU above CONFUSION_IOU), largest overlaps first."""
    nc = len(category_ids)
    index = {cid: i for i, cid in enumerate(category_ids)}
    matrix = np.zeros((nc + 1, nc + 1), np.int64)
    truth: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        truth[ann["image_id"]].append(ann)
    dets: dict[int, list[dict[str, Any]]] = {i: [] for i in truth}
    for p in preds:
        if p["score"] > CONFUSION_CONF:
            dets[p["image_id"]].append(p)
    for image_id, anns in truth.items():
        g_cls = np.array([index[a["category_id"]] for a in anns], np.int64)
        d_cls = np.array([index[d["category_id"]] for d in dets[image_id]], np.int64)
        g_box = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        d_box = np.array([d["bbox"] for d in dets[image_id]], np.float64).reshape(-1, 4)
        _count_image(matrix, g_cls, d_cls, _iou(d_box, g_box))
    return matrix


def _count_image(matrix: np.ndarray, g_cls: np.ndarray, d_cls: np.ndarray, iou: np.ndarray) -> None:
    background = matrix.shape[0] - 1
    di, gi = np.nonzero(iou > CONFUSION_IOU)
    order = np.argsort(-iou[di, gi], kind="stable")
    used_d: set[int] = set()
    used_g: set[int] = set()
    for d, g in zip(di[order].tolist(), gi[order].tolist(), strict=True):
        if d not in used_d and g not in used_g:
            used_d.add(d)
            used_g.add(g)
            matrix[d_cls[d], g_cls[g]] += 1
    for g in set(range(len(g_cls))) - used_g:
        matrix[background, g_cls[g]] += 1  # missed: background "predicted"
    for d in set(range(len(d_cls))) - used_d:
        matrix[d_cls[d], background] += 1  # a false positive on background


def confusion_png(matrix: np.ndarray, names: dict[int, str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*names.values(), "background"]
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="True", ylabel="Predicted", title=f"Confusion matrix (conf > {CONFUSION_CONF}, IoU > {CONFUSION_IOU})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _progress(inference: _Inference, console: Any) -> Any:
    """One bar: images done, images/s."""
    from tritonctl.core.ui import LiveBars

    tasks: list[Any] = []

    def refresh(bars: Any, elapsed: float) -> None:
        if not tasks:
            tasks.append(bars.add_task("val", total=len(inference.samples), rate=""))
        done = inference.done
        bars.update(tasks[0], completed=done, rate=f"{done / elapsed:.1f} images/s")

    return LiveBars(console, refresh)


# ---------------------------------------------------------------- rendering


def render(result: ValResult, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    s, ref = result.settings, (result.reference.metrics if result.reference else None)
    table = Table("metric", f"served {result.model}", *(["checkpoint (Ultralytics val)", "difference"] if ref else []),
                  title=f"{result.images} images, {result.instances} objects, {result.images_per_s:.1f} images/s")
    rows = [("mAP50-95", "map50_95"), ("mAP50", "map50"), ("mAP75", "map75"), ("precision", "precision"), ("recall", "recall")]
    for label, key in rows:
        table.add_row(label, *_cells(getattr(result.served, key), getattr(ref, key) if ref else None, ref is not None))
    for name, ap in result.served.per_class.items():
        table.add_row(f"AP50-95 {name}", *_cells(ap, ref.per_class.get(name) if ref else None, ref is not None))
    console.print(table)
    console.print(f"decoding conf {s['conf']:g}, IoU {s['iou']:g}, max_det {s['max_det']} (Ultralytics' val defaults); "
                  f"{escape(s['evaluator'])}; P/R at the best-F1 confidence {result.served.f1_conf:.3f}; classes matched by "
                  f"{result.class_map}; Triton {escape(result.server['triton'])}", style="dim", highlight=False)
    if result.reference is not None:
        own = result.reference.ultralytics
        console.print(f"checkpoint scored by COCOeval from Ultralytics' predictions; Ultralytics' own figures: mAP50-95 "
                      f"{own['map50_95']:.4f}, mAP50 {own['map50']:.4f}, P {own['precision']:.4f}, R {own['recall']:.4f}",
                      style="dim", highlight=False)
    if result.failed:
        shown = ", ".join(result.failed[:5]) + (" …" if len(result.failed) > 5 else "")
        console.print(f"[yellow]{len(result.failed)} image(s) did not decode and were skipped: {escape(shown)}[/]")
    for note in result.notes:
        console.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)


def _cells(served: float | None, ref: float | None, with_ref: bool) -> list[str]:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    if not with_ref:
        return [fmt(served)]
    diff = None if served is None or ref is None else served - ref
    return [fmt(served), fmt(ref), "-" if diff is None else f"{diff:+.4f}"]
