"""The pipeline's step callbacks: drill injection, the guard, trajectory recording.

Each is a diffusers `PipelineCallback` on the latents the pipeline whitelists; the runner combines
them with `MultiPipelineCallbacks`, in that order, so the guard scores the drilled latents and the
recorder keeps what the guard saw. Latents arrive in the pipeline's layout (FLUX: packed) and are
unpacked to [B, C, H, W] by the family's helper only where a callback needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from diffusers.callbacks import PipelineCallback

from latentguard.detectors import Drill, RequestGuard, StepVerdict, denoised_estimate, x0_to_latent_delta
from latentguard.server.pipelines.families import FamilyOps, Pipeline
from latentguard.server.pipelines.trajectory_record import RecordedTrajectory


def schedule(pipe: Pipeline) -> list[float]:
    """The sigmas this run steps through (steps + 1 values, the last 0)."""
    return [float(s) for s in pipe.scheduler.sigmas]


class _LatentsCallback(PipelineCallback):
    tensor_inputs: ClassVar[list[str]] = ["latents"]

    def __init__(self, family: FamilyOps, height: int, width: int):
        super().__init__()
        self.family, self.height, self.width = family, height, width

    def unpack(self, latents: torch.Tensor, pipe: Pipeline) -> torch.Tensor:
        return self.family.from_pipeline(latents, pipe, self.height, self.width)


class DrillCallback(_LatentsCallback):
    """Moves the latents after step `drill.step` so that this step's x0_hat changes by the drill's
    delta (x0_to_latent_delta); the rest of the trajectory carries the fault on."""

    def __init__(
        self, family: FamilyOps, height: int, width: int, drill: Drill, noise: torch.Tensor, seed: int
    ):
        super().__init__(family, height, width)
        self.drill = drill
        self.previous = family.to_pipeline(noise)  # pipeline layout; unpacked only at the drill step
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def callback_fn(self, pipe: Pipeline, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = kwargs["latents"]
        if step == self.drill.step:
            sigma, sigma_next = schedule(pipe)[step : step + 2]
            current = self.unpack(latents, pipe)
            x0_hat = denoised_estimate(self.unpack(self.previous, pipe), current, sigma, sigma_next)
            shift = x0_to_latent_delta(self.drill.delta(x0_hat, self.generator), sigma, sigma_next)
            latents = self.family.to_pipeline((current.float() + shift).to(current.dtype))
            kwargs = {**kwargs, "latents": latents}
        self.previous = latents
        return kwargs


class GuardCallback(_LatentsCallback):
    """Scores every step with a RequestGuard (built at step 0, when the schedule is known) and
    interrupts the pipeline when an element must abort or the caller stops."""

    def __init__(
        self,
        family: FamilyOps,
        height: int,
        width: int,
        make_guard: Callable[[list[float]], RequestGuard],
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[list[StepVerdict]], None] | None = None,
    ):
        super().__init__(family, height, width)
        self.make_guard, self.should_stop, self.on_step = make_guard, should_stop, on_step
        self.guard: RequestGuard | None = None

    def callback_fn(self, pipe: Pipeline, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.guard is None:
            self.guard = self.make_guard(schedule(pipe))
        verdicts = self.guard.check(step, self.unpack(kwargs["latents"], pipe))
        if self.on_step is not None:
            self.on_step(verdicts)
        if any(v.abort for v in verdicts) or (self.should_stop is not None and self.should_stop()):
            self.family.interrupt(pipe)
        return kwargs


class RecordCallback(_LatentsCallback):
    """Keeps every step's latents (float32, CPU), for A/B comparisons and shadow mode only; the guard
    itself never keeps more than the previous step."""

    def __init__(self, family: FamilyOps, height: int, width: int, noise: torch.Tensor):
        super().__init__(family, height, width)
        self.latents = [noise.detach().float().cpu()]
        self.sigmas: list[float] = []

    def callback_fn(self, pipe: Pipeline, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.sigmas = self.sigmas or schedule(pipe)
        self.latents.append(self.unpack(kwargs["latents"], pipe).detach().float().cpu())
        return kwargs

    def result(self) -> RecordedTrajectory:
        return RecordedTrajectory(self.sigmas, self.latents)
