"""`tritonctl val` against the real local Triton: the served demo model against its checkpoint's own Ultralytics val,
COCO json and YOLO yaml giving the same figures, a broken deployment caught by the gate, bad input in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_PT, Triton, assert_one_line_error, run_cli, start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

N_IMAGES = 50  # the model's 192 px scenes: 50 images keep a --reference run near 5 s on 2 cores


@pytest.fixture(scope="module")
def val_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tritonctl.vision.synthetic import write_yolo_dataset

    return write_yolo_dataset(tmp_path_factory.mktemp("valdata"), 0, N_IMAGES, imgsz=192, seed=123)


def _val(triton: Triton, model: str, data: Path, out: Path, *extra: str) -> tuple[Any, dict[str, Any]]:
    result = run_cli("val", "-m", model, "--data", str(data), "--url", triton.url, "--out-dir", str(out), *extra)
    report = json.loads((out / "val.json").read_text()) if (out / "val.json").is_file() else {}
    return result, report


def _copy_set(data: Path, dest: Path) -> Path:
    shutil.copytree(data.parent, dest)
    text = (dest / "data.yaml").read_text().replace(str(data.parent.resolve()), str(dest.resolve()))
    (dest / "data.yaml").write_text(text)
    return dest / "data.yaml"


# ---------------------------------------------------------------- the served model equals its checkpoint


@pytest.mark.parametrize(("model", "limit"), [("shapes32", 0.002), ("shapes", 0.005)])
def test_served_matches_checkpoint(demo_triton: Triton, val_data: Path, tmp_path: Path, model: str, limit: float) -> None:
    """|mAP50-95 served - Ultralytics val of the .pt| within the issue's limits (FP32 0.002, FP16 0.005).

    The checkpoint's predictions (Ultralytics' val, save_json) are scored by the same COCOeval as the served model's.
    Measured here (Ultralytics 8.4.190, pycocotools 2.0.11, 192 px): on these 50 images (seed 123) served FP32 0.7455
    = checkpoint 0.7455 (identical predictions), FP16 0.7442 (-0.0013); on 300 images (seed 5) FP32 0.7425 = 0.7425,
    FP16 0.7424 (-0.0001). Ultralytics' own figure for the checkpoint differs from COCOeval's on the same predictions
    (it matches by IoU and interpolates its own way): 0.7452 (+0.0003 here) and 0.7451 on 300 images (+0.0025, above
    the FP32 limit, which is why the gate compares like with like); asserted below within 0.004 (from those two).
    Two causes of a gap were found and removed on the way: `detect`'s argmax decoding instead of Ultralytics' val
    multi-label decoding (-0.015) and `detect`'s predict-style letterbox instead of the val loader's resize (-0.0035)."""
    result, report = _val(demo_triton, model, val_data, tmp_path, "--reference", str(DEMO_PT), "--max-drop", str(limit))
    assert result.returncode == 0, result.stderr
    served, ref = report["served"]["map50_95"], report["reference"]["metrics"]["map50_95"]
    assert abs(served - ref) <= limit, (served, ref)
    assert abs(served - report["reference"]["ultralytics"]["map50_95"]) <= 0.004, report["reference"]
    assert served > 0.6 and report["images"] == N_IMAGES and not report["failed"]
    assert report["settings"]["conf"] == 0.001 and report["settings"]["iou"] == 0.7 and report["settings"]["max_det"] == 300
    assert report["server"]["triton"] and report["server"]["model_version"] == "1"
    assert "pycocotools" in report["settings"]["evaluator"] and report["class_map"] == "names"
    assert 0.5 < report["served"]["precision"] <= 1 and 0.5 < report["served"]["recall"] <= 1
    assert abs(report["served"]["recall"] - report["reference"]["metrics"]["recall"]) < 0.01
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert preds and set(preds[0]) == {"image_id", "category_id", "bbox", "score"}
    assert (tmp_path / "pr_curve.png").stat().st_size > 10_000 and (tmp_path / "confusion_matrix.png").stat().st_size > 10_000
    matrix = report["confusion"]  # every ground-truth box counted once: matched to a class, or missed (background)
    assert sum(row[c] for row in matrix for c in range(4)) == report["instances"]
    assert sum(matrix[c][c] for c in range(4)) > 0.8 * report["instances"]
    assert "mAP50-95" in result.stdout and "checkpoint" in result.stdout and "difference" in result.stdout


def _as_coco(data: Path, dest: Path) -> Path:
    """The same set as a COCO annotation json, category ids 1..4 (as COCO's own are not 0-based)."""
    import cv2

    from tritonctl.measure.datasets import load_yolo
    from tritonctl.measure.val import coco_ground_truth

    ds = load_yolo(data, "val")
    sizes = {s.image_id: cv2.imread(str(s.path)).shape[:2] for s in ds.samples}
    gt = coco_ground_truth(ds, sizes)
    for ann in gt["annotations"]:
        ann["category_id"] += 1
    for cat in gt["categories"]:
        cat["id"] += 1
    path = dest / "instances_val.json"
    path.write_text(json.dumps(gt))
    return path


def test_coco_json_equals_yolo_yaml(demo_triton: Triton, val_data: Path, tmp_path: Path) -> None:
    coco = _as_coco(val_data, tmp_path)
    yolo_run, yolo = _val(demo_triton, "shapes32", val_data, tmp_path / "yolo")
    coco_run, from_json = _val(demo_triton, "shapes32", coco, tmp_path / "coco", "--images", str(val_data.parent / "images/val"))
    assert yolo_run.returncode == 0 and coco_run.returncode == 0, (yolo_run.stderr, coco_run.stderr)
    assert from_json["served"] == yolo["served"]
    assert from_json["instances"] == yolo["instances"] and from_json["images"] == yolo["images"] == N_IMAGES
    categories = {p["category_id"] for p in json.loads((tmp_path / "coco" / "predictions.json").read_text())}
    assert categories <= {1, 2, 3, 4}  # predictions carry the json's own category ids


# ---------------------------------------------------------------- a broken deployment is caught


def test_wrong_class_names_fail_the_gate(demo_repo: Path, val_data: Path, tmp_path: Path) -> None:
    """The demo model served with the class names in another order (circle and square swapped: the config of another
    model): `detect` would label every circle a square. val matches classes by name, so the drop shows, exit 6."""
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo / "shapes32", repo / "swapped")
    config = repo / "swapped" / "config.pbtxt"
    text = config.read_text().replace('name: "shapes32"', 'name: "swapped"')
    swapped = text.replace("circle", "@").replace("square", "circle").replace("@", "square")
    assert swapped != text
    config.write_text(swapped)
    server = start_server(repo)
    try:
        url = server.settings.url  # type: ignore[attr-defined]
        result = run_cli("val", "-m", "swapped", "--data", str(val_data), "--url", url, "--out-dir", str(tmp_path / "out"),
                         "--reference", str(DEMO_PT), "--max-drop", "0.005")
    finally:
        server.stop()  # type: ignore[attr-defined]
    assert_one_line_error(result, 6, "below the checkpoint", "--max-drop 0.005")
    report = json.loads((tmp_path / "out" / "val.json").read_text())
    assert report["drop"] > 0.2, report["drop"]
    circle, square = 0, 1
    assert report["confusion"][square][circle] > report["confusion"][circle][circle]  # circles reported as squares
    assert "difference" in result.stdout and "AP50-95 circle" in result.stdout


# ---------------------------------------------------------------- a checkpoint that predicts nothing


def _blind_checkpoint(path: Path) -> Path:
    """The demo checkpoint with its class biases at -50: no score passes conf 0.001, as with a fresh (Ultralytics
    initialises class biases near -10) or badly trained model. Ultralytics' val then writes no predictions.json."""
    from ultralytics import YOLO

    model = YOLO(str(DEMO_PT))
    for branch in model.model.model[-1].cv3:  # type: ignore[union-attr,index]
        branch[-1].bias.data.fill_(-50.0)
    model.save(str(path))
    return path


def test_served_model_that_predicts_nothing_is_said(demo_triton: Triton, val_data: Path, tmp_path: Path) -> None:
    """No box reaches --conf 1: mAP 0 with the reason beside it, not a bare 0 that reads like a broken evaluation."""
    result, report = _val(demo_triton, "shapes32", val_data, tmp_path, "--conf", "1", "--max-images", "8")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert report["served"]["map50_95"] == 0 and report["notes"] == [
        f"served shapes32 predicted nothing on {val_data.name}: mAP 0; no box reached conf 1 (an untrained or weak model, "
        "or one of other classes?)"]
    assert report["notes"][0] in result.stdout


def test_checkpoint_that_predicts_nothing_scores_zero(demo_triton: Triton, val_data: Path, tmp_path: Path) -> None:
    """Was a 40-line FileNotFoundError (reference/run/predictions.json). Now: 0 in the checkpoint's column, one note."""
    blind = _blind_checkpoint(tmp_path / "blind.pt")
    result, report = _val(demo_triton, "shapes32", val_data, tmp_path / "out", "--reference", str(blind),
                          "--max-images", "8")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr  # the served model is not below its (empty) reference
    ref = report["reference"]
    assert ref["metrics"]["map50_95"] == 0 and ref["predictions"] == 0 and ref["ultralytics"]["map50_95"] == 0
    assert report["served"]["map50_95"] > 0.5 and report["drop"] < 0
    cells = next(cells for line in result.stdout.splitlines() if (cells := [c.strip() for c in line.split("│")])[1:2]
                 == ["mAP50-95"])
    assert cells[3] == "0.0000" and float(cells[2]) > 0.5 and float(cells[4]) > 0.5, cells  # checkpoint, difference
    assert report["notes"] == [f"reference blind.pt predicted nothing on {val_data.name}: mAP 0; no box reached conf "
                               "0.001 (an untrained or weak model, or one of other classes?)"]
    assert report["notes"][0] in result.stdout  # on one line


# ---------------------------------------------------------------- bad input: one line each


def test_undecodable_image_is_counted_and_listed(demo_triton: Triton, val_data: Path, tmp_path: Path) -> None:
    data = _copy_set(val_data, tmp_path / "set")
    broken = tmp_path / "set" / "images" / "val" / "00003.jpg"
    broken.write_bytes(b"not a jpeg")
    result, report = _val(demo_triton, "shapes32", data, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert report["failed"] == [str(broken)] and report["images"] == N_IMAGES - 1
    assert "did not decode" in result.stdout


def _bad_sets(val_data: Path, tmp: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (data file, extra flags, a word the error line must hold)."""
    no_labels = _copy_set(val_data, tmp / "nolabels")
    shutil.rmtree(tmp / "nolabels" / "labels")
    five = _copy_set(val_data, tmp / "five")
    five.write_text(five.read_text() + "  4: star\n")
    empty = _copy_set(val_data, tmp / "empty")
    empty.write_text(empty.read_text().replace("val: images/val", "val: images/none"))
    (tmp / "empty" / "images" / "none").mkdir()
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("names: [circle, square\nval: [\n")
    bad_json = tmp / "bad.json"
    bad_json.write_text('{"images": [')
    unlabelled = _copy_set(val_data, tmp / "unlabelled")
    for label in (tmp / "unlabelled" / "labels" / "val").iterdir():
        label.write_text("")
    unreadable = _copy_set(val_data, tmp / "unreadable")
    for image in (tmp / "unreadable" / "images" / "val").iterdir():
        image.write_bytes(b"not a jpeg")
    (tmp / "a-file").write_text("")
    no_bbox = tmp / "no_bbox.json"
    no_bbox.write_text(json.dumps({"images": [{"id": 1, "file_name": "00000.jpg"}], "categories": [{"id": 1, "name": "a"}],
                                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}))
    return {
        "missing labels": (no_labels, [], "no labels folder"),
        "class count": (five, [], "has 4 classes"),
        "empty split": (empty, [], "holds no images"),
        "malformed yaml": (bad_yaml, [], "not valid YAML"),
        "malformed json": (bad_json, [], "not valid JSON"),
        "no such split": (val_data, ["--split", "test"], "no 'test' split"),
        "missing file": (tmp / "nope.yaml", [], "no such file"),
        "reference with json": (bad_json, ["--reference", str(DEMO_PT)], "needs a YOLO dataset yaml"),
        "bad max drop": (val_data, ["--max-drop", "-1"], "--max-drop"),
        "no labelled object": (unlabelled, [], "hold no labelled object"),
        "no image decodes": (unreadable, [], f"no image could be read ({N_IMAGES} did not decode"),
        "coco entry without bbox": (no_bbox, ["--images", str(val_data.parent / "images/val")], "no 'bbox' field"),
        "out dir under a file": (val_data, ["--out-dir", str(tmp / "a-file" / "out")],
                                 f"cannot make the folder ({tmp / 'a-file'} is not a folder)"),
    }


def test_bad_input_one_line_each(demo_triton: Triton, val_data: Path, tmp_path: Path) -> None:
    for name, (data, extra, word) in _bad_sets(val_data, tmp_path).items():
        result = run_cli("val", "-m", "shapes32", "--data", str(data), "--url", demo_triton.url,
                         "--out-dir", str(tmp_path / "out"), *extra)
        try:
            assert_one_line_error(result, 2, word)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def _bad_references(val_data: Path, tmp: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (checkpoint, data, a word the error line must hold): each was a traceback, from Ultralytics or from us."""
    import torch
    from ultralytics import YOLO

    (tmp / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp / "empty.pt").write_bytes(b"")
    torch.save({"weights": [1, 2]}, tmp / "dict.pt")
    YOLO("yolov8n-cls.yaml").save(str(tmp / "classify.pt"))
    YOLO("yolov8n.yaml").save(str(tmp / "coco80.pt"))  # fresh: 80 classes, and it predicts nothing
    twice = _copy_set(val_data, tmp / "twice")  # the same file names in two folders
    shutil.copytree(tmp / "twice" / "images" / "val", tmp / "twice" / "images" / "again")
    shutil.copytree(tmp / "twice" / "labels" / "val", tmp / "twice" / "labels" / "again")
    twice.write_text(twice.read_text().replace("val: images/val", "val: [images/val, images/again]"))
    return {
        "corrupt file": (tmp / "garbage.pt", val_data, "Ultralytics cannot load it: the file is not a loadable"),
        "empty file": (tmp / "empty.pt", val_data, "Ultralytics cannot load it: the file is not a loadable"),
        "not a model": (tmp / "dict.pt", val_data, "Ultralytics cannot load it: the file references types outside"),
        "classifier": (tmp / "classify.pt", val_data, "is a classify checkpoint"),
        "other class count": (tmp / "coco80.pt", val_data, "has 80 classes"),
        "file names twice": (DEMO_PT, twice, "share a file name (00000.jpg, 00001.jpg, 00002.jpg)"),
    }


def test_bad_reference_one_line_each(demo_triton: Triton, val_data: Path, tmp_path: Path) -> None:
    for name, (checkpoint, data, word) in _bad_references(val_data, tmp_path).items():
        result = run_cli("val", "-m", "shapes32", "--data", str(data), "--url", demo_triton.url,
                         "--out-dir", str(tmp_path / "out"), "--reference", str(checkpoint))
        try:
            assert_one_line_error(result, 2, f"--reference {checkpoint}" if checkpoint != DEMO_PT else "--reference", word)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_reference_with_other_class_names(demo_triton: Triton, val_data: Path, tmp_path: Path) -> None:
    """A checkpoint naming its classes otherwise (same count) is matched by index, as the served model would be;
    with the data's names in another order, by name (so it scores as its users would see it: badly)."""
    from ultralytics import YOLO

    runs = {}
    for how, names in (("index", ["a", "b", "c", "d"]), ("names", ["square", "circle", "triangle", "cross"])):
        model = YOLO(str(DEMO_PT))
        model.model.names = dict(enumerate(names))  # type: ignore[union-attr]
        model.save(str(tmp_path / f"{how}.pt"))
        result, report = _val(demo_triton, "shapes32", val_data, tmp_path / how, "--reference", str(tmp_path / f"{how}.pt"),
                              "--max-images", "8", "--max-drop", "1")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert report["reference"]["class_map"] == how
        runs[how] = report
    assert abs(runs["index"]["drop"]) < 0.01 and runs["names"]["drop"] < -0.2, (runs["index"]["drop"], runs["names"]["drop"])


def test_plain_yaml_reader_without_pyyaml(val_data: Path) -> None:
    """The core install has no PyYAML: the fallback reader reads the dataset yamls Ultralytics writes."""
    from tritonctl.measure.datasets import _simple_yaml

    text = "# demo\npath: /data/x\ntrain: images/train  # comment\nval: images/val\nnames:\n  0: circle\n  1: 'square'\n"
    assert _simple_yaml(text, Path("d.yaml")) == {"path": "/data/x", "train": "images/train", "val": "images/val",
                                                 "names": {0: "circle", 1: "square"}}
    assert _simple_yaml("names: [a, b]\nval: v\n", Path("d.yaml"))["names"] == ["a", "b"]
    assert _simple_yaml("names:\n  - a\n  - b\n", Path("d.yaml"))["names"] == ["a", "b"]
    assert _simple_yaml(val_data.read_text(), val_data)["names"] == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
