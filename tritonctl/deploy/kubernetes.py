"""`tritonctl deploy`: size a Triton fleet from a benchmark's measurements (`plan`) and write the Kubernetes manifests
that run it (`k8s`), or a values file for NVIDIA's own chart (triton-inference-server/server `deploy/k8s-onprem`).

Every manifest is built as Python data and dumped with yaml.safe_dump: no string templates, so a name or a path can
never break the YAML or smuggle in a field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tritonctl.core.errors import BadInput
from tritonctl.core.files import write_text

# ---------------------------------------------------------------- plan

# The benchmark judges its latency budget on p95 (benchmark.pick_best): the plan uses the same percentile, so
# "fits the budget" means the same thing in both commands.
LATENCY_KEY = "p95_ms"


@dataclass(frozen=True)
class Sizing:
    """How many replicas a load needs, from one measured (batch, concurrency) row of the benchmark."""

    streams: int
    fps: float
    headroom: float  # asked: spare capacity on top of the demand (0.2 = 20 %)
    gpus_per_replica: int
    budget_ms: float | None
    batch: int
    concurrency: int
    capacity: float  # infer/s of one replica (one benchmarked server) at that row
    p95_ms: float
    demand: float  # frames/s the streams send
    replicas: int

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    @property
    def utilisation(self) -> float:
        """Share of the fleet's measured capacity the demand uses at this replica count."""
        return self.demand / (self.replicas * self.capacity)

    @property
    def spare(self) -> float:
        """Headroom actually left at this replica count (at least the one asked, rounding up adds more)."""
        return self.replicas * self.capacity / self.demand - 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency_percentile": "p95", "gpus": self.gpus,
                "utilisation": round(self.utilisation, 4), "spare": round(self.spare, 4)}


def load_summary(path: Path) -> tuple[list[dict[str, Any]], float | None]:
    """The measured rows of a benchmark's summary.json and the budget it was run with."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"--summary {path}: no such file (a benchmark's summary.json, from `tritonctl benchmark`)") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"--summary {path}: not a readable JSON file ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise BadInput(f"--summary {path}: no \"rows\": not a summary.json written by `tritonctl benchmark`")
    usable = [r for r in rows if isinstance(r, dict) and _positive(r.get("infer_per_s")) and _positive(r.get(LATENCY_KEY))]
    if not usable:
        raise BadInput(f"--summary {path}: no row with both infer_per_s and {LATENCY_KEY} measured")
    budget = data.get("latency_budget_ms")
    return usable, float(budget) if _positive(budget) else None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def size(rows: list[dict[str, Any]], *, streams: int, fps: float, budget_ms: float | None, headroom: float,
         gpus_per_replica: int) -> Sizing:
    """Replicas = ceil(streams x fps x (1 + headroom) / the best infer/s whose p95 fits the budget)."""
    _check_load(streams, fps, headroom, gpus_per_replica, budget_ms)
    fitting = [r for r in rows if budget_ms is None or r[LATENCY_KEY] <= budget_ms]
    if not fitting:
        fastest = min(rows, key=lambda r: r[LATENCY_KEY])
        raise BadInput(f"no measured setting fits the {budget_ms:g} ms p95 budget: the lowest p95 measured is "
                       f"{fastest[LATENCY_KEY]:.2f} ms (batch {fastest['batch']}, concurrency {fastest['concurrency']}); "
                       f"raise --latency-budget-ms or benchmark smaller batches")
    # Ties on throughput go to the lower latency, as benchmark.pick_best does.
    best = max(fitting, key=lambda r: (r["infer_per_s"], -r[LATENCY_KEY]))
    demand = streams * fps
    # perf_analyzer's infer/s counts images (batch x requests/s), the same unit as frames/s.
    replicas = max(1, math.ceil(round(demand * (1 + headroom) / best["infer_per_s"], 9)))  # round: 2.0000000001 is 2
    return Sizing(streams, fps, headroom, gpus_per_replica, budget_ms, int(best["batch"]), int(best["concurrency"]),
                  float(best["infer_per_s"]), float(best[LATENCY_KEY]), demand, replicas)


def _check_load(streams: int, fps: float, headroom: float, gpus_per_replica: int, budget_ms: float | None) -> None:
    if streams < 1:
        raise BadInput(f"--streams {streams}: give the number of camera streams (1 or more)")
    if fps <= 0:
        raise BadInput(f"--fps {fps:g}: give the frames per second of each stream (above 0)")
    if headroom < 0:
        raise BadInput(f"--headroom {headroom:g}: give the spare share on top of the demand (0 or more, e.g. 0.2)")
    if gpus_per_replica < 1:
        raise BadInput(f"--gpus-per-replica {gpus_per_replica}: a replica needs at least 1 GPU")
    if budget_ms is not None and budget_ms <= 0:
        raise BadInput("--latency-budget-ms must be positive")


# ---------------------------------------------------------------- k8s settings

HTTP, GRPC, METRICS = 8000, 8001, 8002
TRITON_UID = 1000  # the NGC image's triton-server user; NVIDIA's chart runs as 1000 too
QUEUE_METRIC = "triton_queue_us_per_request"  # what the adapter rule exposes and the autoscaler reads
MODELS_DIR = "/models"
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035 label: what a Service name must be
NFS_RE = re.compile(r"^nfs:([^:/\s]+):(/\S*)$")


@dataclass(frozen=True)
class Repository:
    """Where the pods read the model repository: a bucket Triton reads itself, or a volume mounted read-only."""

    kind: str  # s3, gs, pvc, nfs
    arg: str  # the --model-repository value Triton gets
    volume: dict[str, Any] | None  # a Kubernetes volume source (pvc, nfs); None for buckets
    source: str  # as given


def parse_repository(text: str) -> Repository:
    if text.startswith(("s3://", "gs://")) and len(text) > 5:
        return Repository(text[:2], text, None, text)
    if text.startswith("pvc:") and NAME_RE.match(text[4:] or "-") and len(text) <= 4 + 253:
        return Repository("pvc", MODELS_DIR, {"persistentVolumeClaim": {"claimName": text[4:], "readOnly": True}}, text)
    if m := NFS_RE.match(text):
        return Repository("nfs", MODELS_DIR, {"nfs": {"server": m[1], "path": m[2], "readOnly": True}}, text)
    raise BadInput(f"--model-repository {text!r}: give s3://BUCKET/PATH, gs://BUCKET/PATH, pvc:CLAIM (a claim name in "
                   f"lowercase) or nfs:SERVER:/PATH")


@dataclass(frozen=True)
class K8sSettings:
    name: str
    image: str
    repository: Repository
    replicas: int
    gpus_per_replica: int
    namespace: str | None = None
    max_replicas: int | None = None  # None: twice the replicas
    cpu: str = "4"
    memory: str = "16Gi"
    model_control_mode: str = "none"
    exit_timeout_s: int = 30
    startup_timeout_s: int = 600
    target_queue_ms: float = 10.0
    credentials_secret: str | None = None

    @classmethod
    def create(cls, *, model_repository: str, **kw: Any) -> K8sSettings:
        s = cls(repository=parse_repository(model_repository), **kw)
        s._check()
        return s

    def _check(self) -> None:
        # 54: the headless Service appends "-headless" (9) and a Service name is at most 63 characters.
        if not NAME_RE.match(self.name) or len(self.name) > 54:
            raise BadInput(f"--name {self.name!r}: lowercase letters, digits and '-', starting with a letter, at most 54 "
                           "characters (it names the Deployment and Services)")
        if self.namespace is not None and (not NAME_RE.match(self.namespace) or len(self.namespace) > 63):
            raise BadInput(f"--namespace {self.namespace!r}: not a Kubernetes namespace name")
        if self.replicas < 1:
            raise BadInput(f"--replicas {self.replicas}: give 1 or more (`tritonctl deploy plan` says how many)")
        if self.gpus_per_replica < 1:
            raise BadInput(f"--gpus-per-replica {self.gpus_per_replica}: a Triton replica needs at least 1 GPU")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise BadInput(f"--max-replicas {self.max_replicas}: below --replicas {self.replicas}")
        if self.model_control_mode not in ("none", "poll", "explicit"):
            raise BadInput(f"--model-control-mode {self.model_control_mode!r}: choose none, poll or explicit")
        if self.exit_timeout_s < 0 or self.startup_timeout_s < 10 or self.target_queue_ms <= 0:
            raise BadInput("--exit-timeout-s must be 0 or more, --startup-timeout-s 10 or more, --target-queue-ms above 0")
        if not self.image.strip():
            raise BadInput("--image: give a Triton image, e.g. nvcr.io/nvidia/tritonserver:25.10-py3")

    @property
    def top_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else 2 * self.replicas


# ---------------------------------------------------------------- manifests


def _meta(s: K8sSettings, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**_selector(s), "app.kubernetes.io/managed-by": "tritonctl"}}
    if s.namespace:
        meta["namespace"] = s.namespace
    return meta


def _selector(s: K8sSettings) -> dict[str, str]:
    return {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": s.name}


def server_args(s: K8sSettings) -> list[str]:
    args = [f"--model-repository={s.repository.arg}", f"--model-control-mode={s.model_control_mode}",
            f"--exit-timeout-secs={s.exit_timeout_s}"]
    if s.model_control_mode == "explicit":
        args.append("--load-model=*")  # explicit mode loads nothing at start otherwise: the pod would be ready, empty
    return args


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 5}


def container(s: K8sSettings) -> dict[str, Any]:
    resources = {"cpu": s.cpu, "memory": s.memory, "nvidia.com/gpu": str(s.gpus_per_replica)}
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]
    if s.repository.volume is not None:
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    c: dict[str, Any] = {
        "name": "triton", "image": s.image, "imagePullPolicy": "IfNotPresent",
        "command": ["tritonserver"], "args": server_args(s),
        "ports": [{"name": "http", "containerPort": HTTP}, {"name": "grpc", "containerPort": GRPC},
                  {"name": "metrics", "containerPort": METRICS}],
        # The root filesystem is read-only: HOME points the cloud SDKs' caches at the writable /tmp.
        "env": [{"name": "HOME", "value": "/tmp"}],
        # GPUs are an extended resource: Kubernetes requires request == limit for them.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # Loading (and TensorRT warm-up) can take minutes: until the startup probe succeeds, liveness is not checked,
        # so a slow load is not restarted in a loop (the pitfall NVIDIA's chart README warns about).
        "startupProbe": _probe("/v2/health/ready", 10, math.ceil(s.startup_timeout_s / 10)),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }
    if s.credentials_secret:
        c["envFrom"] = [{"secretRef": {"name": s.credentials_secret}}]  # AWS_*/GOOGLE_* keys for s3:// and gs://
    return c


def deployment(s: K8sSettings) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        # Triton needs a writable /tmp (a bucket repository is downloaded there); the root stays read-only.
        {"name": "tmp", "emptyDir": {}},
        # What `serve --runtime docker` gives with --shm-size=1g: the container runtime's 64 MiB default is too small.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    ]
    if s.repository.volume is not None:
        volumes.append({"name": "models", **s.repository.volume})
    pod = {
        "automountServiceAccountToken": False,  # Triton never talks to the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": s.exit_timeout_s + 15,  # Triton drains for --exit-timeout-secs first
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRITON_UID, "runAsGroup": TRITON_UID,
                            "fsGroup": TRITON_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        # GPU nodes are commonly tainted so only GPU pods land there (the GPU operator's convention).
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container(s)],
        "volumes": volumes,
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(s, s.name), "spec": {
        "replicas": s.replicas, "selector": {"matchLabels": _selector(s)},
        # A new pod is ready before an old one goes: capacity never drops during a rollout (needs one spare GPU slot).
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": _selector(s)}, "spec": pod}}}


def _service_ports() -> list[dict[str, Any]]:
    return [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
            for name, port in (("http", HTTP), ("grpc", GRPC), ("metrics", METRICS))]


def service(s: K8sSettings) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(s, s.name),
            "spec": {"type": "ClusterIP", "selector": _selector(s), "ports": _service_ports()}}


def headless_service(s: K8sSettings) -> dict[str, Any]:
    """One DNS name resolving to every ready pod: `--discover NAME:PORT` balances over them on the client, since a
    kept-alive gRPC/HTTP connection through the ClusterIP pins each client to one pod."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(s, f"{s.name}-headless"),
            "spec": {"clusterIP": "None", "selector": _selector(s), "ports": _service_ports(),
                     "publishNotReadyAddresses": False}}


def adapter_rule(s: K8sSettings) -> dict[str, Any]:
    """A prometheus-adapter rule: average queue time per request over the last minute, per pod. Both series are
    counters; their rates divide into microseconds queued per request. clamp_min keeps an idle pod at 0, not NaN."""
    scope = f'namespace="{s.namespace}",' if s.namespace else ""
    window = "[1m]"
    per = "by (<<.GroupBy>>)"
    return {
        "seriesQuery": f'nv_inference_queue_duration_us{{{scope}pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
        "metricsQuery": (f"sum(rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>}}{window})) {per} / "
                         f"clamp_min(sum(rate(nv_inference_request_success{{<<.LabelMatchers>>}}{window})) {per}, 1e-6)"),
    }


def adapter_config(s: K8sSettings) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(s, f"{s.name}-prometheus-adapter"),
            "data": {"config.yaml": yaml_text({"rules": [adapter_rule(s)]})}}


def _hpa_metric(s: K8sSettings) -> dict[str, Any]:
    return {"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC},
                                     "target": {"type": "AverageValue", "averageValue": str(round(s.target_queue_ms * 1000))}}}


def hpa(s: K8sSettings) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(s, s.name), "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
        "minReplicas": s.replicas, "maxReplicas": s.top_replicas, "metrics": [_hpa_metric(s)],
        # A pod taken away drops its clients' connections: scale down slowly, one pod at a time.
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300,
                                   "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]}}}}


def pod_monitor(s: K8sSettings) -> dict[str, Any]:
    """prometheus-operator's PodMonitor (a CRD, not in Kubernetes' own schemas): scrapes each pod's metrics port, so
    the adapter's series carry the pod label the autoscaler asks by."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": _meta(s, s.name), "spec": {
        "selector": {"matchLabels": _selector(s)},
        "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}}


def manifests(s: K8sSettings) -> dict[str, dict[str, Any]]:
    """File name -> object; one object per file, so each can be applied, diffed or dropped alone."""
    return {"deployment.yaml": deployment(s), "service.yaml": service(s), "service-headless.yaml": headless_service(s),
            "hpa.yaml": hpa(s), "prometheus-adapter-rule.yaml": adapter_config(s), "podmonitor.yaml": pod_monitor(s)}


def helm_values(s: K8sSettings) -> dict[str, Any]:
    """Values for NVIDIA's chart (triton-inference-server/server deploy/k8s-onprem, main branch): only the keys it
    reads. Its Deployment always mounts the repository from NFS at /models, so only nfs: fits it."""
    if s.repository.kind != "nfs":
        raise BadInput(f"--helm-values: NVIDIA's chart mounts the model repository from NFS only "
                       f"(image.modelRepositoryServer/Path); --model-repository {s.repository.source} needs the plain "
                       f"manifests (drop --helm-values) or nfs:SERVER:/PATH")
    nfs = s.repository.volume["nfs"] if s.repository.volume else {}
    return {
        # loadBalancing installs Traefik; clients balance themselves over the chart's headless Service instead.
        "tags": {"autoscaling": True, "loadBalancing": False},
        "image": {"imageName": s.image, "pullPolicy": "IfNotPresent", "modelRepositoryServer": nfs["server"],
                  "modelRepositoryPath": nfs["path"], "numGpus": s.gpus_per_replica},
        "serverArgs": server_args(s),
        "autoscaling": {"minReplicas": s.replicas, "maxReplicas": s.top_replicas, "metrics": [_hpa_metric(s)]},
        "prometheus-adapter": {"rules": {"custom": [adapter_rule(s)]}},
    }


def yaml_text(data: dict[str, Any]) -> str:
    import yaml

    # width: PromQL stays on one line instead of being folded at 80 columns.
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=4096))


# ---------------------------------------------------------------- writing

# The names we wrote (JSON), so a rerun knows which files are ours. No .json/.yaml extension: `kubectl apply -f DIR`
# reads every such file in the folder as a manifest.
MARKER = ".tritonctl-deploy"


def render(s: K8sSettings, helm: bool) -> dict[str, str]:
    if helm:
        return {"values.yaml": yaml_text(helm_values(s))}
    return {name: yaml_text(obj) for name, obj in manifests(s).items()}


def write_out(out: Path, files: dict[str, str], force: bool) -> list[Path]:
    """Each file under a temporary name, then renamed: a reader never sees half a manifest. Files of an earlier run that
    this one does not write are removed (switching to --helm-values leaves no stale Deployment to apply)."""
    ours = _ours(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: is a file, not a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name != MARKER and p.name not in ours) if out.is_dir() else []
    if foreign and not force:
        raise BadInput(f"--out {out} holds files tritonctl did not write ({', '.join(foreign[:3])}"
                       f"{', …' if len(foreign) > 3 else ''}): choose an empty folder, or --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create --out {out} ({exc.strerror})") from exc
    written = [_atomic(out / name, text) for name, text in files.items()]
    for stale in ours - files.keys():
        (out / stale).unlink(missing_ok=True)
    _atomic(out / MARKER, json.dumps(sorted(files), indent=2) + "\n")
    return written


def _ours(out: Path) -> set[str]:
    try:
        names = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return set()
    # Only plain names: a doctored marker must not make us delete outside the folder.
    return {n for n in names if isinstance(n, str) and n == Path(n).name} if isinstance(names, list) else set()


def _atomic(path: Path, text: str) -> Path:
    return write_text(path, text, streams=False)
