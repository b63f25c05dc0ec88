"""Sidecar mode: an Inspect session scores the latents an external pipeline streams in, step by step."""

from __future__ import annotations

import itertools
import math
import time

import torch

from latentguard.detectors import RequestGuard, StepVerdict
from latentguard.detectors.registry import latent_only
from latentguard.server.config import Limits
from latentguard.server.errors import InvalidArgument
from latentguard.server.evidence.bundle import Snapshots, snapshots_of
from latentguard.server.pipelines.deployments import Deployment
from latentguard.server.pipelines.runner import build_report
from latentguard.server.report import Report


def check_schedule(sigmas: list[float], max_steps: int) -> None:
    if not 2 <= len(sigmas) <= max_steps + 1:
        raise InvalidArgument(
            f"the first Inspect frame must carry the sigma schedule: steps + 1 values, steps in "
            f"[1, {max_steps}]; got {len(sigmas)} values"
        )
    if not all(math.isfinite(x) and x >= 0 for x in sigmas) or any(
        a <= b for a, b in itertools.pairwise(sigmas)
    ):
        raise InvalidArgument("sigmas must be finite, non-negative and strictly decreasing")


class InspectSession:
    """Sidecar mode: scores latents an external pipeline streams in, step by step."""

    MAX_BATCH = 8

    def __init__(self, dep: Deployment, sigmas: list[float], initial: torch.Tensor, limits: Limits):
        check_schedule(sigmas, limits.max_steps)
        channels = dep.family.latent_shape(dep.pipe, 1, 8, 8)[1]
        side = limits.max_side // int(dep.pipe.vae_scale_factor)
        b, c, h, w = initial.shape
        if c != channels or not 1 <= b <= self.MAX_BATCH or max(h, w) > side:
            raise InvalidArgument(
                f"latents must be [B <= {self.MAX_BATCH}, {channels}, H <= {side}, W <= {side}] for "
                f"{dep.name}, got {list(initial.shape)}"
            )
        self.dep = dep
        self.started = time.perf_counter()
        # the sidecar sees latents only: the detectors that read the attention probes cannot run
        keep = dep.config.evidence is not None
        self.guard = RequestGuard(
            latent_only(dep.detectors), dep.policies, initial, sigmas, keep_flagged_x0=keep
        )
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

    def snapshots(self) -> Snapshots | None:
        """x0_hat pictures for the evidence bundle, when the deployment keeps evidence."""
        if self.dep.config.evidence is None or self.guard.steps_run == 0:
            return None
        monitor = self.guard.monitor
        return snapshots_of(self.guard.flagged_x0, 0, monitor.steps_seen - 1, monitor.latest_x0)

    def report(self) -> Report:
        steps = len(self.guard.sigmas) - 1
        return build_report(self.dep, self.guard, 0, 0, steps, "", time.perf_counter() - self.started, False)
