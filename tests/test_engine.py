"""build-engine: the exact trtexec command lines, the container it would run in, and the parsers on real-format output.

No GPU, TensorRT or Docker engine here: the commands and container spec are checked as data; the parsers run on
fixtures written in the format trtexec prints (tests/fixtures).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from tritonctl.core.errors import BadInput
from tritonctl.model.engine import (
    EngineSettings,
    build_command,
    engine_container_spec,
    timing_command,
)
from tritonctl.model.trtexec import parse_summary, parse_times

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def yolo_like_onnx(tmp_path: Path) -> Path:
    from onnx_models import tiny_detector

    return tiny_detector(tmp_path / "model_fp16.onnx", imgsz=64, fp16=True)


def test_build_command_equals_the_seeds(yolo_like_onnx: Path, tmp_path: Path) -> None:
    s = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, imgsz=(640, 640))
    cmd = build_command(s, "/usr/src/tensorrt/bin/trtexec", "MODEL.onnx", "CONVERTED.engine")
    assert cmd == [
        "/usr/src/tensorrt/bin/trtexec", "--onnx=MODEL.onnx", "--saveEngine=CONVERTED.engine",
        "--optShapes=images:8x3x640x640", "--minShapes=images:1x3x640x640", "--maxShapes=images:16x3x640x640",
        "--shapes=images:8x3x640x640", "--fp16",
    ]
    fp32 = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, precision="fp32", min_batch=2, opt_batch=4,
                                 max_batch=8, workspace_mb=2048)
    cmd32 = build_command(fp32, "trtexec", "m.onnx", "m.plan")
    assert "--fp16" not in cmd32 and "--minShapes=images:2x3x64x64" in cmd32  # image size read from the model
    assert "--memPoolSize=workspace:2048M" in cmd32


def test_timing_command_equals_the_seeds() -> None:
    assert timing_command("/usr/src/tensorrt/bin/trtexec", "CONVERTED.engine", "images:8x3x640x640",
                          "inference_times.json") == [
        "/usr/src/tensorrt/bin/trtexec", "--loadEngine=CONVERTED.engine", "--shapes=images:8x3x640x640",
        "--exportTimes=inference_times.json"]


def test_container_spec(yolo_like_onnx: Path, tmp_path: Path) -> None:
    s = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path / "out", gpus="0")
    spec = engine_container_spec(s, ["trtexec"])
    assert spec["privileged"] is False and spec["network_disabled"] is True
    assert spec["volumes"][str(yolo_like_onnx.parent.resolve())]["mode"] == "ro"
    assert spec["volumes"][str((tmp_path / "out").resolve())]["mode"] == "rw"
    assert spec["device_requests"][0]["DeviceIDs"] == ["0"]
    assert spec["image"].startswith("nvcr.io/nvidia/tritonserver:")


@pytest.mark.parametrize(
    ("kw", "words"),
    [({"min_batch": 4, "opt_batch": 2}, "min"), ({"precision": "int4"}, "int4"), ({"runtime": "k8s"}, "k8s"),
     ({"repo": Path("r")}, "--name")],
)
def test_bad_settings(yolo_like_onnx: Path, tmp_path: Path, kw: dict, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, **kw)


def test_parse_summary_reads_trtexec_log() -> None:
    summary = parse_summary((FIXTURES / "trtexec_build.log").read_text().splitlines())
    assert summary.throughput_qps == pytest.approx(302.447)
    assert summary.stats["latency"].mean == pytest.approx(3.57941)
    assert summary.stats["latency"].percentiles == {"p90": 3.62549, "p95": 3.66211, "p99": 4.07593}
    assert summary.stats["gpu_compute"].median == pytest.approx(3.29102)
    assert summary.stats["h2d"].max == pytest.approx(0.0876465)
    assert set(summary.stats) == {"latency", "enqueue", "h2d", "gpu_compute", "d2h"}
    assert summary.host_walltime_s == pytest.approx(3.00879) and summary.passed is True


def test_parse_times_reads_export_times() -> None:
    import json

    import numpy as np

    times = parse_times(FIXTURES / "inference_times.json")
    records = json.loads((FIXTURES / "inference_times.json").read_text())
    assert times["inferences"] == 200
    assert times["compute"]["mean"] == pytest.approx(np.mean([r["computeMs"] for r in records]))
    assert times["h2d"]["median"] == pytest.approx(np.median([r["h2dMs"] for r in records]))
    assert times["d2h"]["p99"] >= times["d2h"]["median"] >= times["d2h"]["min"]


def test_parse_times_rejects_other_json(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(BadInput):
        parse_times(bad)


@pytest.mark.parametrize("runtime", ["local", "docker"])
@pytest.mark.parametrize("with_fp32", [True, False])
def test_cli_without_any_builder_points_to_the_local_runtime(yolo_like_onnx: Path, tmp_path: Path, runtime: str,
                                                             with_fp32: bool) -> None:
    """No trtexec and no Docker engine (these machines, where the docker CLI may well be installed): one line that
    says what is missing as it is, and what works instead as the README does it (the FP32 export beside the FP16 one,
    served detached), not a circle between --runtime local and --runtime docker. Nothing is written."""
    if with_fp32:
        shutil.copy(yolo_like_onnx, yolo_like_onnx.with_name("model_fp32.onnx"))
    result = run_cli("build-engine", "--onnx", str(yolo_like_onnx), "--runtime", runtime, "--out-dir", str(tmp_path / "e"),
                     env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    served = yolo_like_onnx.with_name("model_fp32.onnx") if with_fp32 else yolo_like_onnx
    assert_one_line_error(result, 3, "no Docker engine answers and no trtexec is on PATH",
                          f"tritonctl config --name NAME --model {served} && tritonctl serve --detach")
    assert "--runtime" not in result.stderr
    assert not (tmp_path / "e").exists()


def test_cli_missing_onnx(tmp_path: Path) -> None:
    result = run_cli("build-engine", "--onnx", str(tmp_path / "none.onnx"), "--runtime", "local")
    assert result.returncode == 2 and "tritonctl export" in result.stderr


def test_run_local_streams_and_keeps_the_log(tmp_path: Path) -> None:
    """A local trtexec's output reaches the callback line by line and the log file whole (a script stands in)."""
    from tritonctl.model.engine import run_local

    fake = tmp_path / "trtexec"
    fake.write_text(f"#!/bin/sh\ncat {FIXTURES / 'trtexec_build.log'}\nexit 0\n")
    fake.chmod(0o755)
    seen: list[str] = []
    log = tmp_path / "build.log"
    assert run_local([str(fake)], log, seen.append) == 0
    assert log.read_text().splitlines() == seen == (FIXTURES / "trtexec_build.log").read_text().splitlines()
    assert parse_summary(seen).throughput_qps == pytest.approx(302.447)


# ---------------------------------------------------------------- where trtexec is, which TensorRT (issue 10)
# Formats are TensorRT's own (github.com/NVIDIA/TensorRT): the `&&&& RUNNING TensorRT.trtexec [TensorRT vN] [bB] # cmd`
# banner from samples/common/logging.h (defineTest, reportTestResult; N = NV_TENSORRT_VERSION, major*10000+minor*100+
# patch since 10, major*1000+... in 8.x), the `TensorRT version: X.Y.Z` line and `Unknown option: ` error from
# samples/trtexec/trtexec.cpp, the option dump ("Precision: Strongly Typed" in 11, "Duration: 3s (+ 200ms warm up)")
# from samples/common/sampleOptions.cpp, the summary from samples/common/sampleReporting.cpp.

FAKE_TRTEXEC = """#!/bin/sh
# Stands in for trtexec (no TensorRT on these machines): prints a real-format fixture for each kind of call.
case " $* " in *" --help "*) [ -n "{help}" ] && cat "{help}"; exit 0;; esac
case " $* " in *" --fp16 "*) if [ -n "{reject_fp16}" ]; then cat "{reject_fp16}"; exit 1; fi;; esac
for a in "$@"; do
  case "$a" in
    --saveEngine=*) printf 'plan' > "${{a#--saveEngine=}}"; log="{build_log}";;
    --exportTimes=*) cp "{times}" "${{a#--exportTimes=}}"; log="{time_log}";;
  esac
done
cat "$log"
"""


def fake_trtexec(folder: Path, help: str = "", build_log: str = "trtexec_build.log", reject_fp16: str = "",
                 time_log: str = "trtexec_time_warmup.log", times: str = "trtexec_times_warmup.json") -> Path:
    """A trtexec on PATH that answers with fixtures (these machines have no TensorRT)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trtexec"
    fixture = lambda name: str(FIXTURES / name) if name else ""  # noqa: E731
    path.write_text(FAKE_TRTEXEC.format(help=fixture(help), build_log=fixture(build_log), reject_fp16=fixture(reject_fp16),
                                        time_log=fixture(time_log), times=fixture(times)))
    path.chmod(0o755)
    return path


def _path_with(folder: Path) -> dict[str, str]:
    import os

    return {"PATH": f"{folder}:{os.environ['PATH']}", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


@pytest.fixture()
def fp32_onnx(tmp_path: Path) -> Path:
    from onnx_models import tiny_detector

    return tiny_detector(tmp_path / "model_fp32.onnx", imgsz=64)


def test_tensorrt_version_is_read_from_trtexecs_own_lines() -> None:
    from tritonctl.model.trtexec import tensorrt_version

    lines = lambda name: (FIXTURES / name).read_text().splitlines()  # noqa: E731
    assert tensorrt_version(lines("trtexec_build.log")) == "10.3.0"  # banner only: [TensorRT v100300]
    assert tensorrt_version(lines("trtexec_build_trt11.log")) == "11.1.0"  # `TensorRT version: 11.1.0`
    assert tensorrt_version(lines("trtexec_probe_trt10.txt")) == "10.13.3"  # [TensorRT v101303] [b9]
    assert tensorrt_version(lines("trtexec_time_warmup.log")[:1]) == "8.4.3"  # 8.x numbering: v8403
    assert tensorrt_version(["no banner here"]) is None


def test_tensorrt_11_builds_without_fp16(yolo_like_onnx: Path, fp32_onnx: Path, tmp_path: Path) -> None:
    """TensorRT 11 removed weakly typed networks and `--fp16` (sampleOptions.cpp parses it no more: `Unknown option:
    --fp16`): the FP16 ONNX carries its precision; an FP32 ONNX asked for FP16 is refused with what to do."""
    s = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, imgsz=(640, 640))
    seed = build_command(s, "trtexec", "m.onnx", "m.plan")
    assert build_command(s, "trtexec", "m.onnx", "m.plan", "10.13.3") == seed and seed[-1] == "--fp16"
    assert build_command(s, "trtexec", "m.onnx", "m.plan", "11.1.0") == seed[:-1]
    fp32 = EngineSettings.create(onnx=fp32_onnx, out_dir=tmp_path)
    with pytest.raises(BadInput, match=r"strongly typed.*model_fp16\.onnx.*--precision fp32"):
        build_command(fp32, "trtexec", "m.onnx", "m.plan", "11.0.0")
    assert "--fp16" not in build_command(EngineSettings.create(onnx=fp32_onnx, out_dir=tmp_path, precision="fp32"),
                                         "trtexec", "m.onnx", "m.plan", "11.0.0")
    with pytest.raises(BadInput, match=r"FP16.*model_fp32\.onnx"):
        build_command(EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path, precision="fp32"), "t", "m", "p", "11.1.0")


def test_parse_summary_reads_tensorrt_11_and_its_refusal() -> None:
    summary = parse_summary((FIXTURES / "trtexec_build_trt11.log").read_text().splitlines())
    assert summary.tensorrt == "11.1.0" and summary.passed is True and summary.warmup_ms == 200
    assert summary.throughput_qps == pytest.approx(546.582)
    assert summary.stats["gpu_compute"].percentiles == {"p90": 1.84082, "p95": 1.85156, "p99": 2.00098}
    assert summary.error is None
    refused = parse_summary((FIXTURES / "trtexec_fp16_rejected_trt11.log").read_text().splitlines())
    assert refused.error == "Unknown option: --fp16" and refused.tensorrt == "11.1.0" and refused.passed is None


def test_probe_finds_trtexec_where_it_runs(tmp_path: Path) -> None:
    """The probe is a shell line run in the image (or here): PATH first, then the folders NVIDIA images use; it
    prints what it found and that trtexec's banner. Run here with real sh, a trtexec on PATH, then none."""
    import os
    import subprocess

    from tritonctl.core.errors import ToolMissing
    from tritonctl.model.trtexec import PROBE_SCRIPT, parse_probe

    fake = fake_trtexec(tmp_path / "bin", help="trtexec_probe_trt11.txt")
    done = subprocess.run(["sh", "-c", PROBE_SCRIPT], capture_output=True, text=True,
                          env={"PATH": f"{fake.parent}:/usr/bin:/bin"})
    found = parse_probe(done.stdout.splitlines(), "img")
    assert done.returncode == 0 and found.path == str(fake) and found.version == "11.1.0"
    assert parse_probe((FIXTURES / "trtexec_probe_trt10.txt").read_text().splitlines(), "img").path == \
        "/usr/src/tensorrt/bin/trtexec"
    if not any(os.access(p, os.X_OK) for p in ("/usr/src/tensorrt/bin/trtexec",)):
        none = subprocess.run(["sh", "-c", PROBE_SCRIPT], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert none.returncode == 127
        with pytest.raises(ToolMissing, match="no trtexec in img"):
            parse_probe(none.stdout.splitlines(), "img")


def test_local_build_records_trtexec_and_tensorrt(yolo_like_onnx: Path, tmp_path: Path) -> None:
    """A TensorRT 11 trtexec (a fixture-driven stand-in that refuses --fp16 as the real one does): the build leaves
    --fp16 out, says which trtexec it used, and records TensorRT version and image beside the plan."""
    import json

    fake = fake_trtexec(tmp_path / "bin", help="trtexec_probe_trt11.txt", build_log="trtexec_build_trt11.log",
                        reject_fp16="trtexec_fp16_rejected_trt11.log")
    out, repo = tmp_path / "engine", tmp_path / "repo"
    result = run_cli("build-engine", "--onnx", str(yolo_like_onnx), "--runtime", "local", "--out-dir", str(out),
                     "--repo", str(repo), "--name", "yolo", env=_path_with(fake.parent))
    assert result.returncode == 0, result.stderr
    assert f"trtexec: {fake} on this host, TensorRT 11.1.0" in " ".join(result.stdout.split())
    record = json.loads((out / "engine.json").read_text())
    assert record["trtexec"] == str(fake) and record["tensorrt"] == "11.1.0" and record["image"] is None
    assert record["runtime"] == "local" and "--fp16" not in record["command"]
    for folder in (out, repo / "yolo"):
        extra = json.loads((folder / "model.json").read_text())["extra"]
        assert extra["tensorrt"] == "11.1.0" and extra["image"] is None
    assert (repo / "yolo" / "1" / "model.plan").read_text() == "plan"


def test_local_build_of_fp32_onnx_as_fp16_on_tensorrt_11_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    fake = fake_trtexec(tmp_path / "bin", help="trtexec_probe_trt11.txt", build_log="trtexec_build_trt11.log")
    result = run_cli("build-engine", "--onnx", str(fp32_onnx), "--runtime", "local", "--out-dir", str(tmp_path / "e"),
                     env=_path_with(fake.parent))
    assert_one_line_error(result, 2, "TensorRT 11.1.0", "model_fp16.onnx", "--precision fp32")
    assert not (tmp_path / "e").exists()


def test_trtexecs_error_line_is_the_failure_message(yolo_like_onnx: Path, tmp_path: Path) -> None:
    """A trtexec whose version could not be read gets the seed's --fp16; TensorRT 11 refuses it, and the one line
    says so (it said only "exit 1")."""
    fake = fake_trtexec(tmp_path / "bin", help="", reject_fp16="trtexec_fp16_rejected_trt11.log")
    result = run_cli("build-engine", "--onnx", str(yolo_like_onnx), "--runtime", "local", "--out-dir", str(tmp_path / "e"),
                     env=_path_with(fake.parent))
    assert_one_line_error(result, 5, "trtexec failed (exit 1): Unknown option: --fp16", "trtexec_build.log")
    assert not (tmp_path / "e" / "model.plan").exists()


class FakeDocker:
    """Stands in for the docker SDK client (no Docker engine runs on these machines, so none can be real here):
    `containers.create/run` record each spec and "run" it: the probe prints a fixture, trtexec writes what it would
    into the host folder mounted at its path and prints a fixture log."""

    def __init__(self, probe: str, log: str) -> None:
        self.specs: list[dict] = []
        self.probe, self.log = probe, log
        self.containers = self

    def ping(self) -> bool:
        return True

    def run(self, **spec: object) -> FakeContainer:
        return self.create(**spec)

    def create(self, **spec: object) -> FakeContainer:
        self.specs.append(spec)
        command = list(spec["command"])  # type: ignore[call-overload]
        if command[:2] == ["sh", "-c"]:
            return FakeContainer((FIXTURES / self.probe).read_text())
        hosts = {v["bind"]: Path(k) for k, v in spec["volumes"].items()}  # type: ignore[attr-defined]
        for arg in command:
            for flag in ("--saveEngine=", "--exportTimes="):
                if arg.startswith(flag):
                    folder, _, name = arg[len(flag):].rpartition("/")
                    data = (FIXTURES / "trtexec_times_warmup.json").read_text() if "Times" in flag else "plan"
                    (hosts[folder] / name).write_text(data)
        return FakeContainer((FIXTURES / self.log).read_text())


class FakeContainer:
    def __init__(self, output: str) -> None:
        self.output, self.status = output, "exited"

    def start(self) -> None:
        pass

    def logs(self, **_: object) -> list[bytes]:
        return [self.output.encode()]

    def reload(self) -> None:
        pass

    def wait(self) -> dict[str, int]:
        return {"StatusCode": 0}

    def remove(self, **_: object) -> None:
        pass


def test_docker_build_probes_the_same_image_and_records_it(yolo_like_onnx: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from tritonctl.core import containers
    from tritonctl.model import engine

    docker = FakeDocker("trtexec_probe_trt11.txt", "trtexec_build_trt11.log")
    monkeypatch.setattr(containers, "docker_client", lambda: docker)
    image = "nvcr.io/nvidia/tritonserver:26.06-py3"
    s = EngineSettings.create(onnx=yolo_like_onnx, out_dir=tmp_path / "out", image=image, gpus="0")
    result = engine.build(s, lambda _: None)
    probe, built = docker.specs
    assert probe["image"] == built["image"] == image and probe["device_requests"] == built["device_requests"]
    assert built["command"][0] == "/usr/bin/trtexec" and "--fp16" not in built["command"]  # the path found, TRT 11
    assert result.trtexec.describe() == f"/usr/bin/trtexec in {image}, TensorRT 11.1.0"
    record = json.loads((tmp_path / "out" / "engine.json").read_text())
    assert (record["trtexec"], record["tensorrt"], record["image"]) == ("/usr/bin/trtexec", "11.1.0", image)
    assert json.loads((tmp_path / "out" / "model.json").read_text())["extra"]["image"] == image


# ---------------------------------------------------------------- --time: where it was built; warm-up as trtexec


def _built_engine(folder: Path, onnx: Path, record: dict | None) -> Path:
    import json

    from tritonctl.model.metadata import read_onnx

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.plan").write_text("plan")
    meta = read_onnx(onnx)
    meta.imgsz = (640, 640)
    meta.extra = {"trt_batch": [1, 8, 16]}
    meta.write(folder)
    if record is not None:
        (folder / "engine.json").write_text(json.dumps(record))
    return folder / "model.plan"


def test_time_defaults_to_where_the_engine_was_built(yolo_like_onnx: Path, tmp_path: Path) -> None:
    from tritonctl.model.engine import TimingSettings

    image = "nvcr.io/nvidia/tritonserver:24.08-py3"
    plan = _built_engine(tmp_path / "e", yolo_like_onnx, {"tensorrt": "10.3.0", "image": image, "runtime": "docker"})
    t = TimingSettings.create(plan, tmp_path / "t", 16)
    assert (t.runtime, t.image, t.built_with, t.shape) == ("docker", image, "10.3.0", "images:16x3x640x640")
    assert TimingSettings.create(plan, tmp_path / "t", 8, runtime="local").runtime == "local"
    local = _built_engine(tmp_path / "l", yolo_like_onnx, {"tensorrt": "10.3.0", "image": None, "runtime": "local"})
    assert TimingSettings.create(local, tmp_path / "t", 8).runtime == "local"
    with pytest.raises(BadInput, match=r"batch 1\.\.16"):
        TimingSettings.create(plan, tmp_path / "t", 32)
    result = run_cli("build-engine", "--time", str(plan), "--out-dir", str(tmp_path / "t"),
                     env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert_one_line_error(result, 3, "Docker")  # recorded in an image: no longer timed with whatever trtexec is local


def test_time_in_the_recorded_image(yolo_like_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tritonctl.core import containers
    from tritonctl.model import engine

    image = "nvcr.io/nvidia/tritonserver:22.09-py3"
    plan = _built_engine(tmp_path / "e", yolo_like_onnx, {"tensorrt": "8.4.3", "image": image, "runtime": "docker"})
    probe = tmp_path / "probe.txt"
    probe.write_text("tritonctl-trtexec: /usr/src/tensorrt/bin/trtexec\n" + (FIXTURES / "trtexec_time_warmup.log").read_text())
    docker = FakeDocker(str(probe), "trtexec_time_warmup.log")
    monkeypatch.setattr(containers, "docker_client", lambda: docker)
    result = engine.time_engine(engine.TimingSettings.create(plan, tmp_path / "t", 16), lambda _: None)
    timed = docker.specs[1]
    assert timed["image"] == image
    assert timed["command"][:2] == ["/usr/src/tensorrt/bin/trtexec", "--loadEngine=/work/engine/model.plan"]
    assert timed["volumes"][str(plan.parent.resolve())] == {"bind": "/work/engine", "mode": "ro"}
    assert result.times["warmup_skipped"] == 11 and (tmp_path / "t" / "timing.json").is_file()


def test_time_refuses_another_tensorrt(yolo_like_onnx: Path, tmp_path: Path) -> None:
    plan = _built_engine(tmp_path / "e", yolo_like_onnx, {"tensorrt": "10.3.0", "image": None, "runtime": "local"})
    fake = fake_trtexec(tmp_path / "bin", help="trtexec_probe_trt11.txt")
    result = run_cli("build-engine", "--time", str(plan), "--out-dir", str(tmp_path / "t"), env=_path_with(fake.parent))
    assert_one_line_error(result, 5, "built with TensorRT 10.3.0", "TensorRT 11.1.0", "do not move across TensorRT versions")


def _log_stats(line: str) -> dict[str, float]:
    import re

    return {k: float(v) for k, v in re.findall(r"(min|max|mean|median|percentile\(99%\)) = ([0-9.]+) ms", line)}


def test_exported_times_are_summarised_as_trtexec_does() -> None:
    """TensorRT up to 8.4 wrote every trace to --exportTimes, warm-up included (sampleReporting.cpp release/8.4:
    exportJSONTrace loops over the whole trace); 8.5 on starts after the warm-ups (`trace.begin() + nbWarmups`).
    trtexec's summary skips the traces before the first whose compute starts at or after --warmUp (200 ms). The
    fixture is one 8.4 run: its times file (exportJSONTrace's exact layout) and its log, whose summary the parse
    must reproduce: the same counts, stats and throughput."""
    log = (FIXTURES / "trtexec_time_warmup.log").read_text().splitlines()
    said = {ln.split("] ", 2)[-1].split(":")[0]: ln for ln in log}
    times = parse_times(FIXTURES / "trtexec_times_warmup.json", warmup_ms=parse_summary(log).warmup_ms)
    assert "Warmup completed 11 queries over 200 ms" in " ".join(log) and times["warmup_skipped"] == 11
    assert "Timing trace has 219 queries" in " ".join(log) and times["inferences"] == 219
    for ours, theirs in (("latency", "Latency"), ("h2d", "H2D Latency"), ("compute", "GPU Compute Time"), ("d2h", "D2H Latency")):
        expected = _log_stats(said[theirs])
        got = times[ours]
        for key, ours_key in (("min", "min"), ("max", "max"), ("mean", "mean"), ("median", "median"), ("percentile(99%)", "p99")):
            assert got[ours_key] == pytest.approx(expected[key], rel=2e-5), (ours, key)
    assert times["throughput_qps"] == pytest.approx(parse_summary(log).throughput_qps, rel=1e-4)


def test_times_without_warmup_rows_lose_nothing(tmp_path: Path) -> None:
    """A TensorRT 8.5+ file starts after the warm-up: nothing is skipped, the figures are the same."""
    import json

    records = json.loads((FIXTURES / "trtexec_times_warmup.json").read_text())[11:]
    path = tmp_path / "times.json"
    path.write_text(json.dumps(records))
    times = parse_times(path, warmup_ms=200)
    assert times["warmup_skipped"] == 0 and times["inferences"] == 219
    assert times["compute"] == parse_times(FIXTURES / "trtexec_times_warmup.json", warmup_ms=200)["compute"]


def test_percentiles_follow_trtexec() -> None:
    """findPercentile drops int((1 - p/100) * n) of the largest in float32: of 1..100, p99 is 100 (0.99f leaves
    1 - p/100 just under 0.01), p95 is 95 and p90 is 90."""
    from tritonctl.model.trtexec import _describe

    d = _describe([float(v) for v in range(100, 0, -1)])
    assert (d["p99"], d["p95"], d["p90"], d["median"], d["mean"]) == (100.0, 95.0, 90.0, 50.5, 50.5)


def test_time_on_this_host_reports_trtexecs_summary(yolo_like_onnx: Path, tmp_path: Path) -> None:
    import json

    plan = _built_engine(tmp_path / "e", yolo_like_onnx, {"tensorrt": "8.4.3", "image": None, "runtime": "local"})
    help_file = tmp_path / "help.txt"
    help_file.write_text((FIXTURES / "trtexec_time_warmup.log").read_text().splitlines()[0] + "\n")
    fake = fake_trtexec(tmp_path / "bin")
    fake.write_text(fake.read_text().replace('[ -n "" ] && cat ""', f'cat "{help_file}"'))
    result = run_cli("build-engine", "--time", str(plan), "--batch", "16", "--out-dir", str(tmp_path / "t"),
                     env=_path_with(fake.parent))
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert f"trtexec: {fake} on this host, TensorRT 8.4.3" in said
    assert "219 timed inferences, 11 warm-up records skipped" in said
    assert json.loads((tmp_path / "t" / "timing.json").read_text())["times"]["inferences"] == 219
