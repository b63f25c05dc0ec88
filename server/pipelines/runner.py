"""PipelineRunner: runs a deployment's diffusers pipeline with the guard in its step callback.

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
from PIL import Image

from latentguard.detectors import Detector, Drill, Report, RequestGuard, Timings, x0_to_latent_delta
from latentguard.detectors.policy import DetectorPolicy
from latentguard.kernels import Backend
from latentguard.server.pipelines.deployments import Deployment
from latentguard.server.pipelines.requests import ResolvedRequest
from latentguard.server.pipelines.trajectory_record import (
    RecordedTrajectory,
    StepHook,
    TrajectoryRecorder,
    chain,
)


@dataclass
class GenerateResult:
    image: Image.Image | None
    report: Report
    trajectory: RecordedTrajectory | None = None  # when the request asked for it


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
        on_step: StepHook | None = None,
    ) -> tuple[RequestGuard, torch.Tensor]:
        """Run the pipeline to latents with a guard watching every step; returns (guard, [B,C,H,W])."""
        dep, family = self.dep, self.dep.family
        noise = initial_noise(dep, seeds, height, width)
        drill_gen = torch.Generator("cpu").manual_seed(seeds[0])
        holder: list[RequestGuard] = []

        def callback(pipe, i: int, t, kwargs: dict) -> dict:
            if not holder:
                sigmas = [float(s) for s in pipe.scheduler.sigmas]
                holder.append(RequestGuard(detectors, policies, noise, sigmas, backend=self.backend))
            guard = holder[0]
            latents = family.from_pipeline(kwargs["latents"], pipe, height, width)
            changed = drill is not None and i == drill.step
            if changed:
                assert drill is not None
                delta = drill.delta(guard.monitor.x0_hat(i, latents), drill_gen)
                shift = x0_to_latent_delta(delta, guard.sigmas[i], guard.sigmas[i + 1])
                latents = (latents.float() + shift).to(latents.dtype)
            abort = guard.check(i, latents)
            if on_step is not None:
                on_step(i, guard)
            if abort or (should_stop is not None and should_stop()):
                family.interrupt(pipe)
            return {"latents": family.to_pipeline(latents)} if changed else {}

        extra = {}
        if dep.config.max_sequence_length is not None:
            extra["max_sequence_length"] = dep.config.max_sequence_length
        out = dep.pipe(
            prompt=prompts,
            num_inference_steps=steps,
            height=height,
            width=width,
            guidance_scale=guidance_scale,
            latents=family.to_pipeline(noise),
            output_type="latent",
            callback_on_step_end=callback,
            **extra,
        )
        return holder[0], family.from_pipeline(out.images, dep.pipe, height, width)

    def generate(
        self,
        req: ResolvedRequest,
        should_stop: Callable[[], bool] | None = None,
        on_step: StepHook | None = None,
        decode: bool = True,
    ) -> GenerateResult:
        start = time.perf_counter()
        dep = self.dep
        recorder = TrajectoryRecorder() if req.return_trajectory else None
        guard, latents = self.denoise(
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
            on_step=chain(on_step, recorder),
        )
        verdict = guard.verdict(0)
        image = dep.family.decode(dep.pipe, latents)[0] if decode and verdict != "abort" else None
        exact = dep.profile is not None and (dep.profile.steps, dep.profile.height, dep.profile.width) == (
            req.steps,
            req.height,
            req.width,
        )
        report = build_report(
            dep,
            guard,
            req.seed,
            req.steps,
            str(req.drill) if req.drill else "",
            time.perf_counter() - start,
            exact,
        )
        return GenerateResult(image=image, report=report, trajectory=recorder.result() if recorder else None)


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
        aborted_at_step=guard.aborted_at,
        drill=drill,
        detectors=guard.detector_reports(0),
        steps=guard.step_reports(0),
        timings=Timings(
            total_seconds=total_seconds,
            guard_seconds=guard.seconds,
            guard_seconds_per_step=guard.seconds / max(guard.steps_run, 1),
        ),
        profile=dep.profile.fingerprint if dep.profile else "",
        profile_exact=profile_exact,
    )
