"""stuck_value: one value alone in space, at the same place in every channel.

A stuck or overflowing token of the denoiser writes an extreme value into every channel of its
patch at once. Image content is smooth in the latent (a small bright object spans several values
and shows in a few channels), so what sets a stuck value apart is not its height (`tail` sees that,
late: a scene's own extremes hide it) but that it is isolated from its 8 neighbours in every channel
at the same pixel. Per channel the kernel gives the most isolated value's isolation and position
(`TrajectoryStats.isolation`, `isolation_at`); the feature is their agreement:

    max over pixels p of  sum over the channels c whose most isolated value sits at p of
                          log max(isolation_c, 1),  divided by the number of channels

On tiny-sd3 a median 2.2-2.5 at the onset step of spike 0.3 (a value of 12 std in every channel),
against a 99.9th percentile of 1.2-1.3 over 2000 benign runs at the same steps: benign channels'
most isolated values mostly sit apart (evaluation/spike_candidates.py; the README has the other
candidates). One value per sample, with its per-step envelope. Higher is riskier.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


def agreement(isolation: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """[..., C] isolation and place -> [...]: the largest sum of log isolation over the channels
    whose most isolated value sits at one pixel, / C."""
    weight = torch.log(isolation.double().clamp_min(1.0))
    same = (at.unsqueeze(-1) == at.unsqueeze(-2)).double()  # [..., C, C]: channels at one pixel
    return (same * weight.unsqueeze(-2)).sum(dim=-1).amax(dim=-1) / at.shape[-1]


class StuckValue(Detector):
    name = "stuck_value"
    direction = 1

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return agreement(stats.isolation, stats.isolation_at).unsqueeze(-1)  # [..., 1]
