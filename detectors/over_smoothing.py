"""over_smoothing: high-frequency energy of x0_hat falling below its per-step envelope.

Diffusion models already under-produce high frequencies; quantization and bad LoRAs make it worse
(Ricker 2024). Feature: log of the high-frequency energy ratio; lower is riskier; channels are
averaged, since blur is a spatial, cross-channel failure.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class OverSmoothing(Detector):
    name = "over_smoothing"
    direction = -1
    reduce = "mean"

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return torch.log(stats.hf_ratio.double().clamp_min(1e-30))
