"""spectral_shape: the whole radial power profile against its per-step envelope (Durall 2020's
azimuthal integral).

Feature: the log fraction of spectral energy in each of the RADIAL_BINS radial bins, averaged over
channels (the shape of the mean spectrum); every bin is a two-sided z-score against its own
envelope and the worst bin counts. It sees what the single-number detectors average away: energy
moved between bands (blur, replicas, grain, a scheduler or dtype change shifting the spectrum).
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class SpectralShape(Detector):
    name = "spectral_shape"
    direction = 0
    reduce = "max"

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return torch.log(stats.radial_profile.double().clamp_min(1e-12)).mean(dim=-2)
