"""PipelineRunner: runs a deployment's diffusers pipeline with the guard in its step callbacks.

The runner draws the initial noise from each request's seed itself (so step 0 is known to the
monitor) and passes it in as `latents=`. The pipeline runs with output_type="latent" and the runner
decodes only when the request was not aborted: an interrupted pipeline would otherwise still decode
the half-denoised latents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.callbacks import MultiPipelineCallbacks
from PIL import Image

from latentguard.detectors import Detector, Drill, RequestGuard, StepVerdict
from latentguard.detectors.policy import DetectorPolicy
from latentguard.kernels import Backend
from latentguard.server.pipelines.callbacks import DrillCallback, GuardCallback, RecordCallback
from latentguard.server.pipelines.deployments import Deployment
from latentguard.server.pipelines.requests import ResolvedRequest
from latentguard.server.pipelines.trajectory_record import RecordedTrajectory
from latentguard.server.report import Report, Timings

StepHook = Callable[[StepVerdict], None]


@dataclass
class GenerateResult:
    image: Image.Image | None
    report: Report
    trajectory: RecordedTrajectory | None = None  # when the request asked for it


@dataclass
class Denoised:
    guard: RequestGuard
    latents: torch.Tensor  # [B, C, H, W], where denoising stopped
    trajectory: RecordedTrajectory | None = None


def initial_noise(dep: Deployment, seeds: list[int], height: int, width: int) -> torch.Tensor:
    """[B, C, H/f, W/f] standard normal noise, one CPU generator per seed (batch-invariant)."""
    shape = dep.family.latent_shape(dep.pipe, 1, height, width)
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    return torch.cat(noise).to(device=dep.pipe.device, dtype=dep.pipe.transformer.dtype)


class PipelineRunner:
    def __init__(self, dep: Deployment, backend: Backend = "auto"):
        self.dep = dep
        self.backend: Backend = backend

    def denoise(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int,
        height: int,
        width: int,
        guidance_scale: float,
        *,
        detectors: dict[str, Detector],
        policies: dict[str, DetectorPolicy],
        drill: Drill | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[list[StepVerdict]], None] | None = None,
        record: bool = False,
    ) -> Denoised:
        """Run the pipeline to latents with a guard watching every step (one verdict per element)."""
        dep, family = self.dep, self.dep.family
        noise = initial_noise(dep, seeds, height, width)
        guard = GuardCallback(
            family,
            height,
            width,
            lambda sigmas: RequestGuard(detectors, policies, noise, sigmas, backend=self.backend),
            should_stop,
            on_step,
        )
        recorder = RecordCallback(family, height, width, noise) if record else None
        fault = DrillCallback(family, height, width, drill, noise, seeds[0], dep.pipe) if drill else None
        callbacks = [*([fault] if fault else []), guard, *([recorder] if recorder else [])]
        extra = {}
        if dep.config.max_sequence_length is not None:
            extra["max_sequence_length"] = dep.config.max_sequence_length
        try:
            out = dep.pipe(
                prompt=prompts,
                num_inference_steps=steps,
                height=height,
                width=width,
                guidance_scale=guidance_scale,
                latents=family.to_pipeline(noise),
                output_type="latent",
                callback_on_step_end=MultiPipelineCallbacks(callbacks),
                **extra,
            )
        finally:
            if fault is not None:
                fault.close()
        assert guard.guard is not None
        latents = family.from_pipeline(out.images, dep.pipe, height, width)
        return Denoised(guard.guard, latents, recorder.result() if recorder else None)

    def denoise_at_defaults(
        self, prompts: list[str], seeds: list[int], drill: Drill | None = None
    ) -> Denoised:
        """The deployment's default steps, size and guidance, statistics kept but no detector scored:
        what the offline jobs (calibration, evaluation, quality) run."""
        cfg = self.dep.config
        return self.denoise(
            prompts,
            seeds,
            cfg.steps,
            cfg.height,
            cfg.width,
            cfg.guidance_scale,
            detectors={},
            policies={},
            drill=drill,
        )

    def generate(
        self,
        req: ResolvedRequest,
        should_stop: Callable[[], bool] | None = None,
        on_step: StepHook | None = None,
        decode: bool = True,
    ) -> GenerateResult:
        start = time.perf_counter()
        dep = self.dep
        run = self.denoise(
            [req.prompt],
            [req.seed],
            req.steps,
            req.height,
            req.width,
            req.guidance_scale,
            detectors=dep.detectors,
            policies=dep.policies,
            drill=req.drill,
            should_stop=should_stop,
            on_step=(lambda verdicts: on_step(verdicts[0])) if on_step else None,
            record=req.return_trajectory,
        )
        aborted = run.guard.verdict(0) == "abort"
        image = dep.family.decode(dep.pipe, run.latents)[0] if decode and not aborted else None
        exact = dep.profile is not None and (dep.profile.steps, dep.profile.height, dep.profile.width) == (
            req.steps,
            req.height,
            req.width,
        )
        drill = str(req.drill) if req.drill else ""
        report = build_report(dep, run.guard, req.seed, req.steps, drill, time.perf_counter() - start, exact)
        return GenerateResult(image=image, report=report, trajectory=run.trajectory)


def build_report(
    dep: Deployment,
    guard: RequestGuard,
    seed: int,
    steps_requested: int,
    drill: str,
    total_seconds: float,
    profile_exact: bool,
) -> Report:
    """The report of batch element 0 of a guarded run (Generate and Inspect alike)."""
    return Report(
        verdict=guard.verdict(0),
        deployment=dep.name,
        family=dep.config.family,
        variant=dep.config.variant,
        seed=seed,
        steps_requested=steps_requested,
        steps_run=guard.steps_run,
        aborted_at_step=guard.aborted_step(0),
        drill=drill,
        detectors=guard.detector_results(0),
        steps=guard.step_reports(0),
        timings=Timings(
            total_seconds=total_seconds,
            guard_seconds=guard.seconds,
            guard_seconds_per_step=guard.seconds / max(guard.steps_run, 1),
        ),
        profile=dep.profile.fingerprint if dep.profile else "",
        profile_exact=profile_exact,
    )
