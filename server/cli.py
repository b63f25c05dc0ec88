"""The `latentguard` command line: serve, generate, calibrate, ab."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

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
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


TlsCa = Annotated[
    Path | None, typer.Option(help="CA certificate (PEM) that signed the server's; enables TLS.")
]
TlsCert = Annotated[Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")]
TlsKey = Annotated[Path | None, typer.Option(help="Client key (PEM) for mutual TLS.")]
Token = Annotated[
    str | None, typer.Option(envvar="LATENTGUARD_TOKEN", help="Bearer token (or LATENTGUARD_TOKEN).")
]


def _client_tls(ca: Path | None, cert: Path | None, key: Path | None):
    from latentguard.server.rpc.security import ClientTls

    if ca is None and cert is None and key is None:
        return None
    return ClientTls(*(str(p) if p else None for p in (ca, cert, key)))


def _fail(exc: Exception) -> None:
    # soft_wrap: one line per problem, however long, so that grep and log collectors see it whole
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
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
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    token: Token = None,
) -> None:
    """Generate one image with the guardrail watching every step; prints the verdict."""
    _quiet_libraries()
    from latentguard.server.errors import LatentguardError
    from latentguard.server.pipelines.requests import GenerateRequest

    if local == (target is not None):
        _fail(ValueError("pass exactly one of --local (in process) or --target HOST:PORT (a running server)"))
    req = GenerateRequest(deployment, prompt, seed, steps, width, height, drill=drill)
    try:
        if target is not None:
            rep, image_png = _generate_remote(
                target, req, timeout, _client_tls(tls_ca, tls_cert, tls_key), token
            )
        else:
            rep, image_png = _generate_local(req, config)
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    if out is not None and image_png:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(image_png)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(rep.to_json() + "\n")
    _print_report(rep, out if image_png else None)


def _generate_local(req, config: Path | None):
    """The deployment loaded in this process, a progress bar fed by the guard's step verdicts."""
    from latentguard.server.config import Settings
    from latentguard.server.pipelines.deployments import load_deployment
    from latentguard.server.pipelines.requests import resolve
    from latentguard.server.pipelines.runner import PipelineRunner
    from latentguard.server.rpc.convert import png_bytes

    settings = Settings.load(config)
    cfg = settings.deployment(req.deployment)
    with console.status(f"loading {req.deployment}"):
        dep = load_deployment(cfg, device=settings.device)
    resolved = resolve(req, dep, settings.limits)
    with _progress() as bar:
        task = bar.add_task("denoising", total=resolved.steps)
        result = PipelineRunner(dep, backend=settings.backend).generate(
            resolved, on_step=lambda v: bar.update(task, completed=v.step + 1)
        )
    return result.report, png_bytes(result.image)


def _print_report(rep, wrote: Path | None) -> None:
    table = Table("detector", "score", "threshold", "flagged", "first step")
    for d in rep.detectors:
        table.add_row(
            d.name, f"{d.score:.2f}", f"{d.threshold:.2f}", "yes" if d.flagged else "", str(d.first_step)
        )
    console.print(table)
    colour = {"pass": "green", "flag": "yellow", "abort": "red"}[rep.verdict]
    console.print(
        f"verdict [{colour}]{rep.verdict}[/{colour}]  steps {rep.steps_run}/{rep.steps_requested}  "
        f"guard {rep.timings.guard_seconds_per_step * 1e3:.2f} ms/step  "
        f"total {rep.timings.total_seconds:.2f} s" + (f" -> {wrote}" if wrote else "")
    )


def _generate_remote(target: str, req, timeout: float, tls, token: str | None):
    """GenerateStream against a running server, with a progress bar fed by its step events."""
    import grpc

    from latentguard.server.rpc.client import channel
    from latentguard.server.rpc.convert import report_from_proto, request_to_proto
    from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

    stub = pb_grpc.GuardrailStub(channel(target, tls, token))
    msg = request_to_proto(req)
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
    return report_from_proto(result.report), result.image_png


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
    from latentguard.server.rpc.server import serve as run_server

    try:
        settings = Settings.load(config, port=port, metrics_port=metrics_port, host=host)
        asyncio.run(run_server(settings))
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)


Seeds = Annotated[int, typer.Option(help="Seeds per prompt (each run gets its own seed).")]
Fpr = Annotated[float, typer.Option(help="Target false-positive rate per request, all detectors together.")]
Confidence = Annotated[
    float, typer.Option(help="Confidence that the FPR on new prompts stays within the target.")
]
Prompts = Annotated[
    Path | None, typer.Option(help="Prompt file, one per line (default: the built-in calibration set).")
]
BatchSize = Annotated[int, typer.Option(help="Runs per pipeline call.")]
Config = Annotated[Path | None, typer.Option(help="YAML config (deployments, limits).")]
Ray = Annotated[
    str | None,
    typer.Option(help="Run on Ray: 'local' starts a cluster here, else an address for ray.init (e.g. auto)."),
]
RayWorkers = Annotated[int, typer.Option(help="Ray actors, each loading the deployment once.")]
RayGpus = Annotated[float, typer.Option(help="GPUs per Ray actor (set device: cuda in the config).")]


@app.command()
def calibrate(
    deployment: Annotated[str, typer.Option(help="Deployment name.")],
    out: Annotated[Path, typer.Option(help="Profile file to write (JSON).")],
    prompts: Prompts = None,
    seeds: Seeds = 2,
    fpr: Fpr = 0.01,
    confidence: Confidence = 0.9,
    batch_size: BatchSize = 8,
    config: Config = None,
    ray: Ray = None,
    ray_workers: RayWorkers = 2,
    ray_gpus: RayGpus = 0,
) -> None:
    """Fit and jointly calibrate every hand-written detector on benign runs; writes a versioned profile."""
    ray_at = (ray, ray_workers, ray_gpus)
    _calibrate(
        deployment, out, prompts, seeds, fpr, confidence, batch_size, config, ray_at, with_classifier=False
    )


@app.command("train-classifier")
def train_classifier(
    deployment: Annotated[str, typer.Option(help="Deployment name.")],
    out: Annotated[Path, typer.Option(help="Profile file to write (JSON; the model goes next to it).")],
    prompts: Prompts = None,
    seeds: Seeds = 2,
    fpr: Fpr = 0.01,
    confidence: Confidence = 0.9,
    batch_size: BatchSize = 8,
    config: Config = None,
    ray: Ray = None,
    ray_workers: RayWorkers = 2,
    ray_gpus: RayGpus = 0,
) -> None:
    """Calibrate as `calibrate` does, plus the learned classifier: trained on benign and drilled runs,
    exported to ONNX next to the profile, thresholded jointly with the rest."""
    ray_at = (ray, ray_workers, ray_gpus)
    _calibrate(
        deployment, out, prompts, seeds, fpr, confidence, batch_size, config, ray_at, with_classifier=True
    )


def _calibrate(
    deployment, out, prompts, seeds, fpr, confidence, batch_size, config, ray, with_classifier
) -> None:
    _quiet_libraries()
    from contextlib import nullcontext

    from latentguard.server.config import Settings
    from latentguard.server.errors import LatentguardError
    from latentguard.server.offline.calibrate import calibrate_deployment, planned_runs
    from latentguard.server.offline.trajectories import LocalCollector, default_prompts, read_prompts
    from latentguard.server.pipelines.deployments import load_deployment

    address, workers, gpus = ray
    try:
        settings = Settings.load(config)
        settings.deployment(deployment)
        prompt_list = read_prompts(prompts) if prompts else default_prompts("calibration")
        if seeds < 1:
            raise ValueError("--seeds must be at least 1")
        if address is not None:
            from latentguard.server.offline.distributed import RayCollector, cluster

            context = cluster(address, workers)
        else:
            context = nullcontext()
        with context:
            if address is not None:
                source = RayCollector(settings, deployment, workers, batch_size, gpus_per_worker=gpus)
            else:
                dep = load_deployment(settings.deployment(deployment), settings.device, with_profile=False)
                source = LocalCollector(dep, batch_size)
            with _progress() as bar:
                total = planned_runs(prompt_list, seeds, with_classifier)
                task = bar.add_task(f"calibrating {deployment}", total=total)
                profile = calibrate_deployment(
                    source,
                    prompt_list,
                    seeds,
                    fpr,
                    out,
                    with_classifier=with_classifier,
                    confidence=confidence,
                    progress=lambda n: bar.advance(task, n),
                )
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(json.dumps(profile.report.__dict__, indent=1))
    console.print(f"wrote {out}")


def _next_to_profile(cfg, out: Path | None, path_of, what: str) -> Path:
    """`out`, else the file next to the deployment's profile (where the server looks for it)."""
    from latentguard.server.pipelines.deployments import profile_path

    if out is not None:
        return out
    profile = profile_path(cfg)
    if profile is None:
        raise ValueError(f"{cfg.name} has no profile to put the {what} next to: pass --out")
    return path_of(profile)


@app.command("drift-reference")
def drift_reference(
    deployment: Annotated[str, typer.Option(help="Deployment name.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="File to write (default: next to the deployment's profile, NAME.drift.safetensors)."
        ),
    ] = None,
    prompts: Prompts = None,
    window: Annotated[int | None, typer.Option(help="Requests per compared window [64].")] = None,
    alpha: Annotated[
        float | None, typer.Option(help="False-alarm rate per window of an unchanged model [5e-4].")
    ] = None,
    null_windows: Annotated[
        int | None, typer.Option(help="Resampled benign windows the thresholds come from [50000].")
    ] = None,
    batch_size: BatchSize = 8,
    config: Config = None,
) -> None:
    """Record the fleet-drift reference: one benign run per calibration prompt, half of them the
    reference, the other half the held-out windows that set the thresholds."""
    _quiet_libraries()
    from latentguard.detectors.drift import NULL_WINDOWS
    from latentguard.server.config import Settings
    from latentguard.server.errors import LatentguardError
    from latentguard.server.offline.calibrate import split_by_prompt
    from latentguard.server.offline.drift_reference import build_drift_reference
    from latentguard.server.offline.trajectories import LocalCollector, default_prompts, read_prompts
    from latentguard.server.pipelines.deployments import drift_reference_path, load_deployment

    try:
        settings = Settings.load(config)
        cfg = settings.deployment(deployment)
        out = _next_to_profile(cfg, out, drift_reference_path, "drift reference")
        prompt_list = read_prompts(prompts) if prompts else default_prompts("calibration")
        dep = load_deployment(cfg, settings.device, with_profile=False)
        with _progress() as bar:
            total = sum(len(half) for half in split_by_prompt(prompt_list, 0.5))
            task = bar.add_task(f"drift reference of {deployment}", total=total)
            given = {"window": window, "alpha": alpha, "null_windows": null_windows}
            windows = bar.add_task("thresholds from resampled windows", total=null_windows or NULL_WINDOWS)
            reference = build_drift_reference(
                LocalCollector(dep, batch_size),
                prompt_list,
                out,
                progress=lambda n: bar.advance(task, n),
                windows_progress=lambda n: bar.advance(windows, n),
                **{k: v for k, v in given.items() if v is not None},  # None: detectors/drift.py's defaults
            )
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(
        json.dumps({"runs": reference.runs, "window": reference.window, "thresholds": reference.thresholds})
    )
    console.print(f"wrote {out}")


@app.command()
def attribute(
    prompt: Annotated[str, typer.Option(help="Text prompt.")],
    deployment: Annotated[str, typer.Option(help="A deployment with LoRA adapters.")],
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    steps: Annotated[int, typer.Option(help="Denoising steps (0: the deployment's default).")] = 0,
    config: Config = None,
) -> None:
    """Run a request on an adapted deployment in this process, then replay it with every adapter
    disabled: does the artifact go away?"""
    _quiet_libraries()
    from latentguard.server.config import Settings
    from latentguard.server.errors import LatentguardError
    from latentguard.server.pipelines.deployments import load_deployment
    from latentguard.server.pipelines.requests import GenerateRequest, resolve
    from latentguard.server.pipelines.runner import PipelineRunner

    try:
        settings = Settings.load(config)
        cfg = settings.deployment(deployment)
        if not cfg.adapters:
            raise ValueError(f"{deployment} has no adapters to attribute to")
        with console.status(f"loading {deployment}"):
            dep = load_deployment(cfg, device=settings.device)
        req = resolve(GenerateRequest(deployment, prompt, seed=seed, steps=steps), dep, settings.limits)
        runner = PipelineRunner(dep, backend=settings.backend)
        with console.status("with the adapters, then without"):
            report = runner.generate(req, decode=False).report
            attribution = runner.attribute(req, report)
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    assert attribution is not None  # nothing stops a local replay
    table = Table("", "verdict", "flagged")
    table.add_row(
        f"with {', '.join(attribution.adapters)}", report.verdict, ", ".join(report.flagged_detectors)
    )
    table.add_row(
        "without adapters",
        attribution.verdict_without_adapters,
        ", ".join(attribution.flagged_without_adapters),
    )
    console.print(table)
    if report.verdict == "pass":
        console.print("nothing flagged with the adapters: nothing to attribute")
    else:
        caused = "the adapters cause it" if attribution.adapters_caused else "it stays without the adapters"
        console.print(f"{deployment}: {caused}")


@app.command("canary-reference")
def canary_reference(
    deployment: Annotated[str, typer.Option(help="Deployment name.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="File to write (default: next to the deployment's profile, NAME.canaries.safetensors)."
        ),
    ] = None,
    config: Config = None,
) -> None:
    """Record the deployment's control-prompt canaries (`canaries.prompts` in the config)."""
    _quiet_libraries()
    from latentguard.server.config import Settings
    from latentguard.server.errors import LatentguardError
    from latentguard.server.pipelines.canaries import record
    from latentguard.server.pipelines.deployments import canary_reference_path, load_deployment
    from latentguard.server.pipelines.runner import PipelineRunner

    try:
        settings = Settings.load(config)
        cfg = settings.deployment(deployment)
        out = _next_to_profile(cfg, out, canary_reference_path, "canaries")
        dep = load_deployment(cfg, settings.device, with_profile=False)
        with console.status(f"recording {len(cfg.canaries.prompts)} canaries of {deployment}"):
            canaries = record(PipelineRunner(dep), cfg.canaries.prompts)
        canaries.save(out)
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(f"wrote {out} ({len(canaries.canaries)} canaries, model {canaries.fingerprint})")


@app.command()
def canary(
    deployment: Annotated[str, typer.Option(help="Deployment name.")],
    target: Annotated[str | None, typer.Option(help="HOST:PORT of a running `latentguard serve`.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Load the deployment in this process.")] = False,
    config: Config = None,
    timeout: Annotated[float, typer.Option(help="Deadline for --target, seconds.")] = 300.0,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    token: Token = None,
) -> None:
    """Run a deployment's canaries now and compare them with their reference.

    Exit code 0: the model matches its reference; 1: it changed; 2: error.
    """
    _quiet_libraries()
    from latentguard.server.errors import LatentguardError

    if local == (target is not None):
        _fail(ValueError("give exactly one of --local or --target HOST:PORT"))
    try:
        if target is not None:
            from latentguard.server.rpc.client import channel
            from latentguard.v1 import guardrail_pb2 as pb
            from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

            stub = pb_grpc.GuardrailStub(channel(target, _client_tls(tls_ca, tls_cert, tls_key), token))
            r = stub.RunCanaries(pb.RunCanariesRequest(deployment=deployment), timeout=timeout)
            rows = [(c.prompt, c.seed, c.steps, c.divergence, c.first_divergent_step) for c in r.canaries]
            divergence, tolerance, changed = r.divergence, r.tolerance, r.changed
        else:
            rows, divergence, tolerance, changed = _canary_local(deployment, config)
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    except Exception as exc:  # grpc.RpcError: say what the server said
        if hasattr(exc, "code") and hasattr(exc, "details"):
            _fail(RuntimeError(f"{exc.code().name}: {exc.details()}"))
        raise
    table = Table("prompt", "seed", "steps", "divergence", "first divergent step")
    for prompt, seed, steps, div, first in rows:
        table.add_row(prompt, str(seed), str(steps), f"{div:.3g}", str(first) if first >= 0 else "-")
    console.print(table)
    verdict = "[red]changed" if changed else "[green]unchanged"
    console.print(f"{deployment}: {verdict}[/] (divergence {divergence:.3g}, tolerance {tolerance:.3g})")
    raise typer.Exit(1 if changed else 0)


def _canary_local(deployment: str, config: Path | None):
    from latentguard.server.config import Settings
    from latentguard.server.errors import FailedPrecondition
    from latentguard.server.pipelines.canaries import run_round
    from latentguard.server.pipelines.deployments import load_deployment
    from latentguard.server.pipelines.runner import PipelineRunner

    settings = Settings.load(config)
    cfg = settings.deployment(deployment)
    dep = load_deployment(cfg, settings.device)
    if dep.canaries is None:
        raise FailedPrecondition(f"{deployment} has no canary reference (run `latentguard canary-reference`)")
    report = run_round(PipelineRunner(dep), dep.canaries, cfg.canaries.tolerance)
    assert report is not None  # nothing stops a local round
    rows = [
        (r.canary.prompt, r.canary.seed, r.canary.steps, r.divergence, r.first_divergent_step)
        for r in report.results
    ]
    return rows, report.divergence, report.tolerance, report.changed


@app.command()
def ab(
    baseline: Annotated[str, typer.Option(help="The 16-bit deployment (reference).")],
    candidate: Annotated[str, typer.Option(help="The deployment that may replace it (FP8, int4, ...).")],
    out: Annotated[
        Path, typer.Option(help="Output folder: report.json, report.md, divergence.png, scores.png.")
    ],
    prompts: Annotated[
        Path | None, typer.Option(help="Prompt file, one per line (default: 8 built-in evaluation prompts).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per prompt (0..N-1, the same on both sides).")] = 4,
    target: Annotated[
        str | None, typer.Option(help="host:port of a running server (default: run in this process).")
    ] = None,
    candidate_drill: Annotated[
        str, typer.Option(help="Inject a drill into the candidate's runs, KIND[:step=N,strength=X].")
    ] = "",
    config: Annotated[Path | None, typer.Option(help="YAML config (deployments), in-process runs.")] = None,
    max_x0_divergence: Annotated[float, typer.Option(help="Gate: final x0_hat mean relative L2.")] = 0.25,
    min_psnr: Annotated[float, typer.Option(help="Gate: mean PSNR of the final images (dB).")] = 20.0,
    min_ssim: Annotated[float, typer.Option(help="Gate: mean SSIM of the final images.")] = 0.8,
    max_flag_increase: Annotated[float, typer.Option(help="Gate: flag-rate increase, any detector.")] = 0.05,
    max_score_shift: Annotated[float, typer.Option(help="Gate: significant median score shift.")] = 1.0,
    alpha: Annotated[float, typer.Option(help="Significance level for the score-shift gate.")] = 0.05,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    token: Token = None,
    ray: Ray = None,
    ray_workers: RayWorkers = 2,
) -> None:
    """Compare a candidate deployment with its baseline on the same prompts and seeds.

    Exit code 0: acceptable; 1: not acceptable; 2: error.
    """
    _quiet_libraries()
    from pydantic import ValidationError

    from latentguard.server.errors import LatentguardError
    from latentguard.server.offline.ab import Gates

    try:
        gates = Gates(
            max_x0_divergence=max_x0_divergence,
            min_psnr_db=min_psnr,
            min_ssim=min_ssim,
            max_flag_rate_increase=max_flag_increase,
            max_score_shift=max_score_shift,
            alpha=alpha,
        )
        remote = (target, _client_tls(tls_ca, tls_cert, tls_key), token) if target else None
        report, written = _ab_run(
            baseline,
            candidate,
            out,
            prompts,
            seeds,
            remote,
            candidate_drill,
            config,
            gates,
            (ray, ray_workers),
        )
    except (LatentguardError, ValueError, ValidationError, OSError) as exc:
        _fail(exc)
    except Exception as exc:  # grpc.RpcError and friends: say what the server said
        if hasattr(exc, "code") and hasattr(exc, "details"):
            _fail(RuntimeError(f"{exc.code().name}: {exc.details()}"))
        raise
    table = Table("gate", "value", "limit", "")
    for g in report.gates:
        value = f"{g['value']:.4g}" if isinstance(g["value"], float) else str(g["value"])
        table.add_row(g["gate"], value, f"{g['op']} {g['limit']:.4g}", "pass" if g["passed"] else "[red]FAIL")
    console.print(table)
    verdict = "[green]acceptable" if report.acceptable else "[red]not acceptable"
    console.print(f"{candidate} vs {baseline}: {verdict}[/] ({report.pairs} pairs)")
    for path in written:
        console.print(f"wrote {path}")
    raise typer.Exit(0 if report.acceptable else 1)


def _ab_run(baseline, candidate, out, prompts, seeds, remote, candidate_drill, config, gates, ray):
    """Pairs from the source (in process, over gRPC, or on Ray), compared and written to `out`."""
    from latentguard.server.config import Settings
    from latentguard.server.offline import ab, ab_report
    from latentguard.server.offline.ab_sources import GrpcSource, InProcessSource, Source
    from latentguard.server.offline.trajectories import default_prompts, read_prompts
    from latentguard.server.pipelines.requests import parse_drill

    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    prompt_list = read_prompts(prompts) if prompts else default_prompts("evaluation")[:8]
    parse_drill(candidate_drill)  # a malformed drill fails before any run
    items = ab.pair_grid(prompt_list, seeds)
    address, workers = ray
    with _progress() as bar:
        if address is not None:
            from latentguard.server.offline.distributed import cluster, ray_pairs

            task = bar.add_task(f"{candidate} vs {baseline} on Ray", total=len(items))
            with cluster(address, workers):
                *infos, pairs = ray_pairs(
                    Settings.load(config),
                    baseline,
                    candidate,
                    items,
                    candidate_drill,
                    workers,
                    lambda: bar.advance(task),
                )
        else:
            source: Source = GrpcSource(*remote) if remote else InProcessSource(Settings.load(config))
            infos = [source.info(baseline), source.info(candidate)]
            task = bar.add_task(f"{candidate} vs {baseline}", total=2 * len(items))
            pairs = ab.run_pairs(
                source, baseline, candidate, items, candidate_drill, lambda: bar.advance(task)
            )
    report = ab.compare(pairs, *infos, gates, drill=candidate_drill)
    return report, ab_report.write(report, pairs, out)


@app.command("token-hash")
def token_hash_command(
    name: Annotated[str, typer.Option(help="A name for the token, for the server log.")],
    deployments: Annotated[
        str, typer.Option(help="Comma-separated deployments it may use, or * for every one (no default).")
    ],
    inspect: Annotated[bool, typer.Option(help="Whether it may call Inspect.")] = False,
) -> None:
    """Read a token from stdin and print its entry for `auth.tokens` (the token itself is never stored)."""
    import sys

    import yaml

    from latentguard.server.rpc.auth import token_hash

    token = sys.stdin.readline().strip()
    if not token:
        _fail(ValueError("no token on stdin"))
    entry = {
        "name": name,
        "sha256": token_hash(token),
        "deployments": deployments.split(","),
        "inspect": inspect,
    }
    print(yaml.safe_dump([entry], sort_keys=False), end="")


@app.command()
def init(
    model: Annotated[Path, typer.Option(help="Your diffusers folder (safetensors).")],
    family: Annotated[str, typer.Option(help="sd3 (SD3, SD3.5) or flux (FLUX.1).")],
    out: Annotated[Path, typer.Option(help="Config to write; the profile and references go beside it.")],
    name: Annotated[str, typer.Option(help="Deployment name (default: the folder's name).")] = "",
    prompts: Prompts = None,
    seeds: Seeds = 2,
    fpr: Fpr = 0.01,
    confidence: Confidence = 0.9,
    steps: Annotated[int, typer.Option(help="Denoising steps served (calibration holds for these).")] = 28,
    width: Annotated[int, typer.Option(help="Image width served.")] = 1024,
    height: Annotated[int, typer.Option(help="Image height served.")] = 1024,
    guidance_scale: Annotated[
        float, typer.Option(help="Guidance served (FLUX.1-dev: its distilled guidance, e.g. 3.5).")
    ] = 4.5,
    classifier: Annotated[bool, typer.Option(help="Also train the learned classifier.")] = True,
    device: Annotated[str, typer.Option(help="Where to run the model (cuda, cpu).")] = "cpu",
    batch_size: BatchSize = 8,
    null_windows: Annotated[
        int, typer.Option(help="Resampled benign windows the drift thresholds come from.")
    ] = 50_000,
) -> None:
    """Write a config for your model folder and calibrate it: profile, classifier, drift reference and
    canaries, with progress and an ETA. Then `latentguard serve --config OUT` serves it guarded."""
    _quiet_libraries()
    from latentguard.server.config import DeploymentConfig
    from latentguard.server.errors import LatentguardError
    from latentguard.server.offline import init as initialisation
    from latentguard.server.offline.trajectories import default_prompts, read_prompts

    try:
        if family not in ("sd3", "flux"):
            raise ValueError(f"--family must be sd3 or flux, not {family!r}")
        dep_config = DeploymentConfig(
            name=name or model.name,
            model=str(model.resolve()),
            family=family,
            steps=steps,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
        )
        prompt_list = read_prompts(prompts) if prompts else default_prompts("calibration")
        planned = initialisation.plan(dep_config, prompt_list, seeds, fpr, confidence, classifier)
        console.print(planned.explain(fpr, confidence))
        out.parent.mkdir(parents=True, exist_ok=True)
        with _progress() as bar:

            def stage(what: str, total: int):
                task = bar.add_task(what, total=total)
                return lambda n: bar.advance(task, n)

            profile = initialisation.initialise(
                dep_config,
                out,
                prompt_list,
                seeds=seeds,
                fpr=fpr,
                confidence=confidence,
                classifier=classifier,
                device=device,
                batch_size=batch_size,
                stage=stage,
                null_windows=null_windows,
            )
    except (LatentguardError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(f"wrote {out} and {profile} (with its drift reference and canaries)")
    console.print(f"serve it guarded: latentguard serve --config {out}")


config_app = typer.Typer(help="Check a config before rolling it out.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    config: Annotated[Path, typer.Argument(help="YAML config to validate (as `serve --config` reads it).")],
) -> None:
    """Validate a config as `serve` would (unknown keys, tokens file, TLS files) and print the effective
    settings with secrets redacted. Exit code 0: valid; 2: not (one line per problem)."""
    from latentguard.server.config import Settings, effective_settings

    try:
        settings = Settings.load(config)
        missing = settings.missing_files()
        if missing:
            raise ValueError("\n".join(f"{config}: {key}: no such file {path!r}" for key, path in missing))
        effective = effective_settings(settings)  # reads and validates the tokens file
    except (ValueError, OSError) as exc:
        _fail(exc)
    import yaml

    print(yaml.safe_dump(effective, sort_keys=False), end="")
    console.print(f"[green]{config}: valid[/] ({len(settings.deployments)} deployments)")


evidence_app = typer.Typer(help="Look at the evidence bundles of flagged requests.", no_args_is_help=True)
app.add_typer(evidence_app, name="evidence")
StoreUrl = Annotated[
    str,
    typer.Option("--store", help="The deployment's evidence.store URL (file:///dir, s3://bucket/prefix)."),
]
StorageOption = Annotated[
    list[str] | None,
    typer.Option("--storage-option", help="KEY=VALUE passed to fsspec (e.g. endpoint_url=http://...)."),
]


def _evidence_store(url: str, options: list[str] | None):
    import yaml

    from latentguard.server.evidence.store import EvidenceStore

    parsed = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(ValueError(f"--storage-option {item!r}: expected KEY=VALUE"))
        parsed[key] = yaml.safe_load(value)
    return EvidenceStore(url, parsed)


def _since(value: str | None):
    """'2h', '30m', '7d' ago, or an ISO time; None: no bound."""
    from datetime import UTC, datetime, timedelta

    if value is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    when = datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@evidence_app.command("ls")
def evidence_ls(
    store: StoreUrl,
    deployment: Annotated[str | None, typer.Option(help="Only this deployment.")] = None,
    detector: Annotated[str | None, typer.Option(help="Only bundles this detector flagged.")] = None,
    verdict: Annotated[str | None, typer.Option(help="Only this verdict: flag, abort or pass.")] = None,
    since: Annotated[str | None, typer.Option(help="Newer than this: 30m, 2h, 7d, or an ISO time.")] = None,
    limit: Annotated[int, typer.Option(help="Show the newest this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (meta.json).")] = False,
    storage_option: StorageOption = None,
) -> None:
    """List bundles, newest first."""
    from datetime import datetime

    try:
        bundles = _evidence_store(store, storage_option).list()
        after = _since(since)
    except (ValueError, OSError) as exc:
        _fail(exc)
    kept = [
        b
        for b in reversed(bundles)
        if (deployment is None or b.meta["deployment"] == deployment)
        and (detector is None or detector in b.meta["flagged"])
        and (verdict is None or b.meta["verdict"] == verdict)
        and (after is None or datetime.fromisoformat(b.meta["time"]) >= after)
    ][:limit]
    if as_json:
        for b in kept:
            print(json.dumps(b.meta))
        return
    table = Table("time (UTC)", "deployment", "verdict", "flagged", "first flagged step", "source")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=32))
    for b in kept:
        m = b.meta
        step = str(m["flagged_step"]) if m["flagged_step"] >= 0 else ""
        table.add_row(
            b.id, m["time"][:19], m["deployment"], m["verdict"], ", ".join(m["flagged"]), step, m["source"]
        )
    Console().print(table)
    console.print(f"{len(kept)} of {len(bundles)} bundles in {store}")


def _bundle(store: str, bundle_id: str, options: list[str] | None):
    from latentguard.server.evidence.html import PICTURES
    from latentguard.server.report import Report

    evidence = _evidence_store(store, options)
    try:
        ref = evidence.find(bundle_id)
    except KeyError as exc:
        _fail(ValueError(exc.args[0]))
    raw = evidence.read(ref, "report.json")
    assert raw is not None, f"bundle {ref.folder} has no report.json"
    pictures = {name: data for name, _ in PICTURES if (data := evidence.read(ref, name)) is not None}
    return ref, Report.from_dict(json.loads(raw)), pictures


@evidence_app.command("show")
def evidence_show(
    bundle_id: Annotated[str, typer.Argument(help="The request id (or its first 6+ characters).")],
    store: StoreUrl,
    html: Annotated[Path | None, typer.Option(help="Also write the bundle as one HTML page here.")] = None,
    storage_option: StorageOption = None,
) -> None:
    """One bundle in the terminal (and as an HTML page with --html)."""
    from latentguard.server.evidence.html import render

    try:
        ref, report, pictures = _bundle(store, bundle_id, storage_option)
    except (ValueError, OSError) as exc:
        _fail(exc)
    out = Console()
    m = ref.meta
    out.print(f"[bold]{ref.id}[/]  {m['time']}  {m['deployment']}  verdict [bold]{report.verdict}[/]")
    out.print(
        f"steps {report.steps_run}/{report.steps_requested}, seed {report.seed}, trace {m['trace_id'] or '-'}"
    )
    out.print(f"profile {report.profile or '-'}, weights {m['weights']}, files: {', '.join(m['files'])}")
    table = Table("detector", "score", "threshold", "flagged", "first step")
    for d in report.detectors:
        table.add_row(
            d.name, f"{d.score:.3g}", f"{d.threshold:.3g}", "yes" if d.flagged else "", str(d.first_step)
        )
    out.print(table)
    if html is not None:
        html.write_text(render(m, report, pictures))
        console.print(f"wrote {html}")


@evidence_app.command("export")
def evidence_export(
    bundle_id: Annotated[str, typer.Argument(help="The request id (or its first 6+ characters).")],
    store: StoreUrl,
    out: Annotated[Path, typer.Option(help="Folder to write the bundle's files and index.html into.")],
    storage_option: StorageOption = None,
) -> None:
    """Copy one bundle out of the store, with its HTML page, e.g. to attach to an incident."""
    from latentguard.server.evidence.html import render

    try:
        ref, report, pictures = _bundle(store, bundle_id, storage_option)
        evidence = _evidence_store(store, storage_option)
        out.mkdir(parents=True, exist_ok=True)
        for name in ref.meta["files"]:
            data = evidence.read(ref, name)
            if data is not None:
                (out / name).write_bytes(data)
        (out / "meta.json").write_text(json.dumps(ref.meta, indent=1))
        (out / "index.html").write_text(render(ref.meta, report, pictures))
    except (ValueError, OSError) as exc:
        _fail(exc)
    console.print(f"wrote {out}/ (open index.html)")


if __name__ == "__main__":
    app()
