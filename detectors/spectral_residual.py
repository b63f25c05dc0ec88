"""spectral_residual: periodic (aliasing, checkerboard, grid) artifacts in the denoised estimate.

Feature: the peak of the Hou & Zhang (2007) spectral residual of the log amplitude spectrum in the
high-frequency band (`TrajectoryStats.sr_peak`). Healthy denoised latents have smooth spectra;
transposed-convolution checkerboards and grid artifacts put isolated spikes at fixed frequencies
(Durall 2020, Frank 2020, Corvi 2023). Higher is riskier; channels are averaged, since such
artifacts come from shared layers and show in every channel.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class SpectralResidual(Detector):
    name = "spectral_residual"
    direction = 1
    reduce = "mean"

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return stats.sr_peak
