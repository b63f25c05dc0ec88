"""Synthetic benign trajectory batches: stats fields [N, S, C] with a per-step drift, no pipeline."""

import torch

from latentguard.kernels import RADIAL_BINS, TrajectoryStats

SIGMAS = [1.0, 0.9, 0.75, 0.6, 0.45, 0.3, 0.15, 0.05, 0.0]
STEPS = len(SIGMAS) - 1


def benign(n: int, seed: int, channels: int = 4) -> TrajectoryStats:
    g = torch.Generator().manual_seed(seed)
    shape = (n, STEPS, channels)
    drift = torch.linspace(0, 0.3, STEPS)[None, :, None]
    noise = lambda scale: scale * torch.randn(shape, generator=g)  # noqa: E731
    return TrajectoryStats(
        mean=noise(0.1),
        var=torch.exp(drift + noise(0.05)),
        hf_ratio=torch.exp(-0.2 - drift + noise(0.02)),
        sr_peak=1.5 + drift + noise(0.1),
        sr_freq=torch.full(shape, 0.5),
        radial_profile=torch.full((*shape, RADIAL_BINS), 1 / RADIAL_BINS),
        nonfinite=torch.zeros(shape, dtype=torch.long),
    )


def perturb(stats: TrajectoryStats, name: str, step: int) -> TrajectoryStats:
    """The failure each detector exists for, at one step."""
    d = {k: v.clone() for k, v in stats.as_dict().items()}
    if name == "spectral_residual":
        d["sr_peak"][:, step] += 2.0
    elif name == "latent_variance":
        d["var"][:, step] *= 0.2
    elif name == "over_smoothing":
        d["hf_ratio"][:, step] *= 0.5
    elif name == "non_finite":
        d["nonfinite"][:, step, 0] = 3
    return TrajectoryStats(**d)
