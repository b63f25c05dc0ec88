"""`trajectory_stats` straight from the definitions, one plane at a time: the oracle and the baseline.

In float64 it is the oracle every backend is tested against; in float32 it is the op-by-op,
per-channel eager baseline that `benchmarks/bench_kernels.py` times the fast paths against.
Nothing here is tuned: full `fft2`, `torch.roll` for the periodic 3x3 box, one mask per band.
"""

from __future__ import annotations

import math

import torch

from latentguard.kernels.stats import (
    EPS_ABS,
    EPS_REL,
    LATENT_FIELDS,
    PARITY_PATTERNS,
    RADIAL_BINS,
    TrajectoryStats,
    check_shape,
    radial_bands,
)


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, 0.0)


def _power(x: torch.Tensor) -> torch.Tensor:
    """|fft2(x - mean)|^2 of a plane whose non-finite values read as 0."""
    x = _finite(x)
    return torch.fft.fft2(x - x.mean()).abs() ** 2


def _bands(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(high-frequency mask, radial bin) over the full spectrum."""
    ky = torch.minimum(torch.arange(h), h - torch.arange(h)).to(device)
    kx = torch.minimum(torch.arange(w), w - torch.arange(w)).to(device)
    return radial_bands(ky[:, None], kx[None, :], h, w)


def _hf_flatness(power: torch.Tensor) -> torch.Tensor:
    """Geometric over arithmetic mean of the power in the band r >= HF_CUTOFF (0 without one)."""
    h, w = power.shape
    hf = _bands(h, w, power.device)[0]
    if not bool(hf.any()):
        return torch.zeros((), dtype=power.dtype)
    eps = EPS_REL * power.sum().clamp_min(EPS_ABS) / (h * w) + EPS_ABS
    return torch.exp(torch.log(power[hf] + eps).mean()) / (power[hf].mean() + eps)


def _crest(x: torch.Tensor) -> torch.Tensor:
    """max |x - mean| / std of a plane whose non-finite values read as 0."""
    centred = _finite(x) - _finite(x).mean()
    return centred.abs().max() / (centred.square().mean() + EPS_ABS).sqrt()


def isolation_map(x: torch.Tensor) -> torch.Tensor:
    """|D - mean D| / std D for a plane whose non-finite values read as 0, D = x - the mean of its
    8 neighbours, the plane's edges replicated outwards."""
    h, w = x.shape
    x = _finite(x)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    neighbours = sum(
        x[(rows + dy).clamp(0, h - 1)][:, (cols + dx).clamp(0, w - 1)]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    )
    d = x - neighbours / 8
    centred = d - d.mean()
    return centred.abs() / (centred.square().mean() + EPS_ABS).sqrt()


def _phase_contrast(x: torch.Tensor) -> torch.Tensor:
    """[3] signed contrasts of the 2 x 2 phase means of (x - mean)^2, over their sum (finite x)."""
    sq = (x - x.mean()).square()
    zero = torch.zeros((), dtype=x.dtype)
    phases = torch.stack(
        [sq[a::2, b::2].mean() if sq[a::2, b::2].numel() else zero for a in (0, 1) for b in (0, 1)]
    )
    return torch.tensor(PARITY_PATTERNS, dtype=x.dtype) @ phases / phases.sum().clamp_min(EPS_ABS)


def _plane_stats(x: torch.Tensor, previous: torch.Tensor) -> list[torch.Tensor]:
    h, w = x.shape
    change = x - previous  # non-finite differences read as 0, as in x itself
    finite = torch.isfinite(x)
    x = torch.where(finite, x, 0.0)
    mean = x.mean()
    centred = x - mean
    power = _power(x)
    fy = torch.fft.fftfreq(h, dtype=x.dtype, device=x.device)
    fx = torch.fft.fftfreq(w, dtype=x.dtype, device=x.device)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    hf, bins = _bands(h, w, x.device)
    total = power.sum().clamp_min(EPS_ABS)
    log_amp = 0.5 * torch.log(power + EPS_REL * total / (h * w) + EPS_ABS)
    log_amp[0, 0] = (log_amp.sum() - log_amp[0, 0]) / max(h * w - 1, 1)  # mean removal zeroed DC
    box = sum(torch.roll(log_amp, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    residual = (log_amp - box).masked_fill(~hf, -math.inf).flatten()
    peak = residual.argmax()
    has_band = bool(hf.any())
    profile = torch.stack([power[bins == k].sum() for k in range(RADIAL_BINS)]) / total
    zero = torch.zeros((), dtype=x.dtype)
    sq = centred.square()
    var = sq.mean()
    isolation = isolation_map(x).flatten()
    return [
        mean,
        var,
        power[hf].sum() / total,
        residual[peak] if has_band else zero,
        radius.flatten()[peak] if has_band else zero,
        profile,
        (~finite).sum(),
        _phase_contrast(x),
        _hf_flatness(power),
        _hf_flatness(_power(change)),
        _crest(x),
        _crest(change),
        sq.square().mean() / (var.square() + EPS_ABS),
        isolation.max(),
        isolation.argmax().to(x.dtype),
        _phase_contrast(_finite(change)),
    ]


def trajectory_stats_oracle(
    x: torch.Tensor, dtype: torch.dtype = torch.float64, previous: torch.Tensor | None = None
) -> TrajectoryStats:
    """Per-plane loop over a [B, C, H, W] tensor, computed in `dtype`; `previous` as in dispatch."""
    check_shape(tuple(x.shape))
    b, c = x.shape[:2]
    prev = torch.zeros_like(x) if previous is None else previous
    planes = [_plane_stats(x[i, j].to(dtype), prev[i, j].to(dtype)) for i in range(b) for j in range(c)]
    stacked = {n: torch.stack([p[k] for p in planes]) for k, n in enumerate(LATENT_FIELDS)}
    return TrajectoryStats(**{n: v.reshape(b, c, *v.shape[1:]) for n, v in stacked.items()})
