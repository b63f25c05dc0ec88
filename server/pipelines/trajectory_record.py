"""Keeping a request's whole denoising trajectory, for A/B comparisons and shadow mode only.

The guard itself never keeps more than the previous step (detectors/trajectory.py); a recorder is a
step hook that copies each step's latents to the CPU as float32 when a caller asked for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from latentguard.detectors import RequestGuard
from latentguard.detectors.trajectory import denoised_estimate

StepHook = Callable[[int, RequestGuard], None]


@dataclass
class RecordedTrajectory:
    """latents[0] is the initial noise, latents[i + 1] the latents after step i ([B, C, H, W])."""

    sigmas: list[float]
    latents: list[torch.Tensor]

    @property
    def steps(self) -> int:
        return len(self.latents) - 1

    def x0_hat(self, step: int) -> torch.Tensor:
        return denoised_estimate(
            self.latents[step], self.latents[step + 1], self.sigmas[step], self.sigmas[step + 1]
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents)


@dataclass
class TrajectoryRecorder:
    sigmas: list[float] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, step: int, guard: RequestGuard) -> None:
        if not self.latents:
            self.sigmas = list(guard.sigmas)
            self.latents.append(guard.monitor.initial.detach().float().cpu())
        self.latents.append(guard.monitor.latest.detach().float().cpu())

    def result(self) -> RecordedTrajectory:
        return RecordedTrajectory(self.sigmas, self.latents)


def chain(*hooks: StepHook | None) -> StepHook | None:
    """One step hook that calls each given hook in order (None when there is none)."""
    active = [h for h in hooks if h is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def run_all(step: int, guard: RequestGuard) -> None:
        for hook in active:
            hook(step, guard)

    return run_all
