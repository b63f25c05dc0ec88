"""phase_gain: the log-contrast feature and the whitening its envelope stores."""

import torch

from latentguard.detectors import phase_gain
from latentguard.detectors.phase_gain import PhaseGain, log_contrasts
from latentguard.kernels import trajectory_stats
from latentguard.kernels.stats import PARITY_PATTERNS

from .synthetic import SIGMAS, benign


def test_log_contrasts_are_the_phase_log_energies_without_their_mean():
    """From the energy contrasts the kernel returns, the four phase energies come back exactly; the
    feature is their logs with the mean removed, in the three sign patterns."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 16, 16, generator=g) * torch.tensor([[1.3, 1.0], [0.8, 1.1]]).repeat(8, 8)
    stats = trajectory_stats(x.double(), backend="reference")
    centred = x.double() - x.double().mean(dim=(-2, -1), keepdim=True)
    energy = torch.stack(
        [centred[..., a::2, b::2].square().mean((-2, -1)) for a in (0, 1) for b in (0, 1)], -1
    )
    logs = energy.log() - energy.log().mean(-1, keepdim=True)
    signs = torch.tensor(PARITY_PATTERNS, dtype=torch.float64)
    want = logs @ signs.t() / 4
    torch.testing.assert_close(log_contrasts(stats.phase_contrast.double()), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(want @ signs, logs)  # nothing lost: the three contrasts span the rest


def test_both_parts_are_chi_square_with_three_degrees_of_freedom_on_benign_runs(monkeypatch):
    """The stored map whitens: on the runs it was fitted on (without shrinkage), the shared part (one
    3-vector from all channels) and the per-channel part (the channel mean of each channel's T^2)
    both average 3, the mean of a chi-square with 3 degrees of freedom, at every step. A map that
    missed the covariance (the channels here share one factor, the patterns of a channel more) would
    not."""
    monkeypatch.setattr(phase_gain, "SHRINKAGE", 0.0)
    fit = benign(3000, 40, channels=6)
    det = PhaseGain().fit_envelope(fit, SIGMAS)
    loc, scale = det._envelope(
        torch.tensor(SIGMAS[: fit.mean.shape[1]], dtype=torch.float64).expand(3000, -1)
    )[:2]
    parts = det._part_scores(fit, loc, scale)  # [N, S, 2]
    torch.testing.assert_close(parts.mean(0), torch.full_like(parts.mean(0), 3.0), rtol=0.02, atol=0)
    shared_var = parts[..., 0].var(0)  # chi-square(3): variance 6 (a map that kept the within-channel
    assert ((shared_var > 5.0) & (shared_var < 7.5)).all(), shared_var  # correlation would be far off)
