"""`tritonctl val`: the accuracy of a model as Triton serves it, on a labelled dataset, optionally against the checkpoint.

Images take `detect`'s path (letterbox into the request buffer, shared memory when local, several requests in flight
over the endpoint pool, the same decoder), with Ultralytics' validation decoding (conf 0.001, IoU 0.7, max_det 300).
The figures come from pycocotools' COCOeval, the reference implementation of the COCO metrics (what "COCO mAP" means
in papers and in Ultralytics' own `save_json` check): mAP50-95 is precision averaged over 101 recall points, 10 IoU
thresholds 0.50..0.95 and the classes. Its maxDets is raised to max_det, so every decoded box counts, as in Ultralytics.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonctl.core.endpoint import Endpoint
from tritonctl.core.errors import BadInput, ToleranceExceeded
from tritonctl.inference.client import InferSlot, ModelInfo, fetch_model_info, server_status
from tritonctl.inference.discovery import first_endpoints
from tritonctl.inference.fleet import Fleet
from tritonctl.measure.coco import (  # noqa: F401
    Metrics,
    _match_names,
    _quiet_coco,
    coco_ground_truth,
    coco_predictions,
    evaluate,
    pr_at_best_f1,
)
from tritonctl.measure.datasets import Dataset, Sample, load_dataset
from tritonctl.measure.reference import Checkpoint, Reference, load_reference, reference_val  # noqa: F401
from tritonctl.measure.val_plots import confusion_matrix, confusion_png, pr_curve_png
from tritonctl.measure.val_settings import VAL_DECODING, ValSettings  # noqa: F401
from tritonctl.vision.postprocess import decode
from tritonctl.vision.preprocess import Preprocessor


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
    """Concurrent requests over the inference fleet, each worker with its own slot (shared memory) and letterbox."""

    def __init__(self, s: ValSettings, info: ModelInfo, samples: list[Sample]) -> None:
        self.s, self.info, self.samples = s, info, samples
        self.batch = s.batch or max(1, min(4, info.max_batch or 1))
        if self.batch > max(1, info.max_batch):
            raise BadInput(f"--batch {self.batch} exceeds the max batch of model {info.name!r} ({info.max_batch})")
        self.results: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
        self.failed: list[str] = []
        self.done = 0
        self._next = 0
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._stop = threading.Event()  # set by the first failure: a worker waiting for a server stops waiting
        self.problems: list[str] = []
        # The first --discover lookup happens now: shared memory is decided from the endpoints found.
        self.fleet = Fleet(s.endpoints, protocol=s.protocol, shm=s.shm, discover=s.discover,
                           server_timeout_s=s.server_timeout_s, down_hint="", on_problem=self._problem)
        self.discovery = self.fleet.discovery

    def _problem(self, text: str) -> None:
        with self._lock:
            if text not in self.problems:
                self.problems.append(text)

    def run(self) -> None:
        self.fleet.start()
        try:
            self._run()
        finally:
            self.fleet.drain()

    def _run(self) -> None:
        slots = self.fleet.slots(self.info, self.batch, min(self.s.concurrency, -(-len(self.samples) // self.batch)))
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
        except _Stopped:
            pass
        except BaseException as exc:  # raised by run(); the other workers stop at their next take or wait
            with self._lock:
                self._errors.append(exc)
            self._stop.set()
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
        """The fleet's failover; a worker stopped because another failed raises nothing new (its chunk is not counted)."""
        answer = self.fleet.infer(slot, n, self._stop)
        if answer is None:
            raise _Stopped()
        return answer.outputs[self.info.output_name]


class _Stopped(Exception):
    """Another worker failed: this one leaves its chunk unfinished (the run raises the first failure)."""


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


def _class_map(info: ModelInfo, ds: Dataset) -> tuple[dict[int, int], str]:
    """Model class -> data class: by name when both name the same classes (a server with the names of another model
    then scores as badly as its users would see it), else by index. A different class count is refused."""
    nc = len(info.names) or (info.output_shape[0] - 4 if info.layout == "anchors" else 0)
    if nc and nc != len(ds.names):
        raise BadInput(f"model {info.name!r} has {nc} classes, --data {ds.source} has {len(ds.names)}: "
                       "validate a model on data of its own classes")
    return _match_names(info.names, ds)


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
    result.settings["fleet"] = asdict(inference.fleet.figures)  # requests, retries, all_down_s
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
