"""Trajectory monitor: turns each denoising step's latents into x0_hat statistics.

Flow matching with an Euler scheduler steps x_{i+1} = x_i + (s_{i+1} - s_i) v_i, and the model's
denoised estimate is x0_hat_i = x_i - s_i v_i. The pipeline's step callback exposes only the latents,
so v_i is recovered from consecutive latents: v_i = (x_{i+1} - x_i) / (s_{i+1} - s_i).

Each step's statistics also read the previous step's x0_hat (`change_flatness`; the initial
latents stand in for it at step 0). Per-request state is the previous latents and x0_hat (two
tensors, replaced every step) and the per-step statistics ([B, C] tensors per field):
O(steps x channels), never the trajectory itself.
"""

from __future__ import annotations

import dataclasses

import torch

from latentguard.kernels import Backend, TrajectoryStats, trajectory_stats


def denoised_estimate(
    x_t: torch.Tensor, x_next: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """x0_hat at noise level `sigma` from one Euler step to `sigma_next` (flow matching):
    x_t - sigma v = x_t + w (x_next - x_t), w = sigma / (sigma - sigma_next), in one pass (lerp)."""
    return torch.lerp(x_t.float(), x_next.float(), sigma / (sigma - sigma_next))


def x0_to_latent_delta(delta_x0: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """The change of x_{i+1} that moves this step's x0_hat by `delta_x0` (inverse of the above)."""
    return delta_x0 * ((sigma - sigma_next) / sigma)


class TrajectoryMonitor:
    """Feeds one request's (or one batch's) steps through `trajectory_stats` on x0_hat."""

    def __init__(self, initial_latents: torch.Tensor, sigmas: list[float], backend: Backend = "auto"):
        if initial_latents.ndim != 4:
            raise ValueError("initial latents must be [B, C, H, W]")
        self.sigmas = [float(s) for s in sigmas]
        self.backend: Backend = backend
        self.initial = initial_latents
        self._prev = initial_latents
        self._prev_x0 = initial_latents.float()
        self.series: list[TrajectoryStats] = []

    @property
    def steps_seen(self) -> int:
        return len(self.series)

    @property
    def latest(self) -> torch.Tensor:
        """The latents of the last step observed (the initial latents before the first)."""
        return self._prev

    @property
    def latest_x0(self) -> torch.Tensor:
        """x0_hat of the last step observed (float32; the initial latents before the first)."""
        return self._prev_x0

    def x0_hat(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        return denoised_estimate(self._prev, latents, self.sigmas[step], self.sigmas[step + 1])

    def observe(
        self, step: int, latents: torch.Tensor, attention: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> TrajectoryStats:
        """Record the step that produced `latents` (the pipeline's x_{step+1}), with the attention
        probes' (entropy, rank) of that step when given."""
        if step != self.steps_seen:
            raise ValueError(f"steps must arrive in order: expected {self.steps_seen}, got {step}")
        x0 = self.x0_hat(step, latents)
        stats = trajectory_stats(x0, backend=self.backend, previous=self._prev_x0).to("cpu")
        if attention is not None:
            stats = dataclasses.replace(stats, attn_entropy=attention[0], attn_rank=attention[1])
        self._prev, self._prev_x0 = latents, x0
        self.series.append(stats)
        return stats

    def stacked(self) -> TrajectoryStats:
        """All steps so far, fields [B, S, ...]."""
        return TrajectoryStats.stack(self.series, dim=1)
