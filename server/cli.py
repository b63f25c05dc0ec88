"""The `latentguard` command line: serve, generate, calibrate."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="latentguard: a guardrail for SD3 / FLUX.1 diffusion pipelines.", no_args_is_help=True)
console = Console(stderr=True)


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _deployment_config(settings, name: str):
    from latentguard.server.errors import NotFound

    for cfg in settings.deployments:
        if cfg.name == name:
            return cfg
    raise NotFound(
        f"unknown deployment {name!r}; configured: {', '.join(d.name for d in settings.deployments)}"
    )


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="Text prompt.")],
    deployment: Annotated[str, typer.Option(help="Deployment name.")] = "tiny-sd3",
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    steps: Annotated[int, typer.Option(help="Denoising steps (0: the deployment's default).")] = 0,
    width: Annotated[int, typer.Option(help="Image width (0: default).")] = 0,
    height: Annotated[int, typer.Option(help="Image height (0: default).")] = 0,
    drill: Annotated[
        str, typer.Option(help="Fault injection KIND[:step=N,strength=X] (aliasing|collapse|blur|nan).")
    ] = "",
    out: Annotated[Path | None, typer.Option(help="Where to write the PNG.")] = None,
    report: Annotated[Path | None, typer.Option(help="Where to write the JSON report.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Run the pipeline in this process.")] = False,
    target: Annotated[str | None, typer.Option(help="HOST:PORT of a running `latentguard serve`.")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline for --target, seconds.")] = 300.0,
    config: Annotated[Path | None, typer.Option(help="YAML config (deployments, limits).")] = None,
) -> None:
    """Generate one image with the guardrail watching every step; prints the verdict."""
    _quiet_libraries()
    from latentguard.server.config import Settings
    from latentguard.server.convert import png_bytes
    from latentguard.server.deployments import load_deployment
    from latentguard.server.errors import LatentguardError
    from latentguard.server.requests import GenerateRequest, resolve
    from latentguard.server.runner import PipelineRunner

    if local == (target is not None):
        _fail(ValueError("pass exactly one of --local (in process) or --target HOST:PORT (a running server)"))
    try:
        if target is not None:
            rep, image_png = _generate_remote(
                target, GenerateRequest(deployment, prompt, seed, steps, width, height, drill=drill), timeout
            )
            result = None
        else:
            settings = Settings.load(config)
            cfg = _deployment_config(settings, deployment)
            req = GenerateRequest(deployment, prompt, seed, steps, width, height, drill=drill)
            with console.status(f"loading {deployment}"):
                dep = load_deployment(cfg, device=settings.device)
            resolved = resolve(req, dep, settings.limits)
            with _progress() as bar:
                task = bar.add_task("denoising", total=resolved.steps)
                result = PipelineRunner(dep, backend=settings.backend).generate(
                    resolved, on_step=lambda i, g: bar.update(task, completed=i + 1)
                )
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    if result is not None:
        rep = result.report
        image_png = png_bytes(result.image)
    if out is not None and image_png:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(image_png)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(rep.to_json() + "\n")
    table = Table("detector", "score", "threshold", "flagged", "first step")
    for d in rep.detectors:
        table.add_row(
            d.name, f"{d.score:.2f}", f"{d.threshold:.2f}", "yes" if d.flagged else "", str(d.first_step)
        )
    console.print(table)
    colour = {"pass": "green", "flag": "yellow", "abort": "red"}[rep.verdict]
    wrote = f" -> {out}" if out is not None and image_png else ""
    console.print(
        f"verdict [{colour}]{rep.verdict}[/{colour}]  steps {rep.steps_run}/{rep.steps_requested}  "
        f"guard {rep.timings.guard_seconds_per_step * 1e3:.2f} ms/step  "
        f"total {rep.timings.total_seconds:.2f} s{wrote}"
    )


def _generate_remote(target: str, req, timeout: float):
    """GenerateStream against a running server, with a progress bar fed by its step events."""
    import grpc

    from latentguard.detectors import Report
    from latentguard.server.client import channel
    from latentguard.v1 import guardrail_pb2 as pb
    from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

    stub = pb_grpc.GuardrailStub(channel(target))
    msg = pb.GenerateRequest(
        deployment=req.deployment,
        prompt=req.prompt,
        seed=req.seed,
        steps=req.steps,
        width=req.width,
        height=req.height,
        drill=req.drill,
    )
    try:
        with _progress() as bar:
            task = bar.add_task(f"denoising on {target}", total=None)
            for event in stub.GenerateStream(msg, timeout=timeout):
                if event.HasField("step"):
                    bar.update(task, total=event.step.total_steps, completed=event.step.step + 1)
                else:
                    result = event.result
    except grpc.RpcError as exc:
        raise ValueError(f"{exc.code().name}: {exc.details()}") from None
    return Report.from_dict(_message_dict(result.report)), result.image_png


def _message_dict(msg) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="YAML config (deployments, limits, ports).")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (default 50051).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port (default 9464).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
) -> None:
    """Serve the gRPC guardrail (Generate, GenerateStream, Inspect, ListDeployments, health, reflection)."""
    _quiet_libraries()
    logging.getLogger("latentguard").setLevel(logging.INFO)
    import asyncio

    from latentguard.server.config import Settings
    from latentguard.server.errors import LatentguardError
    from latentguard.server.grpc_server import serve as run_server

    try:
        settings = Settings.load(config, port=port, metrics_port=metrics_port, host=host)
        asyncio.run(run_server(settings))
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)


@app.command()
def calibrate(
    deployment: Annotated[str, typer.Option(help="Deployment name.")],
    out: Annotated[Path, typer.Option(help="Profile file to write (JSON).")],
    prompts: Annotated[
        Path | None, typer.Option(help="Prompt file, one per line (default: built-in set).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per prompt (each run gets its own seed).")] = 8,
    fpr: Annotated[
        float, typer.Option(help="Target false-positive rate per request, all detectors together.")
    ] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Runs per pipeline call.")] = 8,
    config: Annotated[Path | None, typer.Option(help="YAML config (deployments, limits).")] = None,
) -> None:
    """Fit and calibrate every detector on benign runs; writes a versioned profile."""
    _quiet_libraries()
    from latentguard.server.calibrate import PROMPTS_DIR, calibrate_deployment, read_prompts
    from latentguard.server.config import Settings
    from latentguard.server.deployments import load_deployment
    from latentguard.server.errors import LatentguardError

    try:
        settings = Settings.load(config)
        cfg = _deployment_config(settings, deployment)
        prompt_list = read_prompts(prompts or PROMPTS_DIR / "calibration.txt")
        if seeds < 1:
            raise ValueError("--seeds must be at least 1")
        dep = load_deployment(cfg, device=settings.device, with_profile=False)
        with _progress() as bar:
            task = bar.add_task(f"calibrating {deployment}", total=len(prompt_list) * seeds)
            profile = calibrate_deployment(
                dep,
                prompt_list,
                seeds,
                fpr,
                out,
                batch_size=batch_size,
                progress=lambda n: bar.advance(task, n),
            )
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(json.dumps(profile.report.__dict__, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
