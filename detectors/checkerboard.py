"""checkerboard: 2 x 2-periodic multiplicative modulation of the denoised estimate.

Transposed-convolution and patch un-embedding artifacts (Odena 2016; Durall 2020) multiply the
output by a pattern that repeats every two pixels. On broadband content that does not make an
isolated spectral spike (spectral_residual misses it) but a replica of the whole spectrum mirrored
about Nyquist, which is an energy contrast between the 2 x 2 polyphase components
(`TrajectoryStats.phase_contrast`, about 2a for a modulation x (1 + a s)).

Feature: the signed contrast of each (channel, parity pattern), each with its own per-step envelope.
Two part scores per pattern, each with its own step normalisation, the worst of the six counting:

    incoherent  channel mean of |z|: a pattern in every channel, each on its own phase (a fault in
                per-channel weights, e.g. of the patch un-embedding)
    coherent    |channel mean of z|: the same phase in every channel (a fault in a layer all
                channels share). Benign contrasts differ in sign from channel to channel and cancel
                in the mean, so this part sees a shared pattern with far less benign spread; on
                tiny-sd3-int4, whose quantised weights leave per-channel contrasts of their own, the
                incoherent part alone flags checkerboard 0.1 late (evaluation/onset-separability.md)

Either sign is risky (the pattern may sit on either phase). One envelope per pattern matters: the
row and column patterns carry the model's own 2 x 2 patch structure, which varies a lot from prompt
to prompt, while a benign checkerboard contrast is near zero; a max over the raw patterns
(`phase_imbalance`) drowns the checkerboard in that spread (evaluation/onset-separability.md).
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats
from latentguard.kernels.stats import PARITY_PATTERNS


class Checkerboard(Detector):
    name = "checkerboard"
    direction = 1  # signed z: combine takes the magnitudes
    parts = len(PARITY_PATTERNS)

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return stats.phase_contrast.double().flatten(-2)  # [..., C * 3], channel-major

    def combine(self, z: torch.Tensor) -> torch.Tensor:
        z = z.unflatten(-1, (-1, self.parts))  # [..., C, patterns]
        return torch.cat([z.abs().mean(dim=-2), z.mean(dim=-2).abs()], dim=-1)  # incoherent, coherent
