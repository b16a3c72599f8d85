"""The ordered stages (tritonctl/stream/stages.py): the dwell-time stage, added as one class, one registration line
and one run option, end to end through the real local Triton."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Triton, assert_one_line_error, run_cli

from tritonctl.stream.stages import DwellStage
from tritonctl.vision.detections import Detections
from tritonctl.vision.frames import Frame, Result


def _result(source: int, index: int, t: float, ids: list[int]) -> Result:
    n = len(ids)
    det = Detections(np.zeros((n, 4), np.float32), np.ones(n, np.float32), np.zeros(n, np.int64),
                     np.array(ids, np.int64))
    return Result(index, Frame(source, index, np.zeros((2, 2, 3), np.uint8), t, read_at=0.0, decode_s=0.0), det, {})


def test_dwell_counts_from_each_tracks_first_sight_per_source() -> None:
    stage = DwellStage()
    stage.source_added(0)
    stage.source_added(1)
    seen = []
    for i, (t, ids) in enumerate([(0.0, [1]), (0.5, [1, 2]), (2.0, [2, 1])]):
        r = _result(0, i, t, ids)
        stage.process(r)
        seen.append(r.detections.data["dwell_s"].tolist())
    assert seen == [[0.0], [0.5, 0.0], [1.5, 2.0]]
    other = _result(1, 0, 9.0, [1])  # the same id on another camera is another object
    stage.process(other)
    assert other.detections.data["dwell_s"].tolist() == [0.0]
    assert stage.figures().longest_s == {0: 2.0, 1: 0.0}
    assert json.dumps(other.detections.to_json({0: "x"})[0]["dwell_s"]) == "0.0"


@pytest.mark.slow
@pytest.mark.server
def test_detect_dwell_in_the_json_lines(demo_triton: Triton, demo_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.jsonl"
    result = run_cli("detect", str(demo_video), "-m", "shapes", "--url", demo_triton.url, "--track", "bytetrack",
                     "--dwell", "--json", str(out))
    assert result.returncode == 0, result.stderr
    first: dict[int, float] = {}
    rows = 0
    for line in map(json.loads, out.read_text().splitlines()):
        for d in line["detections"]:
            start = first.setdefault(d["track_id"], line["timestamp"])
            assert d["dwell_s"] == pytest.approx(line["timestamp"] - start, abs=2e-3)
            rows += 1
    assert rows > 0 and max(first.values()) >= 0


def test_dwell_without_track_is_one_line(demo_video: Path) -> None:
    assert_one_line_error(run_cli("detect", str(demo_video), "-m", "shapes", "--dwell"), 2, "--dwell", "--track")
