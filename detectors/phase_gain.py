"""phase_gain: a 2 x 2 gain pattern in the denoiser's output, seen in the step-to-step change.

An output projection whose weights differ per patch position (a damaged or badly quantised
`proj_out`, a patchify/unpatchify mismatch, the uneven overlap of a stride-2 transposed convolution)
multiplies the denoiser's prediction by a pattern that repeats every two latent pixels. Each 2 x 2
phase's *energy* changes while its signed mean stays about zero. x0_hat itself is mostly the scene,
whose own 2 x 2 structure (the model's patch grid) varies from prompt to prompt and hides a 10% gain
on one phase (`checkerboard` reads x0_hat's contrasts, each on its own: AUROC 0.6-0.75 there); the
change x0_hat - previous is what the faulty prediction moves at every step, so the pattern sits in
it at full strength (`TrajectoryStats.change_phase_contrast`; study: evaluation/phase_gain_candidates.py).

Feature: per channel, the three log-energy contrasts of the change's 2 x 2 phases (the four phase
log-energies with their mean removed; pattern-agnostic: any gain pattern is some mix of the three).
The envelope is a per-step mean and covariance of all C x 3 of them on benign runs (the model's own
patch structure is in it, correlations across channels included), and two part scores:

    shared       one 3-vector u common to all channels, its generalised-least-squares estimate from
                 the C x 3 deviations and Hotelling's T^2 = u' (A' S^-1 A) u (3 degrees of freedom;
                 A stacks C identities, S the step's covariance): a pattern that a layer all channels
                 share puts on every channel. Channels that vary more from prompt to prompt count less.
    per_channel  the channel mean of each channel's own Hotelling T^2 (3 degrees of freedom): a
                 pattern on each channel's own phases

Both are linear maps of the deviation followed by a sum of squares: the envelope stores the one
[3 + C x 3, C x 3] matrix per step in place of the base class's per-feature scale (interpolated in
sigma like every envelope table, saved in the profile).
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats
from latentguard.kernels.stats import PARITY_PATTERNS

#: the covariance is shrunk toward its diagonal by this much (C x 3 = 48 dimensions from a few
#: hundred runs per step; the shared part's weights would otherwise follow the sample's noise)
SHRINKAGE = 0.1
_RIDGE = 1e-12
_K = len(PARITY_PATTERNS)


def log_contrasts(contrast: torch.Tensor) -> torch.Tensor:
    """[..., 3] log-energy contrasts from phase_contrast [..., 3] (energy contrasts over their sum).

    The four phase energies over their sum are e = (1 + c P) / 4 (P the 3 x 4 sign patterns, whose
    rows and the ones vector are orthogonal); the result is P log(e) / 4, the log-energies with
    their mean removed, in the same three patterns."""
    signs = torch.tensor(PARITY_PATTERNS, dtype=contrast.dtype, device=contrast.device)
    energy = ((1 + contrast @ signs) / 4).clamp_min(1e-12)
    return energy.log() @ signs.t() / 4


class PhaseGain(Detector):
    name = "phase_gain"
    direction = 1
    parts = 2  # shared, per_channel

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return log_contrasts(stats.change_phase_contrast.double()).flatten(-2)  # [..., C * 3]

    def combine(self, z: torch.Tensor) -> torch.Tensor:
        shared, per_channel = z[..., :_K], z[..., _K:].unflatten(-1, (-1, _K))
        return torch.stack([shared.square().sum(-1), per_channel.square().sum(-1).mean(-1)], dim=-1)

    def _part_scores(self, stats: TrajectoryStats, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        deviation = torch.nan_to_num(self.feature(stats).double() - loc, nan=0.0, posinf=1e6, neginf=-1e6)
        return self.combine(torch.einsum("...ij,...j->...i", scale, deviation))

    def fit_envelope(self, reference: TrajectoryStats, sigmas: list[float]) -> Detector:
        """loc: the per-step mean of the C x 3 features; scale: per step, the [3 + C x 3, C x 3]
        whitening map (the shared part's GLS estimate, then each channel's own whitening)."""
        s = reference.mean.shape[1]
        order = torch.argsort(torch.tensor(sigmas[:s], dtype=torch.float64))
        self._grid = torch.tensor(sigmas[:s], dtype=torch.float64)[order]
        f = self.feature(reference).double()[:, order]  # [N, S, K]
        self._loc = f.mean(dim=0)
        d = f - self._loc
        k = f.shape[-1]
        eye = torch.eye(k, dtype=f.dtype)
        cov = torch.einsum("nsk,nsl->skl", d, d) / max(f.shape[0] - 1, 1)
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
        cov = cov + _RIDGE * (1 + cov.diagonal(dim1=-2, dim2=-1).mean(-1))[:, None, None] * eye
        precision = torch.linalg.inv(cov)  # [S, K, K]
        stack = torch.eye(_K, dtype=f.dtype).repeat(k // _K, 1)  # A: [K, 3]
        information = stack.t() @ precision @ stack  # A' S^-1 A: [S, 3, 3]
        gls = torch.linalg.solve(information, stack.t() @ precision)  # u = gls d: [S, 3, K]
        shared = torch.linalg.cholesky(information).transpose(-1, -2) @ gls  # |shared d|^2 = T^2
        per_channel = torch.zeros_like(cov)  # block-diagonal: each channel's 3 x 3 whitening
        for c in range(0, k, _K):
            block = cov[:, c : c + _K, c : c + _K]
            per_channel[:, c : c + _K, c : c + _K] = torch.linalg.inv(torch.linalg.cholesky(block))
        self._scale = torch.cat([shared, per_channel], dim=1)  # [S, 3 + K, K]
        self._step_envelopes.clear()
        return self
