"""Torch reference of `trajectory_stats`: the runtime path off-GPU and the oracle for every kernel.

For x of shape [B, C, H, W] (any float dtype, read once and upcast to fp32):

    m      = mean(x)                       over finite values; non-finite values count as 0
    v      = mean((x - m)^2)
    F      = rfft2(x - m)                  half spectrum, columns 0 .. W//2
    P      = |F|^2, weighted 2x on columns that stand for a conjugate pair (so sums equal fft2's)
    hf     = sum(P[r >= HF_CUTOFF]) / sum(P)      r = radial frequency in cycles/pixel
    L      = log(sqrt(P) + eps),  DC replaced by the mean log amplitude (mean removal zeroes it)
    R      = L - box3x3(L)                 box over the periodic full spectrum (Hou & Zhang 2007)
    sr     = max R over r >= HF_CUTOFF,   sr_freq its radial frequency
    prof_k = sum(P in radial bin k) / sum(P)

The 3x3 neighbourhood of a half-spectrum column 0 or W//2 reaches into the other half; by conjugate
symmetry |F[k, -j]| = |F[-k, j]|, so those columns are the neighbours mirrored in k.

Everything is batched over B x C: one rfft2, two small matmuls for the band sums, one avg_pool2d.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from latentguard.kernels.stats import HF_CUTOFF, RADIAL_BINS, TrajectoryStats

_EPS_REL = 1e-10
_EPS_ABS = 1e-30


@functools.lru_cache(maxsize=32)
def spectrum_geometry(h: int, w: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(radius [H, Wr], hf mask [H, Wr] bool, band matrix [H*Wr, RADIAL_BINS + 2]).

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
    return radius.float().to(device), hf.to(device), bands.float().to(device)


def _box3x3_half_spectrum(log_amp: torch.Tensor, w: int) -> torch.Tensor:
    """3x3 mean of a half-spectrum log amplitude [N, H, Wr] over the periodic full spectrum."""
    wr = log_amp.shape[-1]
    h = log_amp.shape[-2]
    mirror = (-torch.arange(h, device=log_amp.device)) % h
    left = log_amp[:, mirror, 1:2] if wr > 1 else log_amp[:, mirror, 0:1]
    right_col = w - wr
    right = log_amp[:, mirror, right_col : right_col + 1]
    ext = torch.cat([left, log_amp, right], dim=-1)
    ext = torch.cat([ext[:, -1:], ext, ext[:, :1]], dim=-2)
    return F.avg_pool2d(ext.unsqueeze(1), kernel_size=3, stride=1).squeeze(1)


def trajectory_stats_reference(x: torch.Tensor) -> TrajectoryStats:
    if x.ndim != 4:
        raise ValueError(f"trajectory_stats expects [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    xf = x.float()
    finite = torch.isfinite(xf)
    nonfinite = (~finite).sum(dim=(-2, -1))
    xf = torch.where(finite, xf, torch.zeros((), dtype=xf.dtype, device=xf.device))
    mean = xf.mean(dim=(-2, -1))
    centered = xf - mean[..., None, None]
    var = centered.square().mean(dim=(-2, -1))

    radius, hf_mask, bands = spectrum_geometry(h, w, str(x.device))
    spec = torch.fft.rfft2(centered.reshape(b * c, h, w))
    power = spec.real.square() + spec.imag.square()
    wr = power.shape[-1]
    sums = power.reshape(b * c, h * wr) @ bands
    total = sums[:, 0].clamp_min(_EPS_ABS)
    hf_ratio = sums[:, 1] / total
    profile = sums[:, 2:] / total[:, None]

    eps = _EPS_REL * total / (h * w) + _EPS_ABS
    log_amp = 0.5 * torch.log(power + eps[:, None, None])
    dc_fill = (log_amp.sum(dim=(-2, -1)) - log_amp[:, 0, 0]) / max(h * wr - 1, 1)
    log_amp[:, 0, 0] = dc_fill
    residual = log_amp - _box3x3_half_spectrum(log_amp, w)
    residual = residual.masked_fill(~hf_mask, float("-inf")).reshape(b * c, h * wr)
    sr_peak, arg = residual.max(dim=-1)
    sr_freq = radius.flatten()[arg]
    if not bool(hf_mask.any()):
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
