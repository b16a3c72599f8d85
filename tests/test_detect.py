"""`tritonctl detect` against the real local Triton serving the demo model trained here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from conftest import (
    DEMO_PT,
    ROOT,
    TRITONCTL,
    Triton,
    assert_one_line_error,
    build_demo_repo,
    free_ports,
    read_fifo,
    run_cli,
    start_server,
)

from tritonctl.core.errors import BadInput
from tritonctl.outputs.sinks import FpsMeter, VideoSink, image_names
from tritonctl.sources.video import FrameQueue
from tritonctl.stream.detect import DetectSettings, run_detect
from tritonctl.stream.dispatch import Dispatcher
from tritonctl.stream.stats import PROBLEMS_KEPT, RunStats
from tritonctl.stream.summary import FRAME_COUNTS
from tritonctl.vision.detections import Detections
from tritonctl.vision.frames import Frame, Result
from tritonctl.vision.metrics import match, precision_recall

F = TypeVar("F", bound=Callable[..., Any])


def _server(fn: F) -> F:
    """Needs the real local Triton (tests without this mark need none)."""
    return pytest.mark.server(pytest.mark.slow(fn))  # type: ignore[no-any-return]


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
    return run_detect(settings).to_json(), _jsonl(tmp / "out.jsonl")


@pytest.fixture(scope="module")
def scene_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated scenes of odd sizes and aspect ratios, with their ground truth."""
    import cv2

    from tritonctl.vision.synthetic import SceneSpec, random_scene

    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(11)
    for i, (w, h) in enumerate([(640, 360), (300, 500), (1920, 1080), (96, 96), (1000, 250), (250, 1000), (500, 500),
                                (731, 413)]):
        img, _ = random_scene(rng, SceneSpec(width=w, height=h, min_size=0.15, max_size=0.35))
        cv2.imwrite(str(folder / f"{i:02d}_{w}x{h}.png"), img)
    return folder


@_server
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


@_server
def test_recall_and_precision_on_video(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    summary, lines = _detect(demo_triton, [str(demo_video)], tmp_path)
    gt = json.loads(Path(str(demo_video) + ".gt.json").read_text())["frames"]
    assert [line["frame"] for line in lines] == list(range(len(gt)))  # every frame, in order
    precision, recall = precision_recall([_dets(line) for line in lines], [np.array(f, np.float32).reshape(-1, 5) for f in gt])
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert summary["frames"]["dropped"] == 0 and summary["frames"]["inferred"] == len(gt)


@_server
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


@_server
def test_shared_memory_sends_no_tensor_bytes(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    with_shm, _ = _detect(demo_triton, [str(demo_video)], tmp_path, vid_stride=4)
    without, _ = _detect(demo_triton, [str(demo_video)], tmp_path, vid_stride=4, shm="none")
    assert with_shm["shared_memory"] and with_shm["bytes_sent_per_frame"] == 0
    side = json.loads((demo_triton.repo / "shapes" / "model.json").read_text())["imgsz"][0]
    assert without["bytes_sent_per_frame"] == 3 * side * side * 2  # one FP16 image per frame
    assert with_shm["frames"]["inferred"] == without["frames"]["inferred"] == 15


@_server
def test_grpc_batch_and_several_sources(demo_triton: Triton, demo_video: Path, scene_images: Path, tmp_path: Path) -> None:
    settings = DetectSettings.create(sources=[str(demo_video), str(scene_images / "*.png")], urls=[demo_triton.grpc_url],
                                     model="shapes", protocol="grpc", batch=4, vid_stride=2, json_path=tmp_path / "o.jsonl")
    summary = run_detect(settings).to_json()
    lines = _jsonl(tmp_path / "o.jsonl")
    by_source = {0: [x["frame"] for x in lines if x["source"] == 0], 1: [x["frame"] for x in lines if x["source"] == 1]}
    assert by_source[0] == list(range(0, 60, 2))  # every second frame, in order
    assert by_source[1] == list(range(0, 8, 2))
    assert summary["batch"] == 4 and summary["requests"] < len(lines)


@_server
def test_realtime_counts_every_drop(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    summary, lines = _detect(demo_triton, [str(demo_video)], tmp_path, realtime=True, concurrency=1)
    [src] = summary["sources"]
    assert src["policy"] == "latest"
    assert src["read"] == src["inferred"] + src["dropped"] + src["interrupted"] == 60
    assert len(lines) == src["inferred"]
    assert [x["frame"] for x in lines] == sorted(x["frame"] for x in lines)


@_server
def test_dead_endpoint_is_skipped(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    settings = DetectSettings.create(sources=[str(demo_video)], urls=[dead, demo_triton.url], model="shapes", vid_stride=3)
    summary = run_detect(settings).to_json()
    assert summary["frames"]["inferred"] == 20 and summary["frames"]["dropped"] == 0
    assert set(summary["per_endpoint"]) == {demo_triton.url} and summary["retries"] >= 1


@_server
def test_requests_spread_over_healthy_endpoints(demo_triton: Triton, demo_repo: Path, demo_video: Path) -> None:
    second = start_server(demo_repo)
    try:
        urls = [demo_triton.url, second.settings.url]  # type: ignore[attr-defined]
        summary = run_detect(DetectSettings.create(sources=[str(demo_video)], urls=urls, model="shapes", concurrency=4)).to_json()
    finally:
        second.stop()  # type: ignore[attr-defined]
    assert set(summary["per_endpoint"]) == set(urls) and min(summary["per_endpoint"].values()) >= 10
    assert sum(summary["per_endpoint"].values()) == 60 and summary["retries"] == 0


@_server
def test_annotated_video_output(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    result = run_cli("detect", str(demo_video), "-m", "shapes", "--url", demo_triton.url, "--output",
                     str(tmp_path / "out.mp4"), "--json", str(tmp_path / "out.jsonl"), "--summary-json",
                     str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress bar, and none of its lines left behind
    assert _video_frames(tmp_path / "out.mp4") == 60 and len(_jsonl(tmp_path / "out.jsonl")) == 60
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"]["inferred"] == 60 and summary["ended_by"] == "end of sources"
    assert f"{tmp_path / 'out.mp4'} (60 frames)" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.mp4", "s.json"]  # no partial files left


def _start_detect(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*TRITONCTL, "detect", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def _table_rows(stdout: str) -> list[dict[str, str]]:
    """The per-source rows of the summary table detect prints, by column name."""
    lines = stdout.splitlines()
    header = next(line for line in lines if "inferred" in line and "policy" in line)
    names = [c.strip() for c in header.strip()[1:-1].split("┃")]
    rows = [line for line in lines if line.startswith("│ ") and line[2:].split(":")[0].isdigit()]
    return [dict(zip(names, (c.strip() for c in row.strip()[1:-1].split("│")), strict=True)) for row in rows]


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
    from tritonctl.vision.synthetic import write_video

    path = tmp_path / "long.mp4"
    write_video(path, n_frames=300, width=640, height=360, seed=3)
    return path


@_server
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_finalizes_files_and_accounts_for_every_frame(demo_triton: Triton, long_video: Path, tmp_path: Path,
                                                             sig: signal.Signals) -> None:
    """A stopped run once showed read 125 / inferred 116 / dropped 8 (one frame lost, and "dropped" on a file that
    promises every frame) while its summary.json said dropped 0, interrupted 8."""
    out, jsonl, summary_path = tmp_path / "o.mp4", tmp_path / "o.jsonl", tmp_path / "s.json"
    proc = _start_detect([str(long_video), "-m", "shapes", "--url", demo_triton.url, "--output", str(out),
                          "--json", str(jsonl), "--summary-json", str(summary_path), "--concurrency", "1"],
                         env={"COLUMNS": "250"})  # one table row per source
    _wait_for_lines(jsonl, 10)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = _jsonl(jsonl)
    assert 10 <= len(lines) < 300 and [x["frame"] for x in lines] == list(range(len(lines)))
    assert _video_frames(out) == len(lines)  # playable, one frame per JSON line
    assert "Traceback" not in stderr
    summary = json.loads(summary_path.read_text())
    [src] = summary["sources"]
    assert summary["interrupted_by"] == sig.name and src["inferred"] == len(lines)
    assert summary["ended_by"] == f"interrupted: {sig.name}"
    assert src["read"] == sum(src[k] for k in FRAME_COUNTS[1:])
    assert src["dropped"] == src["failed"] == src["skipped_stride"] == 0 and src["interrupted"] > 0  # a file: no drops
    assert summary["frames"] == {k: src[k] for k in FRAME_COUNTS}
    [row] = _table_rows(stdout)
    assert {k: int(row[k.removesuffix("_stride")]) for k in FRAME_COUNTS} == {k: src[k] for k in FRAME_COUNTS}


@_server
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


@_server
def test_a_lost_server_still_prints_and_writes_the_summary(tiny_repo: Path, tmp_path: Path) -> None:
    """The server gone past --server-timeout exited 4 with a good line and finalized JSON Lines and video, but printed
    no summary and wrote no --summary-json."""
    from tritonctl.vision.synthetic import write_video

    video = tmp_path / "long.mp4"
    write_video(video, n_frames=3000, width=64, height=48, seed=2)
    ports = free_ports(3)
    server = start_server(tiny_repo, ports)
    jsonl, summary_path = tmp_path / "o.jsonl", tmp_path / "s.json"
    proc = _start_detect([str(video), "-m", "tiny", "--url", f"127.0.0.1:{ports[0]}", "--json", str(jsonl), "--output",
                          str(tmp_path / "o.mp4"), "--summary-json", str(summary_path), "--server-timeout", "1",
                          "--concurrency", "1"], env={"COLUMNS": "250"})
    try:
        _wait_for_lines(jsonl, 20)
        server.process.kill()  # type: ignore[attr-defined]
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.stop()  # type: ignore[attr-defined]
    assert proc.returncode == 4, stderr
    assert len(stderr.strip().splitlines()) == 1 and "no Triton endpoint answered" in stderr
    summary = json.loads(summary_path.read_text())
    assert summary["ended_by"].startswith("server lost: no Triton endpoint answered")
    [src] = summary["sources"]
    assert src["read"] == sum(src[k] for k in FRAME_COUNTS[1:]) and 20 <= src["inferred"] < 3000
    assert len(_jsonl(jsonl)) == src["inferred"] and _video_frames(tmp_path / "o.mp4") == src["inferred"]
    [row] = _table_rows(stdout)  # printed too, with the reason
    assert int(row["inferred"]) == src["inferred"] and "ended by server lost" in stdout
    assert str(summary_path) in stdout


@_server
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


@_server
def test_end_to_end_head_through_triton(tmp_path: Path, demo_video: Path) -> None:
    """A YOLOv10 (built from its yaml: untrained, so it finds nothing) exports with its [B,300,6] end-to-end head,
    is served by the real Triton, and detect recognises and decodes that layout."""
    from ultralytics import YOLO

    from tritonctl.core.endpoint import parse_endpoint
    from tritonctl.inference.client import fetch_model_info
    from tritonctl.model.export import ExportSettings, export
    from tritonctl.model.repository import ConfigSettings, write_model

    pt = tmp_path / "yolov10n.pt"
    YOLO("yolov10n.yaml").save(str(pt))
    result = export(ExportSettings.create(model_path=pt, out_dir=tmp_path / "export", imgsz=160, n_check=2))
    assert result.meta is not None and result.meta.outputs[0].shape[1:] == (300, 6)
    write_model(ConfigSettings.create(name="v10", model_file=tmp_path / "export" / "model_fp16.onnx", repo=tmp_path / "repo"))
    server = start_server(tmp_path / "repo")
    try:
        url = server.settings.url  # type: ignore[attr-defined]
        assert fetch_model_info("http", parse_endpoint(url), "v10").layout == "end2end"
        summary = run_detect(DetectSettings.create(sources=[str(demo_video)], urls=[url], model="v10", vid_stride=20)).to_json()
    finally:
        server.stop()  # type: ignore[attr-defined]
    assert summary["frames"]["inferred"] == 3 and summary["frames"]["dropped"] == 0


# ---------------------------------------------------------------- outputs never replace inputs (checked before the server)


@pytest.fixture()
def small_video(tmp_path: Path) -> Path:
    from tritonctl.vision.synthetic import write_video

    path = tmp_path / "in.mp4"
    write_video(path, n_frames=6, width=64, height=48, seed=1)
    return path


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.png", "c.jpg"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    return folder


def test_the_users_video_is_never_replaced_by_json(small_video: Path) -> None:
    """`detect in.mp4 -m shapes --json in.mp4` exited 0 and replaced the video with JSON Lines."""
    before = small_video.read_bytes()
    result = run_cli("detect", str(small_video), "-m", "shapes", "--json", str(small_video))
    assert_one_line_error(result, 2, str(small_video), "is a source")
    assert small_video.read_bytes() == before
    assert sorted(p.name for p in small_video.parent.iterdir()) == ["in.mp4", "in.mp4.gt.json"]


def _refused(sources: list[Path | str], words: str, **kw: Any) -> str:
    with pytest.raises(BadInput, match=words) as info:
        DetectSettings.create(sources=[str(s) for s in sources], urls=[], model="m", **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_every_output_is_checked_against_the_sources(small_video: Path, image_folder: Path, tmp_path: Path) -> None:
    for flag in ("output", "json_path", "summary_json"):
        assert str(small_video) in _refused([small_video], "is a source", **{flag: small_video})
    (tmp_path / "link.mp4").symlink_to(small_video)
    _refused([small_video], "is a source", json_path=tmp_path / "link.mp4")
    os.link(small_video, tmp_path / "hard.jsonl")
    _refused([small_video], "is a source", json_path=tmp_path / "hard.jsonl")
    _refused([small_video], "is a source", json_path=image_folder / ".." / "in.mp4")
    _refused([image_folder], "is a source", json_path=image_folder / "a.png")  # a file inside a source folder
    _refused([image_folder / "*.png"], "is a source", summary_json=image_folder / "b.png")  # ... or a glob
    (tmp_path / "out_1.mp4").write_bytes(small_video.read_bytes())
    _refused([small_video, tmp_path / "out_1.mp4"], "out_1.mp4 is a source", output=tmp_path / "out.mp4")
    assert (tmp_path / "out_1.mp4").read_bytes() == small_video.read_bytes()


def test_outputs_are_distinct_files_with_usable_names(small_video: Path, tmp_path: Path) -> None:
    same = tmp_path / "o.json"
    _refused([small_video], "also written by --json", json_path=same, summary_json=same)
    _refused([small_video, small_video], "also written by --output", output=tmp_path / "o.mp4", json_path=tmp_path / "o_1.mp4")
    _refused([small_video], "name a video file ending in .mp4", output=tmp_path / "annotated")
    (tmp_path / "folder.mp4").mkdir()
    _refused([small_video], "is a folder", output=tmp_path / "folder.mp4")
    _refused([small_video], "is a folder", json_path=tmp_path)
    (tmp_path / "a_file").write_text("")
    _refused([small_video], "is a file, not a folder", summary_json=tmp_path / "a_file" / "s.json")
    (tmp_path / "null.mp4").symlink_to("/dev/null")
    _refused([small_video], "is a device", output=tmp_path / "null.mp4")  # a video needs a file it can seek in
    settings = DetectSettings.create(sources=[str(small_video)] * 2, urls=[], model="m", output=tmp_path / "o.avi")
    assert [p.name for _, p in settings.output_files()] == ["o_0.avi", "o_1.avi"]


def test_bad_output_names_are_one_line_not_a_traceback(small_video: Path, tmp_path: Path) -> None:
    """`--output` without an extension, or naming an existing folder, ended in an OSError traceback mid-run."""
    assert_one_line_error(run_cli("detect", str(small_video), "-m", "m", "--output", str(tmp_path / "out")), 2,
                          "--output", "name a video file")
    assert_one_line_error(run_cli("detect", str(small_video), "-m", "m", "--json", str(tmp_path)), 2, "is a folder")


@_server
def test_json_lines_to_standard_output(triton: Triton, small_video: Path) -> None:
    """`--json -` wrote a file called `-`; `--json /dev/stdout` renamed a file onto the device node (as root: for the
    whole machine). Now both stream the lines, and everything else goes to standard error, so `| jq` works."""
    dev = Path("/dev/stdout")
    before = (dev.is_symlink(), os.readlink(dev) if dev.is_symlink() else None)
    for target in ("-", "/dev/stdout"):
        result = run_cli("detect", str(small_video), "-m", "tiny", "--url", triton.url, "--json", target)
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == list(range(6)), result.stdout
        assert "fps" in result.stderr  # the summary, on standard error
    assert not (ROOT / "-").exists()
    assert (dev.is_symlink(), os.readlink(dev) if dev.is_symlink() else None) == before


@_server
def test_json_lines_into_a_fifo_and_a_link_to_one(triton: Triton, small_video: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.jsonl"
    link.symlink_to(fifo)
    for name in (fifo, link):
        got: list[str] = []
        reader = read_fifo(fifo, got)
        result = run_cli("detect", str(small_video), "-m", "tiny", "--url", triton.url, "--json", str(name))
        reader.join(10)
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["frame"] for line in got] == list(range(6))
        assert fifo.is_fifo() and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "in.mp4", "in.mp4.gt.json", "link.jsonl"]


@_server
def test_every_output_makes_its_folder(triton: Triton, small_video: Path, tmp_path: Path) -> None:
    """`--output out/my.mp4` refused a missing folder while every other output made its own."""
    files = [tmp_path / "v" / "deep" / "out.mp4", tmp_path / "j" / "d.jsonl", tmp_path / "s" / "s.json"]
    result = run_cli("detect", str(small_video), "-m", "tiny", "--url", triton.url, "--output", str(files[0]),
                     "--json", str(files[1]), "--summary-json", str(files[2]))
    assert result.returncode == 0, result.stderr
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    assert _video_frames(files[0]) == 6


# ---------------------------------------------------------------- endpoints as users type them


def test_url_typos_are_one_line(small_video: Path) -> None:
    assert_one_line_error(run_cli("detect", str(small_video), "-m", "m", "--url", "127.0.0.1:1910O"), 2, "not a number")
    assert_one_line_error(run_cli("detect", str(small_video), "-m", "m", "--url", "[::1"), 2, "brackets")
    with pytest.raises(BadInput, match="brackets"):
        DetectSettings.create(sources=[str(small_video)], urls=["::1"], model="m")


def test_endpoints_are_parsed_once(small_video: Path) -> None:
    s = DetectSettings.create(sources=[str(small_video)], urls=["http://127.0.0.1:9000/", "127.0.0.1:9000", "[::1]"],
                              model="m", shm="system")  # ::1 is this host too
    assert s.urls == ["127.0.0.1:9000", "[::1]:8000"] and all(e.local for e in s.endpoints)
    assert DetectSettings.create(sources=[str(small_video)], urls=[], model="m", protocol="grpc").urls == ["127.0.0.1:8001"]
    with pytest.raises(BadInput, match="--shm system"):
        DetectSettings.create(sources=[str(small_video)], urls=["10.1.2.3:8000"], model="m", shm="system")


@_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_url_pasted_with_its_scheme_works(triton: Triton, small_video: Path, tmp_path: Path, protocol: str) -> None:
    """`--url http://127.0.0.1:PORT` gave "url should not include the scheme", then tritonclient's '_closed' traceback."""
    url = f"{protocol}://{triton.url if protocol == 'http' else triton.grpc_url}"
    result = run_cli("detect", str(small_video), "-m", "tiny", "--url", url, "--protocol", protocol,
                     "--json", str(tmp_path / "o.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert len(_jsonl(tmp_path / "o.jsonl")) == 6


# ---------------------------------------------------------------- image sources name their files


@_server
def test_lines_of_an_image_folder_name_their_files(triton: Triton, image_folder: Path, small_video: Path,
                                                   tmp_path: Path) -> None:
    settings = DetectSettings.create(sources=[str(image_folder), str(small_video)], urls=[triton.url], model="tiny",
                                     json_path=tmp_path / "o.jsonl")
    summary = run_detect(settings).to_json()
    lines = _jsonl(tmp_path / "o.jsonl")
    images = [x for x in lines if x["source"] == 0]
    assert [(x["uri"], x["frame"], x["path"]) for x in images] == \
        [(str(image_folder), i, str(image_folder / n)) for i, n in enumerate(["a.png", "b.png", "c.jpg"])]
    assert all("path" not in x for x in lines if x["source"] == 1) and len(lines) == 9
    for stage in ("round_trip", "end_to_end"):
        p = summary["latency_ms"][stage]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"] and p["mean"] > 0


# ---------------------------------------------------------------- bounded memory


def _frame(source: int, index: int) -> Frame:
    return Frame(source, index, np.zeros((1, 1, 3), np.uint8), 0.0, time.perf_counter(), 0.0)


def test_dispatcher_holds_back_frames_beyond_its_window() -> None:
    """A slow request holding frame 0 cannot make the ordered emitter buffer every frame after it."""
    q, stop = FrameQueue(100, "block"), threading.Event()
    for i in range(20):
        q.put(_frame(0, i), stop)
    d = Dispatcher(window=4)
    d.add(0, q)
    frames, done = d.take(8, stop)
    assert [seq for seq, _ in frames] == [0, 1, 2, 3] and not done
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert d.take(1, stop) == ([], True) and time.monotonic() - t0 >= 0.15  # waited: the window was full
    d.advance(3)  # frames 0-2 reached the sinks
    frames, _ = d.take(8, threading.Event())
    assert [seq for seq, _ in frames] == [4, 5, 6]


def test_problems_are_kept_once_and_bounded() -> None:
    stats = RunStats()
    for i in range(PROBLEMS_KEPT + 30):
        stats.problem(f"problem {i}")
        stats.problem(f"problem {i}")
    assert stats.problems == [f"problem {i}" for i in range(PROBLEMS_KEPT)]
    assert stats.problems_dropped == 60  # beyond the kept ones, every report is counted (none is stored)


# ---------------------------------------------------------------- image sources write images, not a video


def test_image_sources_write_a_folder_of_images(image_folder: Path, small_video: Path, tmp_path: Path) -> None:
    def targets(sources: list[Path | str], output: Path) -> dict[int, Path]:
        return DetectSettings.create(sources=[str(x) for x in sources], urls=[], model="m", output=output).output_targets()

    out = tmp_path / "annotated"
    assert targets([image_folder], out) == {0: out}
    assert targets([image_folder, image_folder / "*.png"], out) == {0: out / "0", 1: out / "1"}
    assert targets([small_video, image_folder], tmp_path / "o.mp4") == {0: tmp_path / "o_0.mp4", 1: tmp_path / "o_1"}
    _refused([image_folder], "into a folder", output=tmp_path / "o.mp4")  # not an MP4 of resized stills
    _refused([image_folder / "a.png"], "name a folder", output=tmp_path / "o.png")
    _refused([small_video, image_folder], "a video source writes an annotated video", output=out)
    (tmp_path / "file").write_text("x")
    _refused([image_folder], "is a file", output=tmp_path / "file")
    _refused([image_folder], "does not exist", output=tmp_path / "missing" / "annotated")


def test_image_outputs_never_replace_inputs(image_folder: Path, tmp_path: Path) -> None:
    for sources in ([image_folder], [image_folder / "*.png"], [image_folder / "a.png"]):
        assert "holds source images" in _refused(sources, "holds source images", output=image_folder)
    for sub in ("x", "y"):  # a glob over several folders keeps their names apart: x/a.png and y/a.png
        (tmp_path / "data" / sub).mkdir(parents=True)
        (tmp_path / "data" / sub / "a.png").write_bytes((image_folder / "a.png").read_bytes())
    [spec] = DetectSettings.create(sources=[str(tmp_path / "data" / "*" / "a.png")], urls=[], model="m",
                                   output=tmp_path / "o").sources
    assert sorted(str(p) for p in image_names(spec).values()) == ["x/a.png", "y/a.png"]
    (tmp_path / "o").mkdir()
    _refused([image_folder / "a.png"], "also written by", output=tmp_path / "o", json_path=tmp_path / "o" / "a.png")


@_server
def test_annotated_images_are_named_after_their_inputs(triton: Triton, image_folder: Path, small_video: Path,
                                                       tmp_path: Path) -> None:
    import cv2

    before = {p.name: p.read_bytes() for p in image_folder.iterdir()}
    result = run_cli("detect", str(image_folder), "-m", "tiny", "--url", triton.url, "--output", f"{tmp_path / 'annotated'}/")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "annotated").iterdir())
    assert written == ["a.png", "b.png", "c.jpg"]  # one per input, its name and format, no partial file left
    for name in written:
        image = cv2.imread(str(tmp_path / "annotated" / name))
        assert image is not None and image.shape == (40, 56, 3)  # the input's own size, not resized into a video
    assert {p.name: p.read_bytes() for p in image_folder.iterdir()} == before
    assert f"{tmp_path / 'annotated'} (3 frames)" in result.stdout

    mixed = run_cli("detect", str(small_video), str(image_folder / "*.png"), "-m", "tiny", "--url", triton.url,
                    "--output", str(tmp_path / "o.mp4"))
    assert mixed.returncode == 0, mixed.stderr
    assert _video_frames(tmp_path / "o_0.mp4") == 6 and sorted(p.name for p in (tmp_path / "o_1").iterdir()) == ["a.png", "b.png"]


def test_image_output_inside_an_input_folder_is_refused(image_folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`detect imgs --output imgs/sub` wrote annotated copies into the input folder, and a shell-expanded
    `detect imgs/*.jpg --output imgs` wrote imgs/0/, imgs/1/ among the inputs."""
    _refused([image_folder], "inside the input folder", output=image_folder / "sub")
    _refused([image_folder / "a.png", image_folder / "b.png"], "inside the input folder", output=image_folder)
    _refused([image_folder / "a.png"], "holds source images", output=image_folder)  # one image's own folder
    result = run_cli("detect", str(image_folder), "-m", "m", "--output", str(image_folder / "sub"))
    assert_one_line_error(result, 2, f"--output {image_folder / 'sub'} is inside the input folder {image_folder}")
    assert sorted(p.name for p in image_folder.iterdir()) == ["a.png", "b.png", "c.jpg"]
    DetectSettings.create(sources=[str(image_folder)], urls=[], model="m", output=tmp_path / "annotated")  # a sibling
    monkeypatch.chdir(image_folder)
    _refused(["a.png"], "holds source images", output=Path("."))  # `.`, the image's folder
    # next to a single image, a new subfolder is where users put results: nothing mixes into a folder source there
    DetectSettings.create(sources=["a.png"], urls=[], model="m", output=Path("annotated"))
    DetectSettings.create(sources=["a.png", "b.png"], urls=[], model="m", output=Path("annotated"))


@_server
def test_an_unreadable_image_is_a_failed_frame_not_a_failed_source(triton: Triton, tmp_path: Path) -> None:
    """A folder with one bad broken.jpg exited 1 ("source 0 (imgs): cannot read image imgs/broken.jpg") although the
    other images were written; and "wrote … (1 frames)"."""
    import cv2

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "good.png"), np.full((40, 56, 3), 90, np.uint8))
    (imgs / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "annotated"
    result = run_cli("detect", str(imgs), "-m", "tiny", "--url", triton.url, "--output", str(out), "--summary-json",
                     str(tmp_path / "s.json"), env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.count("broken.jpg") == 1 and f"cannot read image {imgs / 'broken.jpg'}" in result.stdout
    [row] = _table_rows(result.stdout)
    assert (row["read"], row["inferred"], row["failed"], row["error"]) == ("2", "1", "1", "")
    assert [p.name for p in out.iterdir()] == ["good.png"]
    assert f"{out} (1 frame)," in result.stdout  # singular
    [src] = json.loads((tmp_path / "s.json").read_text())["sources"]
    assert src["failed"] == 1 and src["error"] == ""


# ---------------------------------------------------------------- the fps stamped on annotated video


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fps_overlay_is_the_measured_rate_not_a_frame_count(tmp_path: Path) -> None:
    """Frame 30 said "30.0 fps" and the last "150.0 fps" in a 171.6 fps run: the meter counted frames in the last
    second, and the run was younger than a second."""
    from types import SimpleNamespace

    clock = _Clock()
    sink = VideoSink({0: tmp_path / "o.mp4"}, lambda sid: 30.0, clock=clock)
    labels = []
    for i in range(150):
        clock.now += 1 / 171.6
        frame = Frame(0, i, np.zeros((48, 64, 3), np.uint8), i / 30, clock.now, 0.0)
        sink.write(Result(i, frame, Detections.empty(), {}), SimpleNamespace(names={}))  # type: ignore[arg-type]
        labels.append(sink.labels[0])
    sink.close()
    assert labels[29] == labels[149] == "171.6 fps"
    assert _video_frames(tmp_path / "o.mp4") == 150


def test_fps_meter_averages_bursts_over_its_window() -> None:
    clock = _Clock()
    meter = FpsMeter(window_s=1.0, clock=clock)
    rates = []
    for _ in range(100):  # batches of 4 frames emitted at once, 25 batches a second: 100 fps
        clock.now += 0.04
        rates += [meter.tick() for _ in range(4)]
    assert all(abs(r - 100) <= 4 for r in rates[-50:])  # within one batch of the true rate once the window is full
    assert 0 < rates[3] <= 100.5  # the first batch: its rate since the start, not a count
    small = FpsMeter(window_s=1.0, limit=8, clock=clock)
    for _ in range(50):
        clock.now += 0.001
        r = small.tick()
    assert abs(r - 1000) < 1  # more frames than it keeps: the rate over the span it holds


# ---------------------------------------------------------------- the other protocol's port


@_server
@pytest.mark.parametrize("command", ["detect", "benchmark"])
def test_the_other_protocols_port_is_named(triton: Triton, small_video: Path, tmp_path: Path, command: str) -> None:
    """`--protocol grpc` with the HTTP port said "start one with tritonctl serve"."""
    args = [str(small_video)] if command == "detect" else ["--out-dir", str(tmp_path / "b")]
    grpc_on_http = run_cli(command, *args, "-m", "tiny", "--protocol", "grpc", "--url", triton.url)
    assert_one_line_error(grpc_on_http, 2, f"{triton.url} is Triton's HTTP port",
                          "--protocol grpc needs the gRPC port (default 8001)")
    http_on_grpc = run_cli(command, *args, "-m", "tiny", "--protocol", "http", "--url", triton.grpc_url)
    assert_one_line_error(http_on_grpc, 2, f"{triton.grpc_url} is Triton's gRPC port",
                          "--protocol http needs the HTTP port (default 8000)")
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- the pipeline file and the flags that override it


def test_flags_given_override_the_pipeline_file(small_video: Path, tmp_path: Path) -> None:
    from tritonctl.stream.detect import settings_from_flags

    second = tmp_path / "b.mp4"
    second.write_bytes(small_video.read_bytes())
    config = tmp_path / "cameras.yaml"
    config.write_text(f"model: shapes\nurls: ['127.0.0.1:8000']\nrun: {{batch: 4, batch_timeout_ms: 20}}\n"
                      f"defaults: {{conf: 0.3}}\nsources:\n  - {{name: a, uri: '{small_video}', conf: 0.6, vid_stride: 3}}\n"
                      f"  - {{name: b, uri: '{second}'}}\n")
    unset = dict.fromkeys(("model", "conf", "batch", "batch_timeout_s", "vid_stride", "urls"))
    from_file = settings_from_flags(config, [], unset)
    a, b = from_file.source_options
    assert (from_file.model, from_file.batch, from_file.batch_timeout_s) == ("shapes", 4, 0.02)
    assert (a.name, a.post.conf, a.vid_stride) == ("a", 0.6, 3) and (b.name, b.post.conf, b.vid_stride) == ("b", 0.3, 1)
    flags = {**unset, "conf": 0.5, "batch": 2, "model": "other", "urls": ["127.0.0.1:9000"]}
    overridden = settings_from_flags(config, [], flags)
    assert (overridden.model, overridden.batch, overridden.urls) == ("other", 2, ["127.0.0.1:9000"])
    assert [o.post.conf for o in overridden.source_options] == [0.5, 0.5]  # a flag wins over every source's value
    assert [o.vid_stride for o in overridden.source_options] == [3, 1]  # what no flag names stays the file's


# ---------------------------------------------------------------- tracking, end to end


@_server
def test_detect_track_scores_idf1_against_the_videos_ground_truth(demo_triton: Triton, tmp_path: Path) -> None:
    """`detect --track bytetrack` on the synthetic video, its JSON Lines scored by motmetrics against the MOT ground
    truth the generator writes: IDF1 >= 0.9 (the issue's target; measured 0.97 on the tracker alone)."""
    import motmetrics as mm

    from tritonctl.vision.synthetic import write_mot_ground_truth, write_video

    n, w, h, seed = 300, 640, 360, 7
    video = tmp_path / "tracked.mp4"
    write_video(video, n_frames=n, width=w, height=h, seed=seed)
    gt = np.loadtxt(write_mot_ground_truth(tmp_path / "gt.txt", n, w, h, seed), delimiter=",")
    result = run_cli("detect", str(video), "-m", "shapes32", "--url", demo_triton.url, "--track", "bytetrack",
                     "--json", str(tmp_path / "t.jsonl"), "--output", str(tmp_path / "t.mp4"), "--summary-json",
                     str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    lines = _jsonl(tmp_path / "t.jsonl")
    assert len(lines) == n and all("track_id" in d for line in lines for d in line["detections"])
    acc = mm.MOTAccumulator(auto_id=True)
    for f, line in enumerate(lines, 1):
        hyp = np.array([[d["x1"], d["y1"], d["x2"] - d["x1"], d["y2"] - d["y1"]] for d in line["detections"]]).reshape(-1, 4)
        truth = gt[gt[:, 0] == f]
        acc.update(truth[:, 1].astype(int).tolist(), [d["track_id"] for d in line["detections"]],
                   mm.distances.iou_matrix(truth[:, 2:6], hyp, max_iou=0.5))
    scores = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="detect")
    idf1 = float(scores["idf1"].iloc[0])
    print(f"\ndetect --track bytetrack: IDF1 {idf1:.3f} MOTA {float(scores['mota'].iloc[0]):.3f} "
          f"ID switches {int(scores['num_switches'].iloc[0])}")
    assert idf1 >= 0.9
    summary = json.loads((tmp_path / "s.json").read_text())
    assert 3 <= summary["sources"][0]["tracks"] <= 8  # three shapes, a few ids lost and found at most
    assert _video_frames(tmp_path / "t.mp4") == n


@_server
def test_zones_and_lines_count_what_the_ground_truth_says(demo_triton: Triton, tmp_path: Path) -> None:
    """A pipeline file with counting lines and a zone on the synthetic video: the crossings `detect --track` counts
    equal those of the generator's own trajectories, line by line; the zone's occupancy per frame too, once tracked."""
    from tritonctl.vision.synthetic import video_frames, write_video

    n, w, h, seed = 300, 640, 360, 7
    video = tmp_path / "v.mp4"
    write_video(video, n_frames=n, width=w, height=h, seed=seed)
    xs = range(80, w, 80)
    lines = "".join(f"      - {{name: x{x}, points: [[{x}, {h}], [{x}, 0]]}}\n" for x in xs)
    config = tmp_path / "p.yaml"
    config.write_text(f"model: shapes32\nurls: ['{demo_triton.url}']\nsources:\n  - name: v\n    uri: '{video}'\n"
                      f"    zones:\n      - {{name: left, polygon: [[0, 0], [{w // 2}, 0], [{w // 2}, {h}], [0, {h}]]}}\n"
                      f"    lines:\n{lines}")
    result = run_cli("detect", "--config", str(config), "--track", "bytetrack", "--json", str(tmp_path / "o.jsonl"),
                     "--summary-json", str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    truth = [boxes for _, boxes in video_frames(n, w, h, seed)]
    foot_x = np.array([[(b.x1 + b.x2) / 2 for b in boxes] for boxes in truth])  # bottom-centre anchors
    geometry = json.loads((tmp_path / "s.json").read_text())["sources"][0]["geometry"]
    for x in xs:
        sides = np.sign(foot_x - x)
        expected_in = sum(int(np.sum((s[s != 0][:-1] < 0) & (s[s != 0][1:] > 0))) for s in sides.T)
        expected_out = sum(int(np.sum((s[s != 0][:-1] > 0) & (s[s != 0][1:] < 0))) for s in sides.T)
        got = geometry["lines"][f"x{x}"]
        assert (sum(got["in"].values()), sum(got["out"].values())) == (expected_in, expected_out), (x, got)
    lines_out = _jsonl(tmp_path / "o.jsonl")
    inside = [sum(line["zones"]["left"]["count"].values()) for line in lines_out]
    expected = [int(np.sum(fx <= w // 2)) for fx in foot_x]
    bad = [(i, a, b) for i, (a, b) in enumerate(zip(inside, expected, strict=True)) if a != b]
    # A tracked run shows an object once its track is confirmed, and not while the tracker holds it lost: it may
    # count fewer than are there (here: the first 23 frames, and a few frames where a track was lost; 8-10% of
    # frames over runs), never more, and never a frame where a duplicate box would count an object twice.
    assert all(a < b for _, a, b in bad) and len(bad) <= 0.15 * n, bad
