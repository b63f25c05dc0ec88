"""PipelineRunner: runs a deployment's diffusers pipeline with the guard in its step callbacks.

The runner draws the initial noise from each request's seed itself (so step 0 is known to the
monitor) and passes it in as `latents=`. The pipeline runs with output_type="latent" and the runner
decodes only what finished without an abort: an interrupted pipeline would otherwise still decode
the half-denoised latents.

`generate_batch` runs several requests as one pipeline call (dynamic batching: core/batching.py
decides which): per-element prompts, seeds, verdicts and reports; an element that aborts or is
stopped by its caller is answered at its step and masked for the rest of the call. `generate` is
the batch of one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks
from PIL import Image

from latentguard.detectors import Detector, Drill, RequestGuard, StepVerdict
from latentguard.detectors.drift import request_summary
from latentguard.detectors.policy import DetectorPolicy
from latentguard.kernels import Backend, TrajectoryStats
from latentguard.server.evidence.bundle import Snapshots, snapshots_of
from latentguard.server.pipelines.adapters import adapters_disabled
from latentguard.server.pipelines.attention_probes import Recording, recording
from latentguard.server.pipelines.callbacks import DrillCallback, GuardCallback, RecordCallback
from latentguard.server.pipelines.deployments import Deployment
from latentguard.server.pipelines.requests import ResolvedRequest
from latentguard.server.pipelines.trajectory_record import RecordedTrajectory
from latentguard.server.report import Attribution, Report, Timings

StepHook = Callable[[StepVerdict], None]


@dataclass
class Element:
    """One request of a pipeline call, and how its caller follows it and gets its answer."""

    request: ResolvedRequest
    should_stop: Callable[[], bool] | None = None
    on_step: StepHook | None = None
    decode: bool = True
    answer: Callable[[GenerateResult], None] | None = None  # once, as soon as its result is known


def batch_key(req: ResolvedRequest) -> tuple[int, int, int, float] | None:
    """Requests with equal keys may share one pipeline call. None: the request runs alone (a drill
    acts on the whole call)."""
    if req.drill is not None:
        return None
    return (req.steps, req.height, req.width, req.guidance_scale)


@dataclass
class GenerateResult:
    image: Image.Image | None
    report: Report
    trajectory: RecordedTrajectory | None = None  # when the request asked for it
    # fleet drift: the request's summary (detectors/drift.py), when it ran its whole trajectory,
    # undrilled, at the deployment's drift reference's schedule, size and guidance
    drift_summary: np.ndarray | None = None
    snapshots: Snapshots | None = None  # x0_hat pictures for the evidence bundle (deployments keeping one)
    # live calibration: the request's statistics [1, S, ...] and schedule, when the deployment is
    # collecting and the request ran its whole trajectory, undrilled, at the deployment's defaults
    calibration_run: tuple[TrajectoryStats, list[float]] | None = None


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
        should_stop: Callable[[int], bool] | None = None,
        on_step: Callable[[int, StepVerdict], None] | None = None,
        on_leave: Callable[[int, Denoised], None] | None = None,
        record: bool = False,
        keep_flagged_x0: bool = False,
    ) -> Denoised:
        """Run the pipeline to latents with a guard watching every step (one verdict per element).
        An element that aborts or is stopped leaves at that step: `on_leave(i, its run so far)`."""
        dep, family = self.dep, self.dep.family
        noise = initial_noise(dep, seeds, height, width)
        recorder = RecordCallback(family, height, width, noise) if record else None
        probe_tokens = dep.config.attention.max_tokens
        probes = Recording(len(seeds), dep.probe_layers, probe_tokens) if dep.probe_layers else None

        def leave(i: int, latents: torch.Tensor) -> None:
            if on_leave is not None:
                assert guard.guard is not None
                on_leave(i, Denoised(guard.guard, latents, recorder.result() if recorder else None))

        guard = GuardCallback(
            family,
            height,
            width,
            lambda sigmas: RequestGuard(
                detectors, policies, noise, sigmas, backend=self.backend, keep_flagged_x0=keep_flagged_x0
            ),
            should_stop,
            on_step,
            leave,
            attention=probes.take if probes else None,
        )
        fault = DrillCallback(family, height, width, drill, noise, seeds[0], dep.pipe) if drill else None
        callbacks = [*([fault] if fault else []), *([recorder] if recorder else []), guard]
        extra: dict[str, object] = {}
        if dep.config.max_sequence_length is not None:
            extra["max_sequence_length"] = dep.config.max_sequence_length
        if dep.config.true_cfg_scale > 1:
            extra |= {"true_cfg_scale": dep.config.true_cfg_scale, "negative_prompt": [""] * len(prompts)}
        try:
            with recording(probes):
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
        self, prompts: list[str], seeds: list[int], drill: Drill | None = None, record: bool = False
    ) -> Denoised:
        """The deployment's default steps, size and guidance, statistics kept (and the trajectory, with
        `record`) but no detector scored: what the offline jobs (calibration, evaluation, quality) run."""
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
            record=record,
        )

    def generate(
        self,
        req: ResolvedRequest,
        should_stop: Callable[[], bool] | None = None,
        on_step: StepHook | None = None,
        decode: bool = True,
    ) -> GenerateResult:
        return self.generate_batch([Element(req, should_stop, on_step, decode)])[0]

    def attribute(
        self, req: ResolvedRequest, report: Report, should_stop: Callable[[], bool] | None = None
    ) -> Attribution | None:
        """Replay a flagged request with every adapter disabled: does the artifact go away? None when
        the replay was stopped before its last step."""
        with adapters_disabled(self.dep.pipe):
            replay = self.generate(
                dataclasses.replace(req, return_trajectory=False), should_stop, decode=False
            )
        alone = replay.report
        if alone.steps_run < alone.steps_requested and alone.verdict != "abort":
            return None
        return Attribution(
            adapters=[a.name for a in self.dep.config.adapters],
            verdict_without_adapters=alone.verdict,
            flagged_without_adapters=alone.flagged_detectors,
            adapters_caused=report.verdict != "pass" and alone.verdict == "pass",
        )

    def generate_batch(self, elements: list[Element]) -> list[GenerateResult]:
        """Run requests of one `batch_key` as one pipeline call; each element's result is what it
        would get alone (up to float rounding of batched kernels: see the README)."""
        start = time.perf_counter()
        dep, first = self.dep, elements[0].request
        keys = {batch_key(e.request) for e in elements}
        if len(elements) > 1 and (len(keys) > 1 or None in keys):
            raise ValueError(f"these requests cannot share a pipeline call (batch keys {keys})")
        results: dict[int, GenerateResult] = {}

        def answer(i: int, run: Denoised, image: Image.Image | None = None) -> None:
            el = elements[i]
            req = el.request
            shape = (req.steps, req.height, req.width)
            exact = (
                dep.profile is not None
                and (dep.profile.steps, dep.profile.height, dep.profile.width) == shape
            )
            drill = str(req.drill) if req.drill else ""
            seconds = time.perf_counter() - start
            report = build_report(dep, run.guard, i, req.seed, req.steps, drill, seconds, exact)
            wanted = run.trajectory if el.request.return_trajectory else None
            summary = drift_summary(dep, run.guard, i, req) if report.verdict != "abort" else None
            snapshots = None
            if dep.config.evidence is not None:
                monitor = run.guard.monitor
                snapshots = snapshots_of(run.guard.flagged_x0, i, monitor.steps_seen - 1, monitor.latest_x0)
            trajectory = wanted.element(i) if wanted else None
            live = calibration_run(dep, run.guard, i, req) if dep.calibrating else None
            results[i] = GenerateResult(image, report, trajectory, summary, snapshots, live)
            if el.answer is not None:
                el.answer(results[i])

        def stopped(i: int) -> bool:
            stop = elements[i].should_stop
            return stop is not None and stop()

        def on_step(i: int, verdict: StepVerdict) -> None:
            hook = elements[i].on_step
            if hook is not None:
                hook(verdict)

        run = self.denoise(
            [e.request.prompt for e in elements],
            [e.request.seed for e in elements],
            first.steps,
            first.height,
            first.width,
            first.guidance_scale,
            detectors=dep.detectors,
            policies=dep.policies,
            drill=first.drill,
            should_stop=stopped,
            on_step=on_step,
            on_leave=answer,
            record=any(e.request.return_trajectory for e in elements),
            keep_flagged_x0=dep.config.evidence is not None,
        )
        rest = [i for i in range(len(elements)) if i not in results]
        to_decode = [i for i in rest if elements[i].decode]  # an aborted element has left already
        images = dep.family.decode(dep.pipe, run.latents[to_decode]) if to_decode else []
        decoded = dict(zip(to_decode, images, strict=True))
        for i in rest:
            answer(i, run, decoded.get(i))
        return [results[i] for i in range(len(elements))]


def drift_summary(dep: Deployment, guard: RequestGuard, i: int, req: ResolvedRequest) -> np.ndarray | None:
    comparable = dep.drift is not None and dep.drift.matches(
        req.steps, req.height, req.width, req.guidance_scale
    )
    if not comparable or req.drill is not None or guard.steps_run != req.steps:
        return None
    return request_summary(guard.monitor.stacked().index(slice(i, i + 1)))[0]


def calibration_run(
    dep: Deployment, guard: RequestGuard, i: int, req: ResolvedRequest
) -> tuple[TrajectoryStats, list[float]] | None:
    cfg = dep.config
    at_defaults = (req.steps, req.height, req.width, req.guidance_scale) == (
        cfg.steps,
        cfg.height,
        cfg.width,
        cfg.guidance_scale,
    )
    if not at_defaults or req.drill is not None or guard.steps_run != req.steps:
        return None
    return guard.monitor.stacked().index(slice(i, i + 1)), guard.sigmas


def build_report(
    dep: Deployment,
    guard: RequestGuard,
    i: int,
    seed: int,
    steps_requested: int,
    drill: str,
    total_seconds: float,
    profile_exact: bool,
) -> Report:
    """The report of batch element i of a guarded run (Generate and Inspect alike), as far as the
    guard has seen it."""
    return Report(
        verdict=guard.verdict(i),
        deployment=dep.name,
        family=dep.config.family,
        variant=dep.config.variant,
        seed=seed,
        steps_requested=steps_requested,
        steps_run=guard.steps_run,
        aborted_at_step=guard.aborted_step(i),
        drill=drill,
        detectors=guard.detector_results(i),
        steps=guard.step_reports(i),
        timings=Timings(
            total_seconds=total_seconds,
            guard_seconds=guard.seconds,
            guard_seconds_per_step=guard.seconds / max(guard.steps_run, 1),
        ),
        profile=dep.profile.fingerprint if dep.profile else "",
        profile_exact=profile_exact,
        calibration=dep.calibration,
    )
