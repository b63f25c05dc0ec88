"""checkerboard: 2 x 2-periodic multiplicative modulation of the denoised estimate.

Transposed-convolution and patch un-embedding artifacts (Odena 2016; Durall 2020) multiply the
output by a pattern that repeats every two pixels. On broadband content that does not make an
isolated spectral spike (spectral_residual misses it) but a replica of the whole spectrum mirrored
about Nyquist, which is an energy contrast between the 2 x 2 polyphase components
(`TrajectoryStats.phase_contrast`, about 2a for a modulation x (1 + a s)).

Feature: the signed contrast of each (channel, parity pattern), each with its own per-step envelope;
either sign is risky (the pattern may sit on either phase). Combined as the channel mean of |z| per
pattern (such artifacts come from shared layers, so they show in every channel), then the worst
pattern. One envelope per pattern matters: the row and column patterns carry the model's own 2 x 2
patch structure, which varies a lot from prompt to prompt, while a benign checkerboard contrast is
near zero; a max over the raw patterns (`phase_imbalance`) drowns the checkerboard in that spread
(evaluation/onset-separability.md).
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats
from latentguard.kernels.stats import PARITY_PATTERNS


class Checkerboard(Detector):
    name = "checkerboard"
    direction = 0
    reduce = "mean"
    parts = len(PARITY_PATTERNS)

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return stats.phase_contrast.double().flatten(-2)  # [..., C * 3], channel-major
