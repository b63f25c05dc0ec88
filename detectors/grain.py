"""grain: broadband noise in the denoised estimate, the excess side that over_smoothing does not watch.

A noisy denoiser (a bad adapter, a numerics problem) leaves white-ish noise in x0_hat. Healthy
estimates have a structured, falling spectrum in the high band; noise flattens it. Feature: the log
spectral flatness of the band r >= HF_CUTOFF (`TrajectoryStats.hf_flatness`: geometric over
arithmetic mean of power, about 0.56 for white noise); higher is riskier; channels averaged.

A separate detector rather than a two-sided over_smoothing: flatness does not depend on how much
high-frequency content the scene has (stripes, edges), which the energy ratio does, and each side
gets its own threshold and its own name on the dashboard.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class Grain(Detector):
    name = "grain"
    direction = 1
    reduce = "mean"

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return torch.log(stats.hf_flatness.double().clamp_min(1e-12))
