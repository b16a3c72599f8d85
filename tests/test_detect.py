"""`tritonctl detect` against the real local Triton serving the demo model trained here."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_PT, ROOT, TRITONCTL, Triton, assert_one_line_error, build_demo_repo, free_ports, run_cli, start_server

from tritonctl.detect import DetectSettings, run_detect
from tritonctl.metrics import match, precision_recall

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _dets(line: dict) -> np.ndarray:
    rows = [[d["x1"], d["y1"], d["x2"], d["y2"], d["score"], d["class_id"]] for d in line["detections"]]
    return np.array(rows, np.float32).reshape(-1, 6)


def _video_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def _detect(triton: Triton, sources: list[str], tmp: Path, model: str = "shapes", **kw: object) -> tuple[dict, list[dict]]:
    settings = DetectSettings.create(sources=sources, urls=[triton.url], model=model, json_path=tmp / "out.jsonl", **kw)
    return run_detect(settings), _jsonl(tmp / "out.jsonl")


@pytest.fixture(scope="module")
def scene_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated scenes of odd sizes and aspect ratios, with their ground truth."""
    import cv2

    from tritonctl.synthetic import SceneSpec, random_scene

    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(11)
    for i, (w, h) in enumerate([(640, 360), (300, 500), (1920, 1080), (96, 96), (1000, 250), (250, 1000), (500, 500),
                                (731, 413)]):
        img, _ = random_scene(rng, SceneSpec(width=w, height=h, min_size=0.15, max_size=0.35))
        cv2.imwrite(str(folder / f"{i:02d}_{w}x{h}.png"), img)
    return folder


def test_same_detections_as_ultralytics_predict(demo_triton: Triton, scene_images: Path, tmp_path: Path) -> None:
    """The peer: Ultralytics' own YOLO(pt).predict on the same images. Matched boxes IoU >= 0.99, same classes,
    scores within 0.01, nothing missing on either side."""
    from ultralytics import YOLO

    _, lines = _detect(demo_triton, [str(scene_images)], tmp_path, model="shapes32")
    paths = sorted(scene_images.iterdir())
    imgsz = json.loads((demo_triton.repo / "shapes32" / "model.json").read_text())["imgsz"][0]
    preds = YOLO(str(DEMO_PT)).predict([str(p) for p in paths], imgsz=imgsz, conf=0.25, iou=0.45, verbose=False)
    assert len(lines) == len(paths)
    total = 0
    for line, pred in zip(lines, preds, strict=True):
        ours = _dets(line)
        theirs = np.concatenate([pred.boxes.xyxy.numpy(), pred.boxes.conf.numpy()[:, None],
                                 pred.boxes.cls.numpy()[:, None]], 1)
        m = match(theirs, ours, 0.99)
        assert len(m.pairs) == len(theirs) == len(ours), (line["uri"], line["frame"], theirs, ours)
        for i, j in m.pairs:
            assert abs(theirs[i, 4] - ours[j, 4]) < 0.01
        total += len(theirs)
    assert total >= 10  # the comparison saw real detections


def test_recall_and_precision_on_video(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    summary, lines = _detect(demo_triton, [str(demo_video)], tmp_path)
    gt = json.loads(Path(str(demo_video) + ".gt.json").read_text())["frames"]
    assert [line["frame"] for line in lines] == list(range(len(gt)))  # every frame, in order
    precision, recall = precision_recall([_dets(line) for line in lines], [np.array(f, np.float32).reshape(-1, 5) for f in gt])
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert summary["frames"]["dropped"] == 0 and summary["frames"]["inferred"] == len(gt)


def test_fp16_model_path_matches_fp32(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, fp16 = _detect(demo_triton, [str(demo_video)], tmp_path / "a", model="shapes")
    _, fp32 = _detect(demo_triton, [str(demo_video)], tmp_path / "b", model="shapes32")
    for a, b in zip(fp32, fp16, strict=True):
        da, db = _dets(a), _dets(b)
        m = match(da, db, 0.95)
        assert len(m.pairs) == len(da) == len(db)
        for i, j in m.pairs:
            assert np.abs(da[i, :4] - db[j, :4]).max() <= 0.5


def test_shared_memory_sends_no_tensor_bytes(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    with_shm, _ = _detect(demo_triton, [str(demo_video)], tmp_path, vid_stride=4)
    without, _ = _detect(demo_triton, [str(demo_video)], tmp_path, vid_stride=4, shm="none")
    assert with_shm["shared_memory"] and with_shm["bytes_sent_per_frame"] == 0
    side = json.loads((demo_triton.repo / "shapes" / "model.json").read_text())["imgsz"][0]
    assert without["bytes_sent_per_frame"] == 3 * side * side * 2  # one FP16 image per frame
    assert with_shm["frames"]["inferred"] == without["frames"]["inferred"] == 15


def test_grpc_batch_and_several_sources(demo_triton: Triton, demo_video: Path, scene_images: Path, tmp_path: Path) -> None:
    settings = DetectSettings.create(sources=[str(demo_video), str(scene_images / "*.png")], urls=[demo_triton.grpc_url],
                                     model="shapes", protocol="grpc", batch=4, vid_stride=2, json_path=tmp_path / "o.jsonl")
    summary = run_detect(settings)
    lines = _jsonl(tmp_path / "o.jsonl")
    by_source = {0: [x["frame"] for x in lines if x["source"] == 0], 1: [x["frame"] for x in lines if x["source"] == 1]}
    assert by_source[0] == list(range(0, 60, 2))  # every second frame, in order
    assert by_source[1] == list(range(0, 8, 2))
    assert summary["batch"] == 4 and summary["requests"] < len(lines)


def test_realtime_counts_every_drop(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    summary, lines = _detect(demo_triton, [str(demo_video)], tmp_path, realtime=True, concurrency=1)
    [src] = summary["sources"]
    assert src["policy"] == "latest"
    assert src["read"] == src["inferred"] + src["dropped"] + src["interrupted"] == 60
    assert len(lines) == src["inferred"]
    assert [x["frame"] for x in lines] == sorted(x["frame"] for x in lines)


def test_dead_endpoint_is_skipped(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    settings = DetectSettings.create(sources=[str(demo_video)], urls=[dead, demo_triton.url], model="shapes", vid_stride=3)
    summary = run_detect(settings)
    assert summary["frames"]["inferred"] == 20 and summary["frames"]["dropped"] == 0
    assert set(summary["per_endpoint"]) == {demo_triton.url} and summary["retries"] >= 1


def test_requests_spread_over_healthy_endpoints(demo_triton: Triton, demo_repo: Path, demo_video: Path) -> None:
    second = start_server(demo_repo)
    try:
        urls = [demo_triton.url, second.settings.url]  # type: ignore[attr-defined]
        summary = run_detect(DetectSettings.create(sources=[str(demo_video)], urls=urls, model="shapes", concurrency=4))
    finally:
        second.stop()  # type: ignore[attr-defined]
    assert set(summary["per_endpoint"]) == set(urls) and min(summary["per_endpoint"].values()) >= 10
    assert sum(summary["per_endpoint"].values()) == 60 and summary["retries"] == 0


def test_annotated_video_output(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    result = run_cli("detect", str(demo_video), "-m", "shapes", "--url", demo_triton.url, "--output",
                     str(tmp_path / "out.mp4"), "--json", str(tmp_path / "out.jsonl"), "--summary-json",
                     str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    assert _video_frames(tmp_path / "out.mp4") == 60 and len(_jsonl(tmp_path / "out.jsonl")) == 60
    assert json.loads((tmp_path / "s.json").read_text())["frames"]["inferred"] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.mp4", "s.json"]  # no partial files left


def _start_detect(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*TRITONCTL, "detect", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def _wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if partial.exists() and partial.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{partial} never reached {n} lines")


@pytest.fixture()
def long_video(tmp_path: Path) -> Path:
    from tritonctl.synthetic import write_video

    path = tmp_path / "long.mp4"
    write_video(path, n_frames=300, width=640, height=360, seed=3)
    return path


def test_ctrl_c_finalizes_files(demo_triton: Triton, long_video: Path, tmp_path: Path) -> None:
    out, jsonl = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    proc = _start_detect([str(long_video), "-m", "shapes", "--url", demo_triton.url, "--output", str(out),
                          "--json", str(jsonl), "--concurrency", "1"])
    _wait_for_lines(jsonl, 10)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = _jsonl(jsonl)
    assert 10 <= len(lines) < 300 and [x["frame"] for x in lines] == list(range(len(lines)))
    assert _video_frames(out) == len(lines)  # playable, one frame per JSON line
    assert "Traceback" not in stderr


def test_server_killed_and_restarted(demo_export: Path, long_video: Path, tmp_path: Path) -> None:
    """The only server dies mid-video and comes back on the same ports: the run waits, resumes and finishes."""
    repo = build_demo_repo(tmp_path / "repo", demo_export)
    ports = free_ports(3)
    server = start_server(repo, ports)
    jsonl, summary_path = tmp_path / "o.jsonl", tmp_path / "s.json"
    proc = _start_detect([str(long_video), "-m", "shapes", "--url", f"127.0.0.1:{ports[0]}", "--json", str(jsonl),
                          "--output", str(tmp_path / "o.mp4"), "--summary-json", str(summary_path), "--server-timeout", "90"])
    try:
        _wait_for_lines(jsonl, 20)
        server.process.kill()  # type: ignore[attr-defined]
        server.process.wait()  # type: ignore[attr-defined]
        time.sleep(1.0)
        server = start_server(repo, ports)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        server.stop()  # type: ignore[attr-defined]
    assert proc.returncode == 0, stderr
    summary = json.loads(summary_path.read_text())
    assert summary["retries"] >= 1 and summary["all_down_s"] > 0
    src = summary["sources"][0]
    assert src["read"] == src["inferred"] + src["dropped"] == 300
    lines = _jsonl(jsonl)
    assert len(lines) == src["inferred"] and _video_frames(tmp_path / "o.mp4") == len(lines)


def test_bad_inputs(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 10000, dtype=np.uint8).tobytes())
    url = ["--url", demo_triton.url]
    dead = ["--url", f"127.0.0.1:{free_ports(1)[0]}"]
    cases = [
        ([str(corrupt), "-m", "shapes", *url, "--json", str(tmp_path / "x.jsonl")], 2, "corrupt"),
        ([str(tmp_path / "missing.mp4"), "-m", "shapes", *url], 2, "does not exist"),
        ([str(demo_video), "-m", "nosuchmodel", *url], 5, "nosuchmodel"),
        ([str(demo_video), "-m", "notdet", *url], 5, "detection head"),
        ([str(demo_video), "-m", "shapes", *dead], 4, "no Triton"),
        ([str(demo_video), "-m", "shapes", *url, "--batch", "64"], 2, "max batch"),
        ([str(demo_video), "-m", "shapes", *url, "--show"], 2, "display"),
    ]
    for args, code, words in cases:
        assert_one_line_error(run_cli("detect", *args, env={"DISPLAY": ""}), code, words)
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob(".*"))  # nothing half-written


def test_end_to_end_head_through_triton(tmp_path: Path, demo_video: Path) -> None:
    """A YOLOv10 (built from its yaml: untrained, so it finds nothing) exports with its [B,300,6] end-to-end head,
    is served by the real Triton, and detect recognises and decodes that layout."""
    from ultralytics import YOLO

    from tritonctl.client import fetch_model_info
    from tritonctl.export import ExportSettings, export
    from tritonctl.repository import ConfigSettings, write_model

    pt = tmp_path / "yolov10n.pt"
    YOLO("yolov10n.yaml").save(str(pt))
    result = export(ExportSettings.create(model_path=pt, out_dir=tmp_path / "export", imgsz=160, n_check=2))
    assert result.meta is not None and result.meta.outputs[0].shape[1:] == (300, 6)
    write_model(ConfigSettings.create(name="v10", model_file=tmp_path / "export" / "model_fp16.onnx", repo=tmp_path / "repo"))
    server = start_server(tmp_path / "repo")
    try:
        url = server.settings.url  # type: ignore[attr-defined]
        assert fetch_model_info("http", url, "v10").layout == "end2end"
        summary = run_detect(DetectSettings.create(sources=[str(demo_video)], urls=[url], model="v10", vid_stride=20))
    finally:
        server.stop()  # type: ignore[attr-defined]
    assert summary["frames"]["inferred"] == 3 and summary["frames"]["dropped"] == 0
