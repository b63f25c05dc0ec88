"""grain: broadband noise in the denoised estimate, the excess side that over_smoothing does not watch.

A noisy denoiser (a bad adapter, a numerics problem) leaves white-ish noise in x0_hat. Healthy
estimates have a structured, falling spectrum in the high band; noise flattens it. Two parts, each
the log spectral flatness of the band r >= HF_CUTOFF (geometric over arithmetic mean of power, about
0.56 for white noise) with its own per-step envelope, channels averaged, the worse part counting:

    hf_flatness      of x0_hat itself: noise that stays from step to step (a fixed pattern)
    change_flatness  of x0_hat minus the previous step's: image content changes smoothly between
                     steps, noise drawn afresh at each denoiser call does not, so it shows at the
                     step it starts even where the scene's own fine detail hides it in x0_hat
                     (evaluation/onset-separability.md)

Higher is riskier. A separate detector rather than a two-sided over_smoothing: flatness does not
depend on how much high-frequency content the scene has (stripes, edges), which the energy ratio
does, and each side gets its own threshold and its own name on the dashboard.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats


class Grain(Detector):
    name = "grain"
    direction = 1
    reduce = "mean"
    parts = 2

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        both = torch.stack([stats.hf_flatness, stats.change_flatness], dim=-1)  # [..., C, 2]
        return torch.log(both.double().clamp_min(1e-12)).flatten(-2)
