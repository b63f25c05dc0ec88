"""tail: heavy tails in the denoised estimate, the finite prelude of an fp16 overflow.

Before activations overflow to Inf (non_finite), a few of them grow far beyond the rest: the crest
factor max |x - mean| / std rises while the variance barely moves. Two parts, each the log crest
factor with its own per-step envelope, the worst channel counting (one is enough), the worse part
counting:

    crest         of x0_hat itself: values that have grown far beyond the rest
    change_crest  of x0_hat minus the previous step's: a value that jumps at one step. A small
                  bright object on a flat background gives x0_hat a crest of 10-20 std of its own,
                  so a stuck activation of that size hides in x0_hat's crest; the object forms
                  gradually over the steps, the stuck value appears at once (evaluation/onset-separability.md)

Higher is riskier.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class Tail(Detector):
    name = "tail"
    direction = 1
    reduce = "max"
    parts = 2

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        both = torch.stack([stats.crest, stats.change_crest], dim=-1)  # [..., C, 2]
        return torch.log(both.double().clamp_min(1e-12)).flatten(-2)
