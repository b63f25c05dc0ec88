"""Fast torch path of `trajectory_stats`: the runtime backend off-GPU (backend name "reference", the
name the design contract gives it; the float64 oracle the tests compare against is oracle.py).

For x of shape [B, C, H, W] (any float dtype, or a PackedInt4; upcast to fp32 once), and with
`previous` the change d = x - previous stacked under it as B x C more planes (one rfft2 for both):

    F      = rfft2(x); F[0, 0] is the plane's sum, so m = F[0, 0] / HW (and a non-finite F[0, 0]
             is the cheap test for non-finite values; only then are they counted and zeroed)
    F[0, 0] = 0                            = rfft2(x - m): removing the mean only zeroes DC
    P      = |F|^2, weighted 2x on columns that stand for a conjugate pair (so sums equal fft2's)
    v      = sum(P) / (HW)^2               Parseval
    hf     = sum(P[r >= HF_CUTOFF]) / sum(P)      r = radial frequency in cycles/pixel
    L      = log(P + eps) (= 2 log amplitude), DC replaced by the mean of L over the full spectrum
    R      = L - box3x3(L)                 box over the periodic full spectrum (Hou & Zhang 2007)
    sr     = max R / 2 over r >= HF_CUTOFF, sr_freq its radial frequency
    prof_k = sum(P in radial bin k) / sum(P)
    flat   = exp(mean of log(P + eps) over r >= HF_CUTOFF) / (mean P there + eps)  (one more matvec)
    crest  = max(max x - m, m - min x) / sqrt(v): two plain reductions, no centred copy
    spatial: Xc^2 = (x - m)^2 once; its 2 x 2 polyphase sums (two contiguous reductions when H and W
    are even; for the change planes too) and kurtosis = mean Xc^4 / v^2 (one batched dot)
    isolation: D = (9 x - box3x3(x)) / 8 with the edges replicated (one pad, two separable sums),
    max |D - mean D| / std D and its flat index

The 3x3 neighbourhood of a half-spectrum column 0 or W//2 reaches into the other half; by conjugate
symmetry |F[k, -j]| = |F[-k, j]|, so those columns are the neighbours mirrored in k. One gather
with a precomputed index builds the extended [H+2, Wr+2] plane; the box is then two separable sums.

Everything is batched over B x C (x 2 with `previous`): one rfft2, one small matmul for all band
sums, no Python loop over channels, in-place epilogue, and no reduction that also returns an index
over a whole plane (on CPU those are 5-10x slower than a plain max: `_argmax` finds the row first).
`oracle.py` has the same statistics computed the plain way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, bool]:
    """(radius [H*Wr], band offset [H, Wr], band matrix [RADIAL_BINS + 2, H*Wr], box gather index,
    number of full-spectrum bins in the high-frequency band, whether there is such a band).

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
        bool(hf.any()),
    )


def trajectory_stats_torch(
    x: torch.Tensor | PackedInt4,
    previous: torch.Tensor | None = None,
    epilogue: Callable[..., tuple[torch.Tensor, ...]] | None = None,
) -> TrajectoryStats:
    """[B, C, H, W] (checked by the dispatcher) or PackedInt4; `previous` (same shape and device,
    float) sets change_flatness and change_crest as in `trajectory_stats`. `epilogue`: what runs
    after the rfft2 (`stats_epilogue`, or compiled.py's compiled form of it)."""
    if isinstance(x, PackedInt4):
        x = unpack_int4(x)
    b, c, h, w = x.shape
    n = b * c
    if previous is None:
        planes = x.reshape(n, h, w).float()
    else:  # [x; x - previous] in one float32 buffer: one rfft2 and one epilogue for both
        planes = torch.empty(2 * n, h, w, device=x.device)
        planes[:n].copy_(x.reshape(n, h, w))
        torch.sub(planes[:n], previous.reshape(n, h, w), out=planes[n:])
    spectrum = torch.fft.rfft2(planes)
    nonfinite = torch.zeros(n, dtype=torch.long, device=x.device)
    if not bool(torch.isfinite(spectrum[:, 0, 0].real).all()):  # F[0, 0] is the plane's sum
        bad = ~torch.isfinite(planes)  # rare: count and zero them (differences too) only then
        nonfinite = bad[:n].sum(dim=(-2, -1))
        planes = planes.masked_fill(bad, 0.0)
        spectrum = torch.fft.rfft2(planes)
    geometry = spectrum_geometry(h, w, str(x.device))
    values = (epilogue or stats_epilogue)(
        planes, torch.view_as_real(spectrum), previous is not None, *geometry
    )
    fields = dict(zip(EPILOGUE_FIELDS, values, strict=True))
    fields["nonfinite"] = nonfinite
    if previous is None:  # previous = 0: the change is x itself
        fields["change_flatness"], fields["change_crest"] = fields["hf_flatness"], fields["crest"]
        fields["change_phase_contrast"] = fields["phase_contrast"]
    patterns = (len(PARITY_PATTERNS),)
    shapes = {"radial_profile": (RADIAL_BINS,), "phase_contrast": patterns, "change_phase_contrast": patterns}
    return TrajectoryStats(**{k: v.reshape(b, c, *shapes.get(k, ())) for k, v in fields.items()})


#: what `stats_epilogue` returns, in order (nonfinite is counted before it)
EPILOGUE_FIELDS = (
    "mean", "var", "hf_ratio", "sr_peak", "sr_freq", "radial_profile", "phase_contrast",
    "hf_flatness", "crest", "kurtosis", "isolation", "isolation_at", "change_flatness", "change_crest",
    "change_phase_contrast",
)  # fmt: skip


def stats_epilogue(
    planes: torch.Tensor,
    spectrum: torch.Tensor,
    with_change: bool,
    radius: torch.Tensor,
    band_offset: torch.Tensor,
    bands: torch.Tensor,
    box_index: torch.Tensor,
    hf_count: float,
    has_band: bool,
) -> tuple[torch.Tensor, ...]:
    """Everything after the rfft2, for float32 planes [m, H, W] with finite values and their
    spectrum as real pairs [m, H, Wr, 2]; with_change: the last half of the planes are the change
    (the last two fields are theirs; otherwise they are empty). No data-dependent Python branch, and
    in-place updates only of tensors it made, never of an input: inductor compiles it (compiled.py)."""
    m, h, w = planes.shape
    n = m // 2 if with_change else m
    wr = w // 2 + 1
    mean = spectrum[:, 0, 0, 0] / (h * w)
    power = torch.addcmul(spectrum[..., 0].square(), spectrum[..., 1], spectrum[..., 1])
    power[:, 0, 0] = 0.0  # = rfft2(x - mean): removing the mean only zeroes DC
    flat = power.view(m, h * wr)
    sums = (bands @ flat.t()).t()  # [m, 2 + RADIAL_BINS]: total, high-frequency, radial bins
    total = sums[:, 0].clamp_min(EPS_ABS)
    var = sums[:, 0] / (h * w) ** 2

    # log power; x's DC gets the full-spectrum mean of the rest (mean removal zeroed it)
    eps = EPS_REL * total / (h * w) + EPS_ABS
    log_power = flat.add_(eps[:, None]).log_()  # in place: power is ours
    hf_log = log_power @ bands[1]  # sum over the high-frequency band (DC is not in it)
    lp = log_power[:n]
    lp[:, 0] = (lp @ bands[0] - lp[:, 0]) / max(h * w - 1, 1)
    ext = lp.index_select(1, box_index).view(n, h + 2, wr + 2)
    residual = _box3(ext).mul_(-1 / 9).add_(lp.view(n, h, wr)).add_(band_offset)
    sr_peak, arg = _argmax(residual)
    sr_freq = radius[arg]
    if not has_band:
        sr_peak, sr_freq = torch.zeros_like(sr_peak), torch.zeros_like(sr_freq)

    flatness = _flatness(hf_log, sums[:, 1], eps, hf_count)
    spread = torch.maximum(planes.amax(dim=(-2, -1)) - mean, mean - planes.amin(dim=(-2, -1)))
    crest = spread / (var + EPS_ABS).sqrt()
    phase_contrast, fourth = _phase_and_fourth(planes - mean[:, None, None], n)
    isolation, isolation_at = _isolation(planes[:n])
    return (
        mean[:n],
        var[:n],
        sums[:n, 1] / total[:n],
        0.5 * sr_peak,
        sr_freq,
        sums[:n, 2:] / total[:n, None],
        phase_contrast[:n],
        flatness[:n],
        crest[:n],
        fourth / (var[:n].square() + EPS_ABS),
        isolation,
        isolation_at,
        flatness[n:],
        crest[n:],
        phase_contrast[n:],
    )


def _flatness(
    hf_log: torch.Tensor, hf_power: torch.Tensor, eps: torch.Tensor, hf_count: float
) -> torch.Tensor:
    """exp(mean log power) / mean power over the high band, from its sums (0 without a band)."""
    if hf_count == 0:
        return torch.zeros_like(hf_power)
    return torch.exp(hf_log / hf_count) / (hf_power / hf_count + eps)


def _box3(ext: torch.Tensor) -> torch.Tensor:
    """3x3 box sums of [n, H+2, W+2] planes: [n, H, W], two separable sums (a new tensor)."""
    rows = ext[:, :-2] + ext[:, 1:-1]
    rows += ext[:, 2:]
    box = rows[..., :-2] + rows[..., 1:-1]
    box += rows[..., 2:]
    return box


def _argmax(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, first flat index of it) of each [R, C] plane of a [n, R, C] tensor: the row first, by
    plain maxima, then the column within it."""
    row_max = a.amax(dim=-1)
    row = row_max.argmax(dim=-1)
    col = a[torch.arange(a.shape[0], device=a.device), row].argmax(dim=-1)
    return row_max.gather(1, row[:, None]).squeeze(1), row * a.shape[-1] + col


def _isolation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max |D - mean D| / std D, its flat index as float) of planes [n, H, W], D = x minus the
    mean of its 8 neighbours, edges replicated."""
    n, h, w = x.shape
    box = _box3(F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1))
    d = box.mul_(-1 / 8).add_(x, alpha=9 / 8)  # x - (box - x) / 8
    d = d.sub_(d.mean(dim=(-2, -1), keepdim=True))
    flat = d.view(n, 1, h * w)
    var = torch.bmm(flat, flat.transpose(1, 2)).view(n) / (h * w)
    peak, at = _argmax(d.abs_())
    return peak / (var + EPS_ABS).sqrt(), at.float()


def _phase_and_fourth(xc: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(phase_contrast [m, 3], mean Xc^4 of the first n) of centred planes [m, H, W] (overwritten
    with Xc^2)."""
    m, h, w = xc.shape
    sq = xc.square_()
    if h % 2 == 0 and w % 2 == 0:  # the 2 x 2 phases: rows by parity, then columns by parity
        phases = sq.view(m, h // 2, 2, w).sum(dim=1).view(m, 2, w // 2, 2).sum(dim=2).reshape(m, 4)
    else:  # phases of unequal size: their means
        zero = sq.new_zeros(m)
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
    flat = sq[:n].reshape(n, 1, h * w)
    fourth = torch.bmm(flat, flat.transpose(1, 2)).view(n) / (h * w)
    return contrast, fourth
