"""Fast torch path of `trajectory_stats`: the runtime backend off-GPU (backend name "reference", the
name the design contract gives it; the float64 oracle the tests compare against is oracle.py).

For x of shape [B, C, H, W] (any float dtype, or a PackedInt4; upcast to fp32 once):

    m      = mean(x)                       over finite values; non-finite values count as 0
    F      = rfft2(x), F[0, 0] = 0         = rfft2(x - m): removing the mean only zeroes DC
    P      = |F|^2, weighted 2x on columns that stand for a conjugate pair (so sums equal fft2's)
    v      = sum(P) / (HW)^2               Parseval
    hf     = sum(P[r >= HF_CUTOFF]) / sum(P)      r = radial frequency in cycles/pixel
    L      = log(P + eps) (= 2 log amplitude), DC replaced by the mean of L over the full spectrum
    R      = L - box3x3(L)                 box over the periodic full spectrum (Hou & Zhang 2007)
    sr     = max R / 2 over r >= HF_CUTOFF, sr_freq its radial frequency
    prof_k = sum(P in radial bin k) / sum(P)
    flat   = exp(mean of log(P + eps) over r >= HF_CUTOFF) / (mean P there + eps)  (one more matvec)
    spatial: Xc = x - m; the 2 x 2 polyphase means of Xc^2 (one strided reduction when H and W are
    even), crest = max |Xc| / std and kurtosis = mean Xc^4 / var^2 by vector norms: three passes
    isolation: D = (9 x - box3x3(x)) / 8 with the edges replicated (one pad, two separable sums),
    max |D - mean D| / std D and its flat index

The 3x3 neighbourhood of a half-spectrum column 0 or W//2 reaches into the other half; by conjugate
symmetry |F[k, -j]| = |F[-k, j]|, so those columns are the neighbours mirrored in k. One gather
with a precomputed index builds the extended [H+2, Wr+2] plane; the box is then two separable sums.

Everything is batched over B x C: one rfft2, one small matmul for all band sums, no Python loop
over channels, in-place epilogue. `oracle.py` has the same statistics computed the plain way.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from latentguard.kernels.packing import PackedInt4, unpack_int4
from latentguard.kernels.stats import (
    EPS_ABS,
    EPS_REL,
    PARITY_PATTERNS,
    RADIAL_BINS,
    TrajectoryStats,
    radial_bands,
)


@functools.lru_cache(maxsize=32)
def spectrum_geometry(
    h: int, w: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(radius [H*Wr], band offset [H, Wr], band matrix [RADIAL_BINS + 2, H*Wr], box gather index,
    number of full-spectrum bins in the high-frequency band).

    The band offset is 0 in the high-frequency band and -inf outside (added before the peak search).
    The band matrix maps a flattened half-spectrum power to (total, high-frequency, bins...) with the
    conjugate-pair column weights folded in. The gather index builds the extended plane for the box.
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
    ky = torch.minimum(torch.arange(h), h - torch.arange(h))
    hf, bin_idx = radial_bands(ky[:, None], torch.arange(wr)[None, :], h, w)
    bands = torch.zeros(RADIAL_BINS + 2, h * wr, dtype=torch.float64)
    bands[0] = weight.flatten()
    bands[1] = (weight * hf).flatten()
    bands[2 + bin_idx.flatten(), torch.arange(h * wr)] = weight.flatten()
    offset = torch.where(hf, 0.0, float("-inf"))

    rows = torch.arange(-1, h + 1) % h
    mirrored = (-rows) % h
    index = torch.empty(h + 2, wr + 2, dtype=torch.long)
    index[:, 1:-1] = rows[:, None] * wr + torch.arange(wr)
    index[:, 0] = mirrored * wr + (1 if wr > 1 else 0)  # column -1 = conj of column 1
    index[:, -1] = mirrored * wr + (w - wr)  # column wr = conj of column w - wr
    return (
        radius.flatten().float().to(device),
        offset.float().to(device),
        bands.float().to(device),
        index.flatten().to(device),
        float(bands[1].sum()),
    )


def trajectory_stats_torch(x: torch.Tensor | PackedInt4) -> TrajectoryStats:
    """[B, C, H, W] (checked by the dispatcher) or PackedInt4."""
    if isinstance(x, PackedInt4):
        x = unpack_int4(x)
    b, c, h, w = x.shape
    n, wr = b * c, w // 2 + 1
    xf = x.float().reshape(n, h, w)
    plane_sums = xf.sum(dim=(-2, -1))
    nonfinite = torch.zeros(n, dtype=torch.long, device=x.device)
    if not bool(torch.isfinite(plane_sums).all()):  # rare: pay for the exact per-value check only then
        bad = ~torch.isfinite(xf)
        nonfinite = bad.sum(dim=(-2, -1))
        xf = xf.masked_fill(bad, 0.0)
        plane_sums = xf.sum(dim=(-2, -1))
    mean = plane_sums / (h * w)

    radius, band_offset, bands, box_index, hf_count = spectrum_geometry(h, w, str(x.device))
    ri = torch.view_as_real(torch.fft.rfft2(xf))
    power = torch.addcmul(ri[..., 0].square(), ri[..., 1], ri[..., 1])
    power[:, 0, 0] = 0.0
    flat = power.view(n, h * wr)
    sums = (bands @ flat.t()).t()  # [n, 2 + RADIAL_BINS]: total, high-frequency, radial bins
    total = sums[:, 0].clamp_min(EPS_ABS)
    var = sums[:, 0] / (h * w) ** 2
    hf_ratio = sums[:, 1] / total
    profile = sums[:, 2:] / total[:, None]

    # log power, in place; DC gets the full-spectrum mean of the rest (mean removal zeroed it)
    eps = EPS_REL * total / (h * w) + EPS_ABS
    lp = power.add_(eps[:, None, None]).log_()
    lp[:, 0, 0] = (flat @ bands[0] - lp[:, 0, 0]) / max(h * w - 1, 1)
    hf_log = flat @ bands[1]  # sum of log power over the high-frequency band (DC is not in it)
    ext = flat.index_select(1, box_index).view(n, h + 2, wr + 2)
    rows = ext[:, :-2] + ext[:, 1:-1]
    rows += ext[:, 2:]
    box = rows[..., :-2] + rows[..., 1:-1]
    box += rows[..., 2:]
    residual = box.mul_(-1 / 9).add_(lp).add_(band_offset)
    sr_peak, arg = residual.view(n, h * wr).max(dim=-1)
    sr_freq = radius[arg]
    if not bool(torch.isfinite(band_offset).any()):
        sr_peak, sr_freq = torch.zeros_like(sr_peak), torch.zeros_like(sr_freq)

    hf_flatness = _flatness(hf_log, sums[:, 1], eps, hf_count)
    phase_contrast, crest, kurtosis = _spatial_stats(xf - mean[:, None, None])
    isolation, isolation_at = _isolation(xf)
    return TrajectoryStats(
        mean=mean.reshape(b, c),
        var=var.reshape(b, c),
        hf_ratio=hf_ratio.reshape(b, c),
        sr_peak=(0.5 * sr_peak).reshape(b, c),
        sr_freq=sr_freq.reshape(b, c),
        radial_profile=profile.reshape(b, c, RADIAL_BINS),
        nonfinite=nonfinite.reshape(b, c),
        phase_contrast=phase_contrast.reshape(b, c, len(PARITY_PATTERNS)),
        hf_flatness=hf_flatness.reshape(b, c),
        change_flatness=hf_flatness.reshape(b, c),  # previous = 0 (dispatch sets it otherwise)
        crest=crest.reshape(b, c),
        change_crest=crest.reshape(b, c),  # previous = 0 (dispatch sets it otherwise)
        kurtosis=kurtosis.reshape(b, c),
        isolation=isolation.reshape(b, c),
        isolation_at=isolation_at.reshape(b, c),
    )


def _flatness(
    hf_log: torch.Tensor, hf_power: torch.Tensor, eps: torch.Tensor, hf_count: float
) -> torch.Tensor:
    """exp(mean log power) / mean power over the high band, from its sums (0 without a band)."""
    if hf_count == 0:
        return torch.zeros_like(hf_power)
    return torch.exp(hf_log / hf_count) / (hf_power / hf_count + eps)


def change_stats_torch(x: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, C] hf_flatness, [B, C] crest) of x - previous, non-finite differences read as 0: only
    what `trajectory_stats(x, previous=...)` adds for the difference (one more rfft2, a log, band
    sums, the crest of the centred difference)."""
    b, c, h, w = x.shape
    n, wr = b * c, w // 2 + 1
    d = torch.nan_to_num(x.float() - previous.float(), nan=0.0, posinf=0.0, neginf=0.0).reshape(n, h, w)
    _, _, bands, _, hf_count = spectrum_geometry(h, w, str(x.device))
    ri = torch.view_as_real(torch.fft.rfft2(d))
    power = torch.addcmul(ri[..., 0].square(), ri[..., 1], ri[..., 1])
    power[:, 0, 0] = 0.0  # mean removal only zeroes DC
    flat = power.view(n, h * wr)
    sums = (bands[:2] @ flat.t()).t()  # total, high-frequency
    var = sums[:, 0] / (h * w) ** 2  # Parseval
    eps = EPS_REL * sums[:, 0].clamp_min(EPS_ABS) / (h * w) + EPS_ABS
    hf_log = flat.add_(eps[:, None]).log_() @ bands[1]
    crest = _crest(d - d.mean(dim=(-2, -1), keepdim=True), var)
    return _flatness(hf_log, sums[:, 1], eps, hf_count).reshape(b, c), crest.reshape(b, c)


def _crest(xc: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """max |Xc| / std of centred planes [n, H, W] with variances [n]."""
    return torch.linalg.vector_norm(xc, math.inf, dim=(-2, -1)) / (var + EPS_ABS).sqrt()


def _isolation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max |D - mean D| / std D, its flat index as float) of planes [n, H, W], D = x minus the
    mean of its 8 neighbours, edges replicated."""
    ext = F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    rows = ext[:, :-2] + ext[:, 1:-1]
    rows += ext[:, 2:]
    box = rows[..., :-2] + rows[..., 1:-1]
    box += rows[..., 2:]
    d = box.mul_(-1 / 8).add_(x, alpha=9 / 8)  # x - (box - x) / 8
    d = d.sub_(d.mean(dim=(-2, -1), keepdim=True)).flatten(1)
    peak, at = d.abs().max(dim=-1)
    return peak / (d.square().mean(dim=-1) + EPS_ABS).sqrt(), at.float()


def _spatial_stats(xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phase_contrast [n, 3], crest, kurtosis) of centred planes [n, H, W]: three passes over the values."""
    n, h, w = xc.shape
    sq = xc.square()
    if h % 2 == 0 and w % 2 == 0:  # the 2 x 2 phases as one strided reduction
        phases = sq.view(n, h // 2, 2, w // 2, 2).mean(dim=(1, 3)).reshape(n, 4)
    else:
        zero = sq.new_zeros(n)
        phases = torch.stack(
            [
                sq[:, a::2, b::2].mean(dim=(-2, -1)) if a < h and b < w else zero
                for a in (0, 1)
                for b in (0, 1)
            ],
            dim=1,
        )
    patterns = torch.tensor(PARITY_PATTERNS, dtype=sq.dtype, device=sq.device)
    contrast = (phases @ patterns.t()) / phases.sum(dim=1, keepdim=True).clamp_min(EPS_ABS)
    var = sq.mean(dim=(-2, -1))
    fourth = torch.linalg.vector_norm(sq, 2, dim=(-2, -1)).square() / (h * w)
    return contrast, _crest(xc, var), fourth / (var.square() + EPS_ABS)
