"""A request's whole denoising trajectory, kept only when asked for (A/B comparisons, shadow mode),
and the divergence between two of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentguard.detectors import denoised_estimate


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

    def element(self, i: int) -> RecordedTrajectory:
        """Batch element i's trajectory (a batched run records every element)."""
        return RecordedTrajectory(self.sigmas, [t[i : i + 1] for t in self.latents])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents)


def relative_l2(candidate: torch.Tensor, baseline: torch.Tensor) -> float:
    """||c - b|| / ||b||."""
    return float((candidate.double() - baseline.double()).norm() / baseline.double().norm().clamp_min(1e-12))
