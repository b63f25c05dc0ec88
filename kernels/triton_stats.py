"""Fused Triton kernel for `trajectory_stats`: one launch per step, one program per (b, c) plane.

Math (per plane X of H x W, padded to BH x BW = next powers of two >= 16, masked):
    m  = mean(X) over finite values (non-finite values are counted, then read as 0); Xc = X - m
    F  = D_H Xc D_W with the DFT matrices D = C - iS (cosine and sine tiles), as four real
         tensor-core products:  A = Xc C_W, B = Xc S_W;  Re F = C_H A - S_H B,  -Im F = S_H A + C_H B
    P  = Re^2 + Im^2 (full spectrum, DC = 0);  v = sum P / (HW)^2 (Parseval);  hf, radial profile
         are masked sums of P over radius bands (radius from the program's indices, no tables)
    L  = log(P + eps) with DC set to the mean of L;  box3x3(L) = Z_H L Z_W with Z the periodic
         tridiagonal ones matrix, i.e. two more products;  R = L - box / 9
    sr = max R / 2 over r >= HF_CUTOFF (argmax gives sr_freq)
    flatness = exp(mean L over r >= HF_CUTOFF) / mean P there    (L and the band mask are reused)
    m_ab = mean Xc^2 over each 2 x 2 phase (parity masks of the row / column index)
    imbalance = max over the three parity patterns |sum s_ab m_ab| / sum m_ab
    crest = max |Xc| / std;  kurtosis = mean Xc^4 / var^2
Everything after the load stays in registers/shared memory; only 10 + RADIAL_BINS floats per plane
go back to global memory. The statistics added after the first version (flatness, the polyphase
energies, crest, kurtosis) are masked element-wise reductions over tiles already in registers:
about 12 flops per element, nothing against the 8 products' 2 n flops per element, and no extra
global memory traffic. The definitions follow `oracle.py` (Hou & Zhang 2007 for the residual).

Inputs are read natively: fp32, fp16, bf16, float8_e4m3fn, float8_e5m2 are loaded as stored and
converted in registers (FP8 NaN/Inf are found from the bit pattern, which does not depend on how a
backend converts them: the interpreter in triton 3.9 turns them into large finite numbers);
`PackedInt4` (packing.py) is decoded in registers from its nibbles and group scales.
Matmuls use `tf32x3` on CUDA (3 tf32 tensor-core products, about fp32 accuracy) and
exact fp32 in the interpreter.

Cost per call for SD3/FLUX latents (16 channels, 128 x 128, batch B; n = 128):
    flops  = 16 planes * B * 8 products * 2 n^3 = B * 0.54 GFLOP
    bytes  = B * 16 * n^2 * itemsize (0.5 MB per batch item in bf16) + 6 twiddle/box tiles of n^2 fp32
             (384 KB, read once into L2) + B * 16 * 18 * 4 bytes of output
On an H100 SXM (3.35 TB/s HBM, ~495 dense TF32 TFLOPS, so ~165 for tf32x3): batch 1 is bound by
launch latency (~3-5 us; compute 3.3 us, memory 0.3 us); batch 8 is compute bound at ~26 us
(memory 1.3 us). These floors are estimates: no GPU has run this kernel yet (see README).
The O(n^3) DFT-by-matmul trades the FFT's O(n^2 log n) for tensor cores and full fusion; at n = 128
the products are 16 x the FFT's flops but run on units the FFT cannot use.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from latentguard.kernels.packing import PackedInt4
from latentguard.kernels.stats import EPS_ABS, EPS_REL, HF_CUTOFF, RADIAL_BINS, TrajectoryStats

# mean, var, hf, sr_peak, sr_freq, nonfinite, phase_imbalance, hf_flatness, crest, kurtosis, profile[BINS]
_SCALARS = 10
_OUT = _SCALARS + RADIAL_BINS
_FP8_KIND = {torch.float8_e4m3fn: 1, torch.float8_e5m2: 2}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


@triton.jit
def _freq(idx, n):
    """|frequency| index of full-spectrum index idx along an axis of length n (int64)."""
    return tl.minimum(idx, n - idx).to(tl.int64)


@triton.jit
def _phase_mean(sq, mask):
    """Mean of sq over the pixels of one 2 x 2 polyphase component (0 when it has none)."""
    n = tl.sum(mask.to(tl.float32))
    return tl.sum(tl.where(mask, sq, 0.0)) / tl.maximum(n, 1.0)


@triton.jit
def _trajectory_stats_kernel(
    x_ptr,
    scale_ptr,
    cos_h_ptr,
    sin_h_ptr,
    box_h_ptr,
    cos_w_ptr,
    sin_w_ptr,
    box_w_ptr,
    out_ptr,
    H,
    W,
    plane_stride,
    scale_stride,
    GROUP: tl.constexpr,
    PACKED: tl.constexpr,
    FP8: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    HF_DEN: tl.constexpr,
    SCALARS: tl.constexpr,
    BINS: tl.constexpr,
    EPS_REL: tl.constexpr,
    EPS_ABS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    plane = tl.program_id(0)
    rows = tl.arange(0, BH)[:, None]
    cols = tl.arange(0, BW)[None, :]
    valid = (rows < H) & (cols < W)
    flat = rows * W + cols
    count = (H * W).to(tl.float32)

    if PACKED:
        byte = tl.load(x_ptr + plane * plane_stride + flat // 2, mask=valid, other=0).to(tl.int32)
        nibble = (byte >> ((flat % 2) * 4)) & 15
        scale = tl.load(scale_ptr + plane * scale_stride + flat // GROUP, mask=valid, other=0.0)
        x = (nibble - 8).to(tl.float32) * scale.to(tl.float32)
        bad = x != x
    else:
        raw = tl.load(x_ptr + plane * plane_stride + flat, mask=valid, other=0.0)
        x = raw.to(tl.float32)
        if FP8 == 1:  # float8_e4m3fn: no Inf, NaN is S.1111.111; read the bits, not the conversion
            bad = (raw.to(tl.uint8, bitcast=True) & 0x7F) == 0x7F
        elif FP8 == 2:  # float8_e5m2: exponent 11111 is Inf or NaN
            bad = (raw.to(tl.uint8, bitcast=True) & 0x7C) == 0x7C
        else:
            bad = (x != x) | (tl.abs(x) == float("inf"))
    nonfinite = tl.sum((bad & valid).to(tl.float32))
    x = tl.where(bad | ~valid, 0.0, x)
    mean = tl.sum(x) / count
    xc = tl.where(valid, x - mean, 0.0)
    base = out_ptr + plane * (SCALARS + BINS)

    # spatial statistics of the centred plane: 2 x 2 polyphase energies, crest factor, kurtosis
    sq = xc * xc
    var_s = tl.sum(sq) / count
    odd_r, odd_c = (rows % 2) == 1, (cols % 2) == 1
    m00 = _phase_mean(sq, valid & ~odd_r & ~odd_c)
    m01 = _phase_mean(sq, valid & ~odd_r & odd_c)
    m10 = _phase_mean(sq, valid & odd_r & ~odd_c)
    m11 = _phase_mean(sq, valid & odd_r & odd_c)
    checker = tl.abs(m00 - m01 - m10 + m11)  # the signs of stats.PARITY_PATTERNS
    by_row = tl.abs(m00 + m01 - m10 - m11)
    by_col = tl.abs(m00 - m01 + m10 - m11)
    imbalance = tl.maximum(checker, tl.maximum(by_row, by_col)) / tl.maximum(m00 + m01 + m10 + m11, EPS_ABS)
    tl.store(base + 6, imbalance)
    tl.store(base + 8, tl.max(tl.abs(xc)) / tl.sqrt(var_s + EPS_ABS))
    tl.store(base + 9, (tl.sum(sq * sq) / count) / (var_s * var_s + EPS_ABS))

    tile_h = tl.arange(0, BH)[:, None] * BH + tl.arange(0, BH)[None, :]
    tile_w = tl.arange(0, BW)[:, None] * BW + tl.arange(0, BW)[None, :]
    cos_w = tl.load(cos_w_ptr + tile_w)
    sin_w = tl.load(sin_w_ptr + tile_w)
    a = tl.dot(xc, cos_w, input_precision=PRECISION)
    b = tl.dot(xc, sin_w, input_precision=PRECISION)
    cos_h = tl.load(cos_h_ptr + tile_h)
    sin_h = tl.load(sin_h_ptr + tile_h)
    re = tl.dot(cos_h, a, input_precision=PRECISION) - tl.dot(sin_h, b, input_precision=PRECISION)
    im = tl.dot(sin_h, a, input_precision=PRECISION) + tl.dot(cos_h, b, input_precision=PRECISION)
    is_dc = (rows == 0) & (cols == 0)
    power = tl.where(valid & ~is_dc, re * re + im * im, 0.0)

    # bands in exact integer arithmetic, as stats.radial_bands: r^2 (HW)^2 = ky^2 W^2 + kx^2 H^2
    hw2 = (H * W).to(tl.int64) * (H * W)
    ky, kx = _freq(rows, H), _freq(cols, W)
    r2 = ky * ky * W * W + kx * kx * H * H
    high = valid & (r2 * HF_DEN * HF_DEN >= hw2)
    total = tl.maximum(tl.sum(power), EPS_ABS)
    hf_power = tl.sum(tl.where(high, power, 0.0))
    tl.store(base + 0, mean)
    tl.store(base + 1, tl.sum(power) / (count * count))
    tl.store(base + 2, hf_power / total)
    tl.store(base + 5, nonfinite)
    bins = tl.zeros([BH, BW], dtype=tl.int32)
    for k in tl.static_range(1, BINS):
        bins += (k * k * hw2 <= 2 * BINS * BINS * r2).to(tl.int32)
    for k in tl.static_range(BINS):
        tl.store(base + SCALARS + k, tl.sum(tl.where(bins == k, power, 0.0)) / total)

    eps = EPS_REL * total / count + EPS_ABS
    log_p = tl.log(power + eps)
    log_p = tl.where(valid, log_p, 0.0)
    hf_count = tl.sum(high.to(tl.float32))
    hf_log_mean = tl.sum(tl.where(high, log_p, 0.0)) / tl.maximum(hf_count, 1.0)
    flatness = tl.exp(hf_log_mean) / (hf_power / tl.maximum(hf_count, 1.0) + eps)
    tl.store(base + 7, tl.where(hf_count > 0, flatness, 0.0))
    dc_fill = (tl.sum(log_p) - tl.sum(tl.where(is_dc, log_p, 0.0))) / tl.maximum(count - 1.0, 1.0)
    log_p = tl.where(is_dc, dc_fill, log_p)
    box_h = tl.load(box_h_ptr + tile_h)
    box_w = tl.load(box_w_ptr + tile_w)
    box = tl.dot(tl.dot(box_h, log_p, input_precision=PRECISION), box_w, input_precision=PRECISION)
    residual = tl.where(high, log_p - box / 9.0, float("-inf"))
    flat_residual = tl.reshape(residual, [BH * BW])
    peak_at = tl.argmax(flat_residual, axis=0)
    peak = tl.max(flat_residual, axis=0)
    has_band = peak > float("-inf")
    fy = _freq(peak_at // BW, H).to(tl.float32) / H
    fx = _freq(peak_at % BW, W).to(tl.float32) / W
    peak_radius = tl.sqrt(fy * fy + fx * fx)
    tl.store(base + 3, tl.where(has_band, 0.5 * peak, 0.0))
    tl.store(base + 4, tl.where(has_band, peak_radius, 0.0))


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@functools.lru_cache(maxsize=32)
def _tiles(n: int, block: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cos, sin, periodic 3-tap box) [block, block] fp32 tiles for an axis of length n, zero-padded."""
    k = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, k).remainder(n) / n
    tiles = torch.zeros(3, block, block, dtype=torch.float64)
    tiles[0, :n, :n] = torch.cos(angle)
    tiles[1, :n, :n] = torch.sin(angle)
    for shift in (-1, 0, 1):
        tiles[2, torch.arange(n), (torch.arange(n) + shift) % n] += 1.0
    cos, sin, box = tiles.float().to(device).unbind(0)
    return cos.contiguous(), sin.contiguous(), box.contiguous()


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def trajectory_stats_triton(x: torch.Tensor | PackedInt4) -> TrajectoryStats:
    """One kernel launch for the whole [B, C, H, W] batch."""
    if isinstance(x, PackedInt4):
        b, c, h, w = x.shape
        data, scales = x.data.contiguous(), x.scales.contiguous()
        plane_stride, scale_stride, group = data.shape[-1], scales.shape[-1], x.group_size
    else:
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"Triton trajectory_stats reads {SUPPORTED_DTYPES}, got {x.dtype}")
        b, c, h, w = x.shape
        data, scales = x.contiguous(), x.new_empty(0, dtype=torch.float16)  # no upcast copy
        plane_stride, scale_stride, group = h * w, 0, 2
    bh, bw = _block(h), _block(w)
    cos_h, sin_h, box_h = _tiles(h, bh, str(data.device))
    cos_w, sin_w, box_w = _tiles(w, bw, str(data.device))
    out = torch.empty(b * c, _OUT, dtype=torch.float32, device=data.device)
    _trajectory_stats_kernel[(b * c,)](
        data,
        scales,
        cos_h,
        sin_h,
        box_h,
        cos_w,
        sin_w,
        box_w,
        out,
        h,
        w,
        plane_stride,
        scale_stride,
        GROUP=group,
        PACKED=isinstance(x, PackedInt4),
        FP8=_FP8_KIND.get(data.dtype, 0),
        BH=bh,
        BW=bw,
        HF_DEN=round(1 / HF_CUTOFF),
        SCALARS=_SCALARS,
        BINS=RADIAL_BINS,
        EPS_REL=EPS_REL,
        EPS_ABS=EPS_ABS,
        PRECISION="ieee" if interpreted() else "tf32x3",
        num_warps=8,
    )
    out = out.view(b, c, _OUT)
    return TrajectoryStats(
        mean=out[..., 0],
        var=out[..., 1],
        hf_ratio=out[..., 2],
        sr_peak=out[..., 3],
        sr_freq=out[..., 4],
        radial_profile=out[..., _SCALARS:],
        nonfinite=out[..., 5].long(),
        phase_imbalance=out[..., 6],
        hf_flatness=out[..., 7],
        crest=out[..., 8],
        kurtosis=out[..., 9],
    )
