"""Synthetic benign trajectory batches: stats fields [N, S, C] with a per-step drift, no pipeline.

Most detectors here read one shared factor per run and step (as the spectral detectors of a real
model read one spectrum), so their flags are strongly correlated; tail, spectral_shape and
stuck_value read independent noise. A union-rate calibration that ignores the correlation (fpr / k
each) or assumes none (fpr each) misses the target on this data.
"""

import torch

from latentguard.detectors import CalibrationProfile
from latentguard.kernels import RADIAL_BINS, TrajectoryStats

SIGMAS = [1.0, 0.9, 0.75, 0.6, 0.45, 0.3, 0.15, 0.05, 0.0]
STEPS = len(SIGMAS) - 1


BLOCKS = 3  # attention-probed blocks


def benign(n: int, seed: int, channels: int = 4, attention: bool = True) -> TrajectoryStats:
    g = torch.Generator().manual_seed(seed)
    shape = (n, STEPS, channels)
    drift = torch.linspace(0, 0.3, STEPS)[None, :, None]
    shared = torch.randn(n, STEPS, 1, generator=g).expand(shape)  # one factor per run and step
    noise = lambda scale: scale * torch.randn(shape, generator=g)  # noqa: E731

    def correlated(scale: float) -> torch.Tensor:  # risky side = high shared factor
        return scale * (shared + 0.3 * torch.randn(shape, generator=g))

    profile = torch.softmax(0.2 * torch.randn((*shape, RADIAL_BINS), generator=g), dim=-1)
    return TrajectoryStats(
        mean=noise(0.1),
        var=torch.exp(drift + correlated(0.05)),
        hf_ratio=torch.exp(-0.2 - drift - correlated(0.02)),
        sr_peak=1.5 + drift + correlated(0.1),
        sr_freq=torch.full(shape, 0.5),
        radial_profile=profile,
        nonfinite=torch.zeros(shape, dtype=torch.long),
        phase_contrast=torch.exp(-3.0 + correlated(0.1))[..., None] * torch.tensor([1.0, -1.0, 1.0]),
        hf_flatness=torch.exp(-1.0 - drift + correlated(0.05)),
        crest=torch.exp(1.2 + noise(0.05)),
        kurtosis=3.0 + noise(0.1),
        attn_entropy=(0.9 - 0.01 * torch.randn(n, STEPS, BLOCKS, generator=g).abs()) if attention else None,
        attn_rank=torch.exp(-2.5 + 0.05 * torch.randn(n, STEPS, BLOCKS, generator=g)) if attention else None,
        change_flatness=torch.exp(-0.8 - drift + correlated(0.05)),  # last: the draws above as before
        change_crest=torch.exp(1.5 + noise(0.05)),
        isolation=torch.exp(1.8 + noise(0.1)),
        isolation_at=torch.randint(0, 64 * 64, shape, generator=g).double(),  # each channel its own place
        change_phase_contrast=correlated(0.02)[..., None] + 0.01 * torch.randn((*shape, 3), generator=g),
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
    elif name == "checkerboard":
        d["phase_contrast"][:, step, :, 0] *= 5.0
    elif name == "grain":
        d["hf_flatness"][:, step] *= 2.0
    elif name == "spectral_shape":
        d["radial_profile"][:, step, :, -1] *= 4.0
    elif name == "tail":
        d["crest"][:, step, 0] *= 4.0
    elif name == "phase_gain":  # every channel's change: the checkerboard contrast up 0.05
        d["change_phase_contrast"][:, step, :, 0] += 0.05
    elif name == "stuck_value":  # one place in every channel
        d["isolation_at"][:, step] = d["isolation_at"][:, step, :1]
    elif name == "attention_entropy":
        d["attn_entropy"][:, step, 1] *= 0.8
    elif name == "attention_rank":
        d["attn_rank"][:, step, 0] *= 0.5
    return TrajectoryStats(**d)


def profile_of(detectors: dict, report) -> CalibrationProfile:
    """A profile of calibrated synthetic detectors (64 x 64, the synthetic schedule)."""
    return CalibrationProfile(
        deployment="x",
        fingerprint="abc",
        steps=STEPS,
        height=64,
        width=64,
        guidance_scale=1.0,
        sigmas=SIGMAS,
        detectors={n: d.state_dict() for n, d in detectors.items()},
        report=report,
    )
