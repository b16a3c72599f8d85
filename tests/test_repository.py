"""config.pbtxt: every config the local Triton can run is loaded into the real server and compared with what was asked;
GPU platforms (no GPU here) are checked field by field after parsing the text back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_ports, run_cli
from onnx_models import tiny_detector

from tritonctl.core.errors import BadInput
from tritonctl.model.repository import ConfigSettings, parse_config, write_model

VARIANTS = {
    "fp32_default": {},
    "fp16_io": {"fp16": True},
    "no_batching": {"max_batch": 0, "preferred_batch": ()},
    "two_instances": {"instances": 2, "threads": 1, "warmup": False, "pinned_memory": False},
    "pinned": {"pinned_memory": True, "queue_delay_us": 100, "preferred_batch": (2, 4), "max_batch": 4},
}


@pytest.fixture(scope="module")
def variant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, ConfigSettings]]]:
    from tritonctl.serving.local import start_local
    from tritonctl.serving.settings import ServeSettings

    base = tmp_path_factory.mktemp("variants")
    repo = base / "repo"
    asked = {}
    for name, kw in VARIANTS.items():
        fp16 = kw.pop("fp16", False) if "fp16" in kw else False
        onnx = tiny_detector(base / f"{name}.onnx", fp16=bool(fp16))
        asked[name] = ConfigSettings.create(name=name, model_file=onnx, repo=repo, **kw)
        write_model(asked[name])
        kw["fp16"] = fp16  # leave VARIANTS as it was
    http, grpc, metrics = free_ports(3)
    server = start_local(ServeSettings.create(runtime="local", repo=repo, http_port=http, grpc_port=grpc, metrics_port=metrics))
    yield server.settings.url, asked
    server.stop()


@pytest.mark.server
@pytest.mark.parametrize("name", list(VARIANTS))
def test_server_loads_what_was_asked(variant_server: tuple[str, dict[str, ConfigSettings]], name: str) -> None:
    import tritonclient.http as http

    url, asked = variant_server
    s = asked[name]
    client = http.InferenceServerClient(url)
    assert client.is_model_ready(name)
    cfg = client.get_model_config(name)
    assert cfg["backend"] == "python" and cfg["max_batch_size"] == s.max_batch
    dtype = "TYPE_FP16" if "fp16" in name else "TYPE_FP32"
    strip = 1 if s.max_batch else 0
    full_in = (-1, 3, 32, 32)[strip:]
    assert [(i["name"], i["data_type"], tuple(i["dims"])) for i in cfg["input"]] == [("images", dtype, full_in)]
    assert [(o["name"], o["data_type"]) for o in cfg["output"]] == [("output0", dtype)]
    assert cfg["instance_group"][0]["count"] == s.instances and cfg["instance_group"][0]["kind"] == "KIND_CPU"
    if s.max_batch:
        assert cfg["dynamic_batching"]["preferred_batch_size"] == list(s.preferred_batch)
        assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) == s.queue_delay_us
    else:
        assert "dynamic_batching" not in cfg
    assert bool(cfg.get("model_warmup")) == s.warmup
    assert cfg["optimization"]["input_pinned_memory"]["enable"] == (s.pinned_memory is not False)  # Triton: on by default
    assert cfg["parameters"]["intra_op_threads"]["string_value"] == str(s.threads)


def test_tensorrt_plan_config(tmp_path: Path) -> None:
    """No GPU here: the plan config is parsed back from its text and checked field by field."""
    import json

    from tritonctl.model.metadata import ModelMeta, TensorInfo

    plan = tmp_path / "engine" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"\0" * 64)
    ModelMeta(inputs=[TensorInfo("images", "FP16", (-1, 3, 640, 640))], outputs=[TensorInfo("output0", "FP16", (-1, 84, 8400))],
              names={0: "person", 1: "car"}, imgsz=(640, 640), precision="fp16").write(plan.parent)
    folder = write_model(ConfigSettings.create(name="yolov9", model_file=plan, repo=tmp_path / "repo", gpus=(0, 1),
                                               instances=2))
    cfg = parse_config((folder / "config.pbtxt").read_text())
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    from tritonclient.grpc import model_config_pb2 as mc

    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("images", mc.TYPE_FP16, [3, 640, 640])]
    assert list(cfg.output[0].dims) == [84, 8400] and cfg.output[0].label_filename == "labels.txt"
    group = cfg.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [0, 1] and group.count == 2
    assert (folder / "labels.txt").read_text() == "person\ncar\n"
    assert (folder / "1" / "model.plan").stat().st_size == 64
    assert json.loads(cfg.parameters["tritonctl"].string_value)["names"] == {"0": "person", "1": "car"}


def test_onnxruntime_gpu_config_with_trt_accelerator(tmp_path: Path) -> None:
    onnx = tiny_detector(tmp_path / "m.onnx", fp16=True)
    folder = write_model(ConfigSettings.create(name="ort", model_file=onnx, repo=tmp_path / "repo", kind="gpu",
                                               trt_accelerator=True))
    cfg = parse_config((folder / "config.pbtxt").read_text())
    from tritonclient.grpc import model_config_pb2 as mc

    assert cfg.platform == "onnxruntime_onnx" and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    [acc] = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert not (folder / "1" / "model.py").exists()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"preferred_batch": (4, 32)}, "--preferred-batch"),
        ({"platform": "tensorrt_plan", "kind": "cpu"}, "GPU"),
        ({"name": "../escape"}, "model name"),
        ({"instances": 0}, "--instances"),
        ({"platform": "tflite"}, "unknown platform"),
    ],
)
def test_contradictions_refused(tmp_path: Path, kw: dict, words: str) -> None:
    onnx = tiny_detector(tmp_path / "m.onnx")
    args = {"name": "m", "model_file": onnx, "repo": tmp_path / "repo", **kw}
    with pytest.raises(BadInput, match=words):
        ConfigSettings.create(**args)
    assert not (tmp_path / "repo").exists()


def test_fp16_model_with_fp32_config_refused(tmp_path: Path) -> None:
    onnx = tiny_detector(tmp_path / "m.onnx", fp16=True)
    result = run_cli("config", "--name", "m", "--model", str(onnx), "--repo", str(tmp_path / "repo"), "--precision", "fp32")
    assert result.returncode == 2 and "FP16" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "repo").exists()  # nothing half-written


def test_static_batch_limits_max_batch(tmp_path: Path) -> None:
    onnx = tiny_detector(tmp_path / "m.onnx", batch=1)
    with pytest.raises(BadInput, match="fixed batch of 1"):
        write_model(ConfigSettings.create(name="m", model_file=onnx, repo=tmp_path / "repo"))
    write_model(ConfigSettings.create(name="m", model_file=onnx, repo=tmp_path / "repo", max_batch=1, preferred_batch=()))


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    onnx = tiny_detector(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    write_model(ConfigSettings.create(name="m", model_file=onnx, repo=repo, max_batch=8))
    write_model(ConfigSettings.create(name="m", model_file=onnx, repo=repo, max_batch=4, preferred_batch=(2,)))
    assert [p.name for p in repo.iterdir()] == ["m"]
    assert parse_config((repo / "m" / "config.pbtxt").read_text()).max_batch_size == 4


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_model_folders_have_the_usual_mode(tmp_path: Path, umask: int) -> None:
    """Folders as mkdir makes them (0o777 & ~umask), first written and rewritten: not a staging folder's private 0700,
    which would keep a server running as another user (a container, a service account) out."""
    import os

    onnx = tiny_detector(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    old = os.umask(umask)
    try:
        for max_batch in (8, 4):
            write_model(ConfigSettings.create(name="m", model_file=onnx, repo=repo, max_batch=max_batch, preferred_batch=()))
            for folder in (repo / "m", repo / "m" / "1"):
                assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, (folder, oct(folder.stat().st_mode))
    finally:
        os.umask(old)


def test_a_checkpoint_points_to_export(tmp_path: Path) -> None:
    from conftest import assert_one_line_error

    pt = tmp_path / "yolov8n.pt"
    pt.write_bytes(b"checkpoint")
    result = run_cli("config", "--name", "m", "--model", str(pt), "--repo", str(tmp_path / "repo"))
    assert_one_line_error(result, 2, "PyTorch checkpoint", "tritonctl export")
    assert not (tmp_path / "repo").exists()


@pytest.mark.server
def test_config_into_a_served_repository_says_how_to_load(tmp_path: Path, tiny_repo: Path) -> None:
    """Triton reads its repository at start: a model added while it runs stays unloaded, and `config` says so."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    h, g, m = (str(p) for p in free_ports(3))
    started = run_cli("serve", "--repo", str(repo), "--http-port", h, "--grpc-port", g, "--metrics-port", m, "--detach")
    assert started.returncode == 0, started.stderr
    try:
        result = run_cli("config", "--name", "second", "--model", str(tiny_detector(tmp_path / "m.onnx")), "--repo", str(repo))
        assert result.returncode == 0, result.stderr
        assert f"restart it to load 'second': tritonctl stop --url 127.0.0.1:{h}" in " ".join(result.stdout.split())
    finally:
        assert run_cli("stop", "--url", f"127.0.0.1:{h}").returncode == 0


def _plan(folder: Path, trt_batch: list[int] | None = None, **extra: object) -> Path:
    """A stand-in model.plan with the model.json build-engine writes beside it (no TensorRT here to build one)."""
    from tritonctl.model.metadata import ModelMeta, TensorInfo

    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "model.plan"
    plan.write_bytes(b"\0" * 64)
    meta = ModelMeta(inputs=[TensorInfo("images", "FP16", (-1, 3, 64, 64))],
                     outputs=[TensorInfo("output0", "FP16", (-1, 8, 256))], names={0: "a"}, imgsz=(64, 64), precision="fp16",
                     extra={**({"trt_batch": trt_batch} if trt_batch else {}), **extra})
    meta.write(folder)
    return plan


def test_warmup_batch_is_at_least_one_without_batching(tmp_path: Path) -> None:
    """Triton requires warmup batch_size >= 1 (model_config.proto), and skips a warmup of batch 0."""
    folder = write_model(ConfigSettings.create(name="m", model_file=tiny_detector(tmp_path / "m.onnx"), repo=tmp_path / "r",
                                               max_batch=0))
    [warm] = parse_config((folder / "config.pbtxt").read_text()).model_warmup
    assert warm.batch_size == 1 and list(warm.inputs["images"].dims) == [1, 3, 32, 32]


def test_config_keeps_the_files_it_did_not_write(tmp_path: Path) -> None:
    """`build-engine --repo r --name m` puts 1/model.plan there; `config` for the same name must not delete it."""
    repo = tmp_path / "repo"
    _plan(repo / "m" / "1", trt_batch=[1, 8, 16])
    (repo / "m" / "NOTES.md").write_text("mine")
    write_model(ConfigSettings.create(name="m", model_file=tiny_detector(tmp_path / "m.onnx"), repo=repo))
    assert (repo / "m" / "1" / "model.plan").stat().st_size == 64 and (repo / "m" / "NOTES.md").read_text() == "mine"
    assert (repo / "m" / "1" / "model.onnx").is_file()  # what it wrote, beside them
    assert parse_config((repo / "m" / "config.pbtxt").read_text()).backend == "python"
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging or .old folder left


def test_config_replaces_its_own_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    named = tiny_detector(tmp_path / "named.onnx")
    write_model(ConfigSettings.create(name="m", model_file=named, repo=repo, max_batch=8))
    (repo / "m" / "labels.txt").write_text("stale\n")
    plan = _plan(tmp_path / "engine", trt_batch=[1, 4, 8])
    write_model(ConfigSettings.create(name="m", model_file=plan, repo=repo))
    assert (repo / "m" / "labels.txt").read_text() == "a\n"
    assert (repo / "m" / "1" / "model.plan").stat().st_size == 64


def test_max_batch_follows_the_engine(tmp_path: Path) -> None:
    """tensorrt_backend refuses a max_batch_size above the engine's profile; build-engine records [min, opt, max]."""
    plan = _plan(tmp_path / "engine", trt_batch=[1, 4, 8])
    settings = ConfigSettings.create(name="m", model_file=plan, repo=tmp_path / "repo")
    assert settings.max_batch == 8 and settings.preferred_batch == (4, 8)
    with pytest.raises(BadInput, match=r"--max-batch 16 is above the 8 that model.plan was built for"):
        write_model(ConfigSettings.create(name="m", model_file=plan, repo=tmp_path / "repo", max_batch=16))
    assert not (tmp_path / "repo" / "m").exists()
    write_model(ConfigSettings.create(name="m", model_file=plan, repo=tmp_path / "repo", max_batch=4, preferred_batch=(2, 4)))


def test_an_engine_that_cannot_take_batch_one_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "engine", trt_batch=[4, 8, 16])
    result = run_cli("config", "--name", "m", "--model", str(plan), "--repo", str(tmp_path / "repo"))
    from conftest import assert_one_line_error

    assert_one_line_error(result, 2, "batches 4..16", "--min-batch 1")


def test_trt_accelerator_caches_engines_and_profiles_the_batch_range(tmp_path: Path) -> None:
    """onnxruntime_backend README: trt_engine_cache_enable/_path, trt_profile_{min,opt,max}_shapes as name:dims."""
    onnx = tiny_detector(tmp_path / "m.onnx")
    folder = write_model(ConfigSettings.create(name="ort", model_file=onnx, repo=tmp_path / "repo", platform="onnxruntime_onnx",
                                               trt_accelerator=True, max_batch=16, preferred_batch=(4, 8)))
    cfg = parse_config((folder / "config.pbtxt").read_text())
    from tritonclient.grpc import model_config_pb2 as mc

    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU  # onnxruntime_onnx: a GPU model by default
    [acc] = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(acc.parameters) == {
        "precision_mode": "FP32", "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/trt_cache/ort",
        "trt_profile_min_shapes": "images:1x3x32x32", "trt_profile_opt_shapes": "images:8x3x32x32",
        "trt_profile_max_shapes": "images:16x3x32x32"}
    with pytest.raises(BadInput, match="GPU instance"):
        ConfigSettings.create(name="ort", model_file=onnx, repo=tmp_path / "repo", platform="onnxruntime_onnx", kind="cpu",
                              trt_accelerator=True)
