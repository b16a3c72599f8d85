"""`deploy plan`, `deploy k8s`: size a fleet and write its manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tritonctl.cli.app import app, command, out

deploy_app = typer.Typer(help="Size a Triton fleet from a benchmark and write its Kubernetes manifests.",
                         no_args_is_help=True)


app.add_typer(deploy_app, name="deploy")


@deploy_app.command("plan")
@command
def deploy_plan(
    summary: Path = typer.Option(..., help="a benchmark's summary.json (`tritonctl benchmark` writes it)"),
    streams: int = typer.Option(..., help="camera streams to serve"),
    fps: float = typer.Option(..., help="frames per second of each stream"),
    latency_budget_ms: float | None = typer.Option(None, help="p95 latency budget (default: the benchmark's own, else none)"),
    headroom: float = typer.Option(0.2, help="spare capacity on top of the demand (0.2 = 20 %)"),
    gpus_per_replica: int = typer.Option(1, help="GPUs each replica has (as the benchmarked server had)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON for scripts"),
) -> None:
    """Replicas (and GPUs) a load needs: streams x fps x (1 + headroom) over the best measured infer/s within the
    p95 budget. Arithmetic on the benchmark's measurements only."""
    from tritonctl.deploy import kubernetes as deploy

    rows, measured_budget = deploy.load_summary(summary)
    budget = latency_budget_ms if latency_budget_ms is not None else measured_budget
    plan = deploy.size(rows, streams=streams, fps=fps, budget_ms=budget, headroom=headroom,
                       gpus_per_replica=gpus_per_replica)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))
        return
    _show_plan(plan)


def _show_plan(plan: Any) -> None:
    from rich.table import Table

    budget = f"p95 ≤ {plan.budget_ms:g} ms" if plan.budget_ms is not None else "no latency budget"
    table = Table("demand", "capacity per replica", "replicas", "GPUs", "utilisation", "headroom",
                  title=f"deploy plan ({budget})")
    table.add_row(f"{plan.demand:,.0f} frames/s\n{plan.streams} x {plan.fps:g} fps",
                  f"{plan.capacity:,.1f} infer/s\nbatch {plan.batch}, concurrency {plan.concurrency}, p95 {plan.p95_ms:.2f} ms",
                  str(plan.replicas), str(plan.gpus), f"{plan.utilisation:.0%}",
                  f"{plan.spare:.0%} (asked {plan.headroom:.0%})")
    out.print(table)
    out.print(f"tritonctl deploy k8s --replicas {plan.replicas} --gpus-per-replica {plan.gpus_per_replica} …",
              markup=False, highlight=False)


@deploy_app.command("k8s")
@command
def deploy_k8s(
    name: str = typer.Option(..., help="names the Deployment, Services, autoscaler (lowercase, digits, '-')"),
    model_repository: str = typer.Option(..., help="s3://BUCKET/PATH, gs://BUCKET/PATH, pvc:CLAIM or nfs:SERVER:/PATH"),
    replicas: int = typer.Option(..., help="replicas (the autoscaler's minimum; see `tritonctl deploy plan`)"),
    gpus_per_replica: int = typer.Option(1, help="nvidia.com/gpu requested and limited per pod"),
    out_dir: Path = typer.Option(Path("deploy"), "--out", help="folder for the manifests"),
    image: str = typer.Option("", help="Triton image (default: the NGC image `serve --runtime docker` pins)"),
    namespace: str | None = typer.Option(None, help="namespace written into every object (default: kubectl's)"),
    max_replicas: int | None = typer.Option(None, help="the autoscaler's maximum (default: twice --replicas)"),
    target_queue_ms: float = typer.Option(10.0, help="autoscale above this average queue time per request"),
    cpu: str = typer.Option("4", help="CPU request and limit per pod"),
    memory: str = typer.Option("16Gi", help="memory request and limit per pod"),
    model_control_mode: str = typer.Option("none", help="Triton's --model-control-mode: none, poll or explicit"),
    exit_timeout_s: int = typer.Option(30, help="Triton's --exit-timeout-secs (the pod's grace period is 15 s more)"),
    startup_timeout_s: int = typer.Option(600, help="seconds the startup probe allows for loading the models"),
    credentials_secret: str | None = typer.Option(None, help="a Secret whose keys become env (AWS_*, GOOGLE_*)"),
    helm_values: bool = typer.Option(False, "--helm-values", help="write values.yaml for NVIDIA's chart instead"),
    force: bool = typer.Option(False, "--force", help="write into --out even if it holds files tritonctl did not write"),
) -> None:
    """Kubernetes manifests for Triton replicas: Deployment, Service, headless Service, autoscaler on queue time,
    Prometheus adapter rule, PodMonitor; or a values.yaml for NVIDIA's Helm chart."""
    from tritonctl.core.containers import DEFAULT_IMAGE
    from tritonctl.deploy import kubernetes as deploy

    s = deploy.K8sSettings.create(
        name=name, image=image or DEFAULT_IMAGE, model_repository=model_repository, replicas=replicas,
        gpus_per_replica=gpus_per_replica, namespace=namespace, max_replicas=max_replicas, cpu=cpu, memory=memory,
        model_control_mode=model_control_mode, exit_timeout_s=exit_timeout_s, startup_timeout_s=startup_timeout_s,
        target_queue_ms=target_queue_ms, credentials_secret=credentials_secret)
    written = deploy.write_out(out_dir, deploy.render(s, helm_values), force)
    out.print("wrote " + ", ".join(str(p) for p in written), markup=False, highlight=False, soft_wrap=True)
    how = f"helm install {name} <NVIDIA's chart> -f {written[0]}" if helm_values else f"kubectl apply -f {out_dir}"
    out.print(f"apply with: {how}", markup=False, highlight=False, soft_wrap=True)
