"""checkerboard: 2 x 2-periodic multiplicative modulation of the denoised estimate.

Transposed-convolution and patch un-embedding artifacts (Odena 2016; Durall 2020) multiply the
output by a pattern that repeats every two pixels. On broadband content that does not make an
isolated spectral spike (spectral_residual misses it) but a replica of the whole spectrum mirrored
about Nyquist, which is an energy imbalance between the 2 x 2 polyphase components
(`TrajectoryStats.phase_imbalance`, about 2a for a modulation x (1 + a s)). Feature: its log;
higher is riskier; channels averaged, since such artifacts come from shared layers.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class Checkerboard(Detector):
    name = "checkerboard"
    direction = 1
    reduce = "mean"

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return torch.log(stats.phase_imbalance.double().clamp_min(1e-12))
