"""The pipeline's step callbacks: drill injection, the guard, trajectory recording.

Each is a diffusers `PipelineCallback` on the latents the pipeline whitelists; the runner combines
them with `MultiPipelineCallbacks` in the order drill, recorder, guard: the guard scores the drilled
latents, and the recorder has kept them by the time the guard answers an element. Latents arrive
in the pipeline's layout (FLUX: packed) and are unpacked to [B, C, H, W] by the family's helper
only where a callback needs them.
"""

from __future__ import annotations

import threading
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
    """Fault injection (detectors/drills.py). Step mode: moves the latents after step `drill.step` so
    that this step's x0_hat becomes T(x0_hat) (x0_to_latent_delta); the trajectory carries it on.
    Model mode: a forward hook on the denoiser rewrites every call from `drill.step` on so that its
    prediction of the clean latents, x0 = x_t - sigma v, becomes T(x0) (`Drill.predict`). The hook
    acts only on calls from the thread that runs this request, and `close` removes it."""

    def __init__(
        self,
        family: FamilyOps,
        height: int,
        width: int,
        drill: Drill,
        noise: torch.Tensor,
        seed: int,
        pipe: Pipeline,
    ):
        super().__init__(family, height, width)
        self.drill, self.pipe = drill, pipe
        self.previous = family.to_pipeline(noise)  # pipeline layout; unpacked only at the drill step
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.model_step = 0  # the step the denoiser's next call belongs to
        self.thread = threading.get_ident()
        self.handle = None
        if drill.mode == "model":
            self.handle = pipe.transformer.register_forward_hook(self._rewrite, with_kwargs=True)

    def _rewrite(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if threading.get_ident() != self.thread or self.model_step < self.drill.step:
            return output
        v = output[0] if isinstance(output, tuple) else output.sample
        sigma = schedule(self.pipe)[self.model_step]
        x_t = self.unpack(kwargs["hidden_states"], self.pipe).float()
        faulty_v = self.drill.predict(x_t, self.unpack(v, self.pipe).float(), sigma, self.generator)
        faulty = self.family.to_pipeline(faulty_v.to(v.dtype))
        if isinstance(output, tuple):
            return (faulty, *output[1:])
        output.sample = faulty
        return output

    def callback_fn(self, pipe: Pipeline, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.model_step = step + 1
        latents = kwargs["latents"]
        if self.drill.mode == "step" and step == self.drill.step:
            sigma, sigma_next = schedule(pipe)[step : step + 2]
            current = self.unpack(latents, pipe)
            x0_hat = denoised_estimate(self.unpack(self.previous, pipe), current, sigma, sigma_next)
            shift = x0_to_latent_delta(self.drill.delta(x0_hat, self.generator), sigma, sigma_next)
            latents = self.family.to_pipeline((current.float() + shift).to(current.dtype))
            kwargs = {**kwargs, "latents": latents}
        self.previous = latents
        return kwargs

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class GuardCallback(_LatentsCallback):
    """Scores every step with a RequestGuard (built at step 0, when the schedule is known), with the
    step's attention-probe values when `attention` gives them (attention_probes.Recording.take). Batch
    element i leaves the run when it aborts or `should_stop(i)` says its caller stopped it:
    `on_leave(i, latents)` answers it at once, and it gets no more `on_step` calls. A leaver stays in
    the batch, masked (its latents keep being denoised and are discarded), so the others' results do
    not change; the pipeline is interrupted once no element is left."""

    def __init__(
        self,
        family: FamilyOps,
        height: int,
        width: int,
        make_guard: Callable[[list[float]], RequestGuard],
        should_stop: Callable[[int], bool] | None = None,
        on_step: Callable[[int, StepVerdict], None] | None = None,
        on_leave: Callable[[int, torch.Tensor], None] | None = None,
        attention: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        super().__init__(family, height, width)
        self.make_guard = make_guard
        self.should_stop, self.on_step, self.on_leave = should_stop, on_step, on_leave
        self.attention = attention
        self.guard: RequestGuard | None = None
        self.active: list[int] = []

    def callback_fn(self, pipe: Pipeline, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.guard is None:
            self.guard = self.make_guard(schedule(pipe))
            self.active = list(range(self.guard.batch))
        latents = self.unpack(kwargs["latents"], pipe)
        verdicts = self.guard.check(step, latents, self.attention() if self.attention else None)
        for i in list(self.active):
            if self.on_step is not None:
                self.on_step(i, verdicts[i])
            if verdicts[i].abort or (self.should_stop is not None and self.should_stop(i)):
                self.active.remove(i)
                if self.on_leave is not None:
                    self.on_leave(i, latents[i : i + 1])
        if not self.active:
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
