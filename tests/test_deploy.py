"""`tritonctl deploy`: the sizing arithmetic on measured rows, and manifests checked against Kubernetes' own OpenAPI
schemas (kubernetes-validate, strict) for two supported minor versions. No cluster is involved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from tritonctl.core.errors import BadInput
from tritonctl.deploy import kubernetes as deploy

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# Two supported minor versions the package ships schemas for (1.25 .. 1.37 in kubernetes-validate 1.37.0).
K8S_VERSIONS = ("1.30", "1.33")
REPOSITORIES = ("s3://bucket/models", "gs://bucket/models", "pvc:models", "nfs:10.0.0.5:/srv/models")
FIXTURE_CSV = Path(__file__).parent / "fixtures" / "perf_gpu_metrics.csv"


def settings(**kw: Any) -> deploy.K8sSettings:
    base: dict[str, Any] = {"name": "yolo", "image": "nvcr.io/nvidia/tritonserver:25.10-py3",
                            "model_repository": "s3://bucket/models", "replicas": 2, "gpus_per_replica": 1}
    return deploy.K8sSettings.create(**{**base, **kw})


def written(s: deploy.K8sSettings, tmp_path: Path, helm: bool = False) -> dict[str, dict[str, Any]]:
    """What lands on disk, read back: the files are what users apply."""
    paths = deploy.write_out(tmp_path / "out", deploy.render(s, helm), force=False)
    return {p.name: yaml.safe_load(p.read_text()) for p in paths}


def walk(node: Any) -> Any:
    """Every (key, value) pair in a nested manifest."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("repository", REPOSITORIES)
def test_every_core_manifest_validates_strictly(repository: str, version: str, tmp_path: Path) -> None:
    objects = written(settings(model_repository=repository, namespace="vision", credentials_secret="s3-keys"), tmp_path)
    core = {n: o for n, o in objects.items() if o["kind"] != "PodMonitor"}
    assert set(core) == {"deployment.yaml", "service.yaml", "service-headless.yaml", "hpa.yaml",
                         "prometheus-adapter-rule.yaml"}
    for name, obj in core.items():
        assert kubernetes_validate.validate(obj, version, strict=True) == version, name


def test_strict_validation_does_catch_a_wrong_field() -> None:
    """The check has teeth: a misspelt field fails strict validation."""
    bad = deploy.deployment(settings())
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_pod_monitor_structure_by_hand(tmp_path: Path) -> None:
    """PodMonitor is prometheus-operator's CRD: Kubernetes' schemas do not have it, so its fields are checked here
    against the CRD's documented shape (spec.selector, spec.podMetricsEndpoints[].port/path/interval)."""
    objects = written(settings(namespace="vision"), tmp_path)
    pm, dep = objects["podmonitor.yaml"], objects["deployment.yaml"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    assert pm["metadata"]["namespace"] == "vision"
    assert set(pm["spec"]) == {"selector", "podMetricsEndpoints"}
    assert pm["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    [endpoint] = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s"} and ports["metrics"] == 8002


# ---------------------------------------------------------------- what the Deployment holds


def test_nothing_privileged_and_locked_down(tmp_path: Path) -> None:
    dep = written(settings(model_repository="pvc:models"), tmp_path)["deployment.yaml"]
    pod = dep["spec"]["template"]["spec"]
    pairs = list(walk(dep))
    assert all(v is False for k, v in pairs if k in ("privileged", "allowPrivilegeEscalation"))
    assert not {k for k, _ in pairs} & {"hostPath", "hostNetwork", "hostPID", "hostIPC", "add"}
    [c] = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Read-only root, but Triton's /tmp (and shared memory) writable
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]] and volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("gpus", [1, 4])
def test_gpu_request_equals_limit(gpus: int, tmp_path: Path) -> None:
    [c] = written(settings(gpus_per_replica=gpus), tmp_path)["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus) == c["resources"]["requests"]["nvidia.com/gpu"]
    assert {"cpu", "memory"} <= set(c["resources"]["limits"]) and {"cpu", "memory"} <= set(c["resources"]["requests"])


def test_probes_point_at_triton_health_and_startup_covers_loading(tmp_path: Path) -> None:
    [c] = written(settings(startup_timeout_s=900), tmp_path)["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 900
    assert [p["containerPort"] for p in c["ports"]] == [8000, 8001, 8002]


def test_server_args(tmp_path: Path) -> None:
    [c] = written(settings(model_control_mode="explicit", exit_timeout_s=45), tmp_path)["deployment.yaml"][
        "spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["tritonserver"]
    assert c["args"] == ["--model-repository=s3://bucket/models", "--model-control-mode=explicit",
                         "--exit-timeout-secs=45", "--load-model=*"]


# ---------------------------------------------------------------- one test per option


@pytest.mark.parametrize("repository", ["s3://bucket/models", "gs://bucket/models"])
def test_buckets_are_read_by_triton_directly(repository: str, tmp_path: Path) -> None:
    pod = written(settings(model_repository=repository, credentials_secret="keys"), tmp_path)["deployment.yaml"][
        "spec"]["template"]["spec"]
    assert f"--model-repository={repository}" in pod["containers"][0]["args"]
    assert "models" not in {v["name"] for v in pod["volumes"]}
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "keys"}}]


def test_pvc_is_mounted_read_only_at_models(tmp_path: Path) -> None:
    pod = written(settings(model_repository="pvc:yolo-repo"), tmp_path)["deployment.yaml"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "--model-repository=/models" in c["args"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "yolo-repo", "readOnly": True}} in pod["volumes"]


def test_nfs_is_mounted_read_only(tmp_path: Path) -> None:
    pod = written(settings(model_repository="nfs:10.0.0.5:/srv/models"), tmp_path)["deployment.yaml"]["spec"]["template"]["spec"]
    assert {"name": "models", "nfs": {"server": "10.0.0.5", "path": "/srv/models", "readOnly": True}} in pod["volumes"]


@pytest.mark.parametrize(("replicas", "top", "expected_top"), [(1, None, 2), (3, None, 6), (3, 10, 10)])
def test_replicas_and_autoscaler_bounds(replicas: int, top: int | None, expected_top: int, tmp_path: Path) -> None:
    objects = written(settings(replicas=replicas, max_replicas=top), tmp_path)
    hpa = objects["hpa.yaml"]["spec"]
    assert objects["deployment.yaml"]["spec"]["replicas"] == replicas == hpa["minReplicas"]
    assert hpa["maxReplicas"] == expected_top
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "yolo"}


def test_autoscaler_reads_the_adapters_queue_metric(tmp_path: Path) -> None:
    objects = written(settings(target_queue_ms=5, namespace="vision"), tmp_path)
    [metric] = objects["hpa.yaml"]["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "5000"}
    config = yaml.safe_load(objects["prometheus-adapter-rule.yaml"]["data"]["config.yaml"])
    [rule] = config["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert 'namespace="vision"' in rule["seriesQuery"]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"] and "nv_inference_request_success" in rule["metricsQuery"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_services(tmp_path: Path) -> None:
    objects = written(settings(), tmp_path)
    svc, headless = objects["service.yaml"], objects["service-headless.yaml"]
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "grpc", "metrics"]
    assert headless["spec"]["clusterIP"] == "None" and headless["metadata"]["name"] == "yolo-headless"
    pod_labels = objects["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == headless["spec"]["selector"] == pod_labels


@pytest.mark.parametrize("namespace", [None, "vision"])
def test_namespace_on_every_object(namespace: str | None, tmp_path: Path) -> None:
    for obj in written(settings(namespace=namespace), tmp_path).values():
        assert obj["metadata"].get("namespace") == namespace


def test_helm_values_match_nvidias_chart(tmp_path: Path) -> None:
    """Keys of triton-inference-server/server deploy/k8s-onprem/values.yaml (main, read 2026-11): nothing else."""
    values = written(settings(model_repository="nfs:10.0.0.5:/srv/models", replicas=3, gpus_per_replica=2), tmp_path,
                     helm=True)["values.yaml"]
    chart_keys = {"tags": {"autoscaling", "loadBalancing", "openshift"},
                  "image": {"imageName", "pullPolicy", "modelRepositoryServer", "modelRepositoryPath", "numGpus"},
                  "serverArgs": None, "traefik": {"ports"}, "autoscaling": {"minReplicas", "maxReplicas", "metrics"},
                  "prometheus-adapter": {"prometheus", "rules"}}
    assert set(values) <= set(chart_keys)
    for key, sub in values.items():
        assert chart_keys[key] is None or set(sub) <= chart_keys[key], key  # type: ignore[operator]
    assert values["image"]["numGpus"] == 2 and values["image"]["modelRepositoryServer"] == "10.0.0.5"
    assert values["autoscaling"]["minReplicas"] == 3 and "--model-repository=/models" in values["serverArgs"]
    assert values["prometheus-adapter"]["rules"]["custom"][0]["name"]["as"] == deploy.QUEUE_METRIC
    assert set(values["autoscaling"]["metrics"][0]) == {"type", "pods"}


def test_helm_values_refuse_what_the_chart_cannot_mount() -> None:
    with pytest.raises(BadInput, match="NFS only"):
        deploy.render(settings(model_repository="pvc:models"), helm=True)


# ---------------------------------------------------------------- writing


def test_files_are_ours_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    deploy.write_out(out, deploy.render(settings(), False), force=False)
    deploy.write_out(out, deploy.render(settings(replicas=5), False), force=False)  # a rerun over our own files
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # `kubectl apply -f out` reads every .yaml/.yml/.json file there: each must be a Kubernetes object.
    for path in out.iterdir():
        if path.suffix in (".yaml", ".yml", ".json"):
            obj = yaml.safe_load(path.read_text())
            assert {"apiVersion", "kind"} <= set(obj), path
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match=r"notes\.txt"):
        deploy.write_out(out, deploy.render(settings(), False), force=False)
    deploy.write_out(out, deploy.render(settings(model_repository="nfs:h:/m"), True), force=True)
    # Switching to --helm-values removes our earlier manifests, never the user's file.
    assert sorted(p.name for p in out.iterdir()) == [deploy.MARKER, "notes.txt", "values.yaml"]


# ---------------------------------------------------------------- plan


def rows(*specs: tuple[int, int, float, float]) -> list[dict[str, Any]]:
    return [{"batch": b, "concurrency": c, "infer_per_s": ips, "p95_ms": p95} for b, c, ips, p95 in specs]


MEASURED = rows((1, 1, 100.0, 10.0), (4, 2, 400.0, 40.0), (8, 4, 900.0, 120.0))


@pytest.mark.parametrize(("streams", "fps", "budget", "headroom", "gpus", "replicas", "capacity"), [
    (64, 30, 100.0, 0.2, 1, 6, 400.0),  # 2304 / 400 = 5.76
    (64, 30, None, 0.2, 1, 3, 900.0),  # 2304 / 900 = 2.56
    (64, 30, 100.0, 0.2, 2, 6, 400.0),
    (10, 40, 100.0, 0.0, 1, 1, 400.0),  # exactly one replica's capacity: 1, not 2
    (3, 10, 10.0, 0.1, 1, 1, 100.0),  # 33.000000000000004 / 33 ... no float overshoot to 2
    (1, 1, 10.0, 0.0, 1, 1, 100.0),  # a tiny load still needs one replica
])
def test_plan_arithmetic(streams: int, fps: float, budget: float | None, headroom: float, gpus: int, replicas: int,
                         capacity: float) -> None:
    plan = deploy.size(MEASURED, streams=streams, fps=fps, budget_ms=budget, headroom=headroom, gpus_per_replica=gpus)
    assert (plan.replicas, plan.capacity, plan.gpus) == (replicas, capacity, replicas * gpus)
    assert plan.utilisation == pytest.approx(streams * fps / (replicas * capacity))
    assert plan.spare >= headroom - 1e-9


def test_plan_budget_too_tight_names_the_best_latency() -> None:
    with pytest.raises(BadInput, match=r"lowest p95 measured is 10\.00 ms \(batch 1, concurrency 1\)"):
        deploy.size(MEASURED, streams=8, fps=30, budget_ms=5, headroom=0.2, gpus_per_replica=1)


def test_plan_ties_go_to_the_lower_latency() -> None:
    plan = deploy.size(rows((4, 1, 400.0, 30.0), (4, 2, 400.0, 20.0)), streams=1, fps=1, budget_ms=None, headroom=0,
                       gpus_per_replica=1)
    assert (plan.concurrency, plan.p95_ms) == (2, 20.0)


@pytest.fixture
def real_summary(tmp_path: Path) -> Path:
    """A summary.json from the benchmark's own writer over perf_analyzer's own CSV format (two-GPU fixture rows:
    batch 8, concurrency 1: 412.785 infer/s p95 20.104 ms; concurrency 2: 781.402 infer/s p95 21.497 ms)."""
    from tritonctl.measure.benchmark import BenchmarkResult, BenchmarkSettings, parse_rows, write_summary

    measured = parse_rows(FIXTURE_CSV, 8)
    s = BenchmarkSettings.create(model="m", batch_sizes="8", concurrency="1:2", out_dir=tmp_path, latency_budget_ms=21.0)
    write_summary(BenchmarkResult(tmp_path, measured, [], measured[0], measured[0], 16), s)
    return tmp_path / "summary.json"


def test_plan_from_a_benchmark_summary_uses_its_budget(real_summary: Path) -> None:
    measured, budget = deploy.load_summary(real_summary)
    assert budget == 21.0 and len(measured) == 2
    plan = deploy.size(measured, streams=64, fps=30, budget_ms=budget, headroom=0.2, gpus_per_replica=1)
    assert (plan.replicas, plan.capacity) == (6, 412.785)  # 2304 / 412.785 = 5.58
    wider = deploy.size(measured, streams=64, fps=30, budget_ms=25, headroom=0.2, gpus_per_replica=1)
    assert (wider.replicas, wider.concurrency) == (3, 2)  # 2304 / 781.402 = 2.95


def test_plan_cli_table_and_json(real_summary: Path) -> None:
    result = run_cli("deploy", "plan", "--summary", str(real_summary), "--streams", "64", "--fps", "30", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["replicas"] == 6 and plan["gpus"] == 6 and plan["latency_percentile"] == "p95" and plan["budget_ms"] == 21.0
    assert plan["demand"] == 1920 and plan["utilisation"] == pytest.approx(1920 / (6 * 412.785), abs=1e-4)
    table = run_cli("deploy", "plan", "--summary", str(real_summary), "--streams", "64", "--fps", "30",
                    "--latency-budget-ms", "25", "--gpus-per-replica", "2")
    assert table.returncode == 0, table.stderr
    assert "781.4 infer/s" in table.stdout and "batch 8, concurrency 2" in table.stdout and "--replicas 3" in table.stdout


# ---------------------------------------------------------------- one-line errors


def test_plan_cli_budget_too_tight(real_summary: Path) -> None:
    result = run_cli("deploy", "plan", "--summary", str(real_summary), "--streams", "4", "--fps", "30",
                     "--latency-budget-ms", "5")
    assert_one_line_error(result, 2, "5 ms p95 budget", "20.10 ms")


def test_plan_cli_not_a_summary(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[]")
    assert_one_line_error(run_cli("deploy", "plan", "--summary", str(tmp_path / "x.json"), "--streams", "1", "--fps", "1"),
                          2, "rows")


@pytest.mark.parametrize(("args", "words"), [
    (["--model-repository", "ftp://host/models"], ("--model-repository", "ftp://host/models")),
    (["--replicas", "0"], ("--replicas 0",)),
    (["--gpus-per-replica", "0"], ("--gpus-per-replica 0",)),
    (["--name", "Yolo_v8"], ("--name",)),
])
def test_k8s_cli_bad_input_is_one_line(args: list[str], words: tuple[str, ...], tmp_path: Path) -> None:
    base = {"--name": "yolo", "--model-repository": "s3://b/m", "--replicas": "2", "--out": str(tmp_path / "d")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = run_cli("deploy", "k8s", *[x for kv in base.items() for x in kv])
    assert_one_line_error(result, 2, *words)
    assert not (tmp_path / "d").exists()


def test_k8s_cli_writes_and_refuses_foreign_out(tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = ["deploy", "k8s", "--name", "yolo", "--model-repository", "gs://b/m", "--replicas", "2", "--out", str(out)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    from tritonctl.core.containers import DEFAULT_IMAGE

    [c] = yaml.safe_load((out / "deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"]
    assert c["image"] == DEFAULT_IMAGE  # the NGC image `serve --runtime docker` pins
    (out / "kustomization.yaml").write_text("resources: []\n")
    assert_one_line_error(run_cli(*args), 2, "did not write", "kustomization.yaml", "--force")
    assert run_cli(*args, "--force").returncode == 0
