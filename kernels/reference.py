"""Torch reference of `trajectory_stats`: the runtime path off-GPU and the oracle for every kernel.

For x of shape [B, C, H, W] (any float dtype, read once and upcast to fp32):

    m      = mean(x)                       over finite values; non-finite values count as 0
    v      = mean((x - m)^2) = sum(P) / (HW)^2      (Parseval, from the spectrum)
    F      = rfft2(x - m)                  half spectrum, columns 0 .. W//2
    P      = |F|^2, weighted 2x on columns that stand for a conjugate pair (so sums equal fft2's)
    hf     = sum(P[r >= HF_CUTOFF]) / sum(P)      r = radial frequency in cycles/pixel
    L      = log(sqrt(P) + eps),  DC replaced by the mean log amplitude (mean removal zeroes it)
    R      = L - box3x3(L)                 box over the periodic full spectrum (Hou & Zhang 2007)
    sr     = max R over r >= HF_CUTOFF,   sr_freq its radial frequency
    prof_k = sum(P in radial bin k) / sum(P)

The 3x3 neighbourhood of a half-spectrum column 0 or W//2 reaches into the other half; by conjugate
symmetry |F[k, -j]| = |F[-k, j]|, so those columns are the neighbours mirrored in k.

Everything is batched over B x C: one rfft2, one small matmul for the band sums, a separable box sum;
no Python loop over channels.
"""

from __future__ import annotations

import functools
import math

import torch

from latentguard.kernels.stats import HF_CUTOFF, RADIAL_BINS, TrajectoryStats

_EPS_REL = 1e-10
_EPS_ABS = 1e-30


@functools.lru_cache(maxsize=32)
def spectrum_geometry(h: int, w: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(radius [H, Wr], band offset [H, Wr], band matrix [H*Wr, RADIAL_BINS + 2]).

    The band offset is 0 in the high-frequency band and -inf outside (added before the peak search).
    The band matrix maps a flattened half-spectrum power to (total, high-frequency, bins...) with
    the conjugate-pair column weights folded in.
    """
    wr = w // 2 + 1
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    col_weight = torch.full((wr,), 2.0, dtype=torch.float64)
    col_weight[0] = 1.0
    if w % 2 == 0:
        col_weight[-1] = 1.0
    weight = col_weight.expand(h, wr)
    hf = radius >= HF_CUTOFF
    bin_idx = torch.clamp((radius / (math.sqrt(0.5) / RADIAL_BINS)).floor().long(), max=RADIAL_BINS - 1)
    bands = torch.zeros(h * wr, RADIAL_BINS + 2, dtype=torch.float64)
    bands[:, 0] = weight.flatten()
    bands[:, 1] = (weight * hf).flatten()
    bands[torch.arange(h * wr), 2 + bin_idx.flatten()] = weight.flatten()
    offset = torch.where(hf, 0.0, float("-inf"))
    return radius.float().to(device), offset.float().to(device), bands.float().to(device)


def _box3x3_sum_half_spectrum(lp: torch.Tensor, w: int) -> torch.Tensor:
    """3x3 neighbourhood sum of a half-spectrum [N, H, Wr] over the periodic full spectrum."""
    h, wr = lp.shape[-2:]
    mirror = (-torch.arange(h, device=lp.device)) % h
    left = lp[:, mirror, 1:2] if wr > 1 else lp[:, mirror, 0:1]
    right = lp[:, mirror, w - wr : w - wr + 1]
    ext = torch.cat([lp[:, -1:], lp, lp[:, :1]], dim=-2)  # rows wrap
    side = torch.cat([left[:, -1:], left, left[:, :1], right[:, -1:], right, right[:, :1]], dim=-2)
    ext = torch.cat([side[:, : h + 2], ext, side[:, h + 2 :]], dim=-1)
    rows = ext[:, :-2] + ext[:, 1:-1] + ext[:, 2:]  # separable: sum 3 rows, then 3 columns
    return rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]


def trajectory_stats_reference(x: torch.Tensor) -> TrajectoryStats:
    if x.ndim != 4:
        raise ValueError(f"trajectory_stats expects [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    xf = x.float()
    plane_sums = xf.sum(dim=(-2, -1))
    nonfinite = torch.zeros((b, c), dtype=torch.long, device=x.device)
    if not bool(torch.isfinite(plane_sums).all()):  # rare: pay for the exact per-value check only then
        bad = ~torch.isfinite(xf)
        nonfinite = bad.sum(dim=(-2, -1))
        xf = xf.masked_fill(bad, 0.0)
        plane_sums = xf.sum(dim=(-2, -1))
    mean = plane_sums / (h * w)

    radius, band_offset, bands = spectrum_geometry(h, w, str(x.device))
    spec = torch.fft.rfft2((xf - mean[..., None, None]).reshape(b * c, h, w))
    power = (spec * spec.conj()).real.contiguous()
    wr = power.shape[-1]
    sums = power.reshape(b * c, h * wr) @ bands
    total = sums[:, 0].clamp_min(_EPS_ABS)
    var = (sums[:, 0] / (h * w) ** 2).reshape(b, c)  # Parseval: sum |F|^2 = HW sum (x - m)^2
    hf_ratio = sums[:, 1] / total
    profile = sums[:, 2:] / total[:, None]

    # work in log power (= 2 x log amplitude) and halve only the peak
    eps = _EPS_REL * total / (h * w) + _EPS_ABS
    lp = power.add_(eps[:, None, None]).log_()
    lp[:, 0, 0] = (lp.sum(dim=(-2, -1)) - lp[:, 0, 0]) / max(h * wr - 1, 1)
    residual = torch.sub(lp, _box3x3_sum_half_spectrum(lp, w), alpha=1 / 9).add_(band_offset)
    sr_peak, arg = residual.reshape(b * c, h * wr).max(dim=-1)
    sr_peak = 0.5 * sr_peak
    sr_freq = radius.flatten()[arg]
    if not bool(torch.isfinite(band_offset).any()):
        sr_peak = torch.zeros_like(sr_peak)

    return TrajectoryStats(
        mean=mean,
        var=var,
        hf_ratio=hf_ratio.reshape(b, c),
        sr_peak=sr_peak.reshape(b, c),
        sr_freq=sr_freq.reshape(b, c),
        radial_profile=profile.reshape(b, c, RADIAL_BINS),
        nonfinite=nonfinite,
    )
