"""Sidecar mode: an Inspect session scores the latents an external pipeline streams in, step by step."""

from __future__ import annotations

import time

import torch

from latentguard.detectors import RequestGuard, StepVerdict
from latentguard.server.errors import InvalidArgument
from latentguard.server.pipelines.deployments import Deployment
from latentguard.server.pipelines.runner import build_report
from latentguard.server.report import Report


class InspectSession:
    """Sidecar mode: scores latents an external pipeline streams in, step by step."""

    def __init__(self, dep: Deployment, sigmas: list[float], initial: torch.Tensor):
        if len(sigmas) < 2:
            raise InvalidArgument("the first Inspect frame must carry the sigma schedule (steps + 1 values)")
        self.dep = dep
        self.started = time.perf_counter()
        self.guard = RequestGuard(dep.detectors, dep.policies, initial, sigmas)
        self.expected_shape = tuple(initial.shape)

    def step(self, step: int, latents: torch.Tensor) -> StepVerdict:
        if step != self.guard.steps_run:
            raise InvalidArgument(
                f"Inspect frames must arrive in step order: expected {self.guard.steps_run}, got {step}"
            )
        if step >= len(self.guard.sigmas) - 1:
            raise InvalidArgument(f"step {step} is beyond the schedule ({len(self.guard.sigmas) - 1} steps)")
        if tuple(latents.shape) != self.expected_shape:
            raise InvalidArgument(
                f"latents shape {tuple(latents.shape)} differs from the initial {self.expected_shape}"
            )
        return self.guard.check(step, latents)[0]

    def report(self) -> Report:
        steps = len(self.guard.sigmas) - 1
        return build_report(self.dep, self.guard, 0, steps, "", time.perf_counter() - self.started, False)
