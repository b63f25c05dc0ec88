"""latent_variance: per-channel variance of x0_hat outside the per-step envelope, either way.

Collapse (mode collapse, over-regularised LoRA) shrinks it and explosion (CFG blow-up, fp16
overflow) inflates it, so the feature is log-variance and the score two-sided. Under rectified flow
Var[x_t] ~ (1 - t)^2 Var[x0] + t^2; x0_hat removes the t^2 noise term, so its envelope is flat
in t for a healthy model, and the fitted per-step envelope is what the model actually does.
The worst channel counts: one exploding channel is already a failure.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class LatentVariance(Detector):
    name = "latent_variance"
    direction = 0
    reduce = "max"

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return torch.log(stats.var.double().clamp_min(1e-30))
