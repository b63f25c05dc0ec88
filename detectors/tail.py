"""tail: heavy tails in the denoised estimate, the finite prelude of an fp16 overflow.

Before activations overflow to Inf (non_finite), a few of them grow far beyond the rest: the crest
factor max |x - mean| / std rises while the variance barely moves. Feature: log crest factor
(`TrajectoryStats.crest`); higher is riskier; the worst channel counts, since one is enough.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class Tail(Detector):
    name = "tail"
    direction = 1
    reduce = "max"

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return torch.log(stats.crest.double().clamp_min(1e-12))
