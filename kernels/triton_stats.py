"""Fused Triton kernel for `trajectory_stats`: one launch per step, one program per (b, c) plane.

Math (per plane X of H x W, padded to BH x BW = next powers of two >= 16, masked):
    m  = mean(X) over finite values (non-finite values are counted, then read as 0); Xc = X - m
    F  = D_H Xc D_W with the DFT matrices D = C - iS (cosine and sine tiles), as four real
         tensor-core products:  A = Xc C_W, B = Xc S_W;  Re F = C_H A - S_H B,  -Im F = S_H A + C_H B
    P  = Re^2 + Im^2 (full spectrum, DC = 0);  v = sum P / (HW)^2 (Parseval);  hf, radial profile
         are masked sums of P over radius bands (radius from the program's indices, no tables)
    L  = log(P + eps) with DC set to the mean of L;  box3x3(L) from nine periodic shifted reads;
         R = L - box / 9;  sr = max R / 2 over r >= HF_CUTOFF (argmax gives sr_freq)
    flatness = exp(mean L over r >= HF_CUTOFF) / mean P there
    m_ab = mean Xc^2 over each 2 x 2 phase (parity masks of the row / column index)
    contrast_s = sum s_ab m_ab / sum m_ab for each of the three parity patterns s (3 outputs,
                 from sums pass 2 already makes: no extra pass or traffic)
    crest = max |Xc| / std;  kurtosis = mean Xc^4 / var^2
    D  = (9 Xc - box3x3(Xc)) / 8 with the plane's edges replicated (each value minus the mean of its
         8 neighbours);  isolation = max |D - mean D| / std D, isolation_at = its flat index i W + j
The definitions follow `oracle.py` (Hou & Zhang 2007 for the residual). `change_flatness`,
`change_crest` and `change_phase_contrast` are not terms of their own: with a previous estimate,
dispatch.py launches this kernel once on the doubled batch [x, x - previous] and reads the second
half's flatness, crest and phase contrasts (2 x the planes, still one launch).

Structure: a whole 128 x 128 plane held in registers does not fit the GPUs we target (262 KB of
shared memory on sm_90, where a block may have 227 KB; 131 KB on sm_89, which allows 99 KB). So the
program walks its plane in blocks of ROW_BLOCK rows, six passes separated by barriers, with three
BH x BW fp32 planes of scratch per program (Xc, later P, later L | A | B; 192 KB per 128^2 plane,
L2-resident): (1) mean and non-finite count; (2) Xc to scratch and the spatial statistics;
(3) the isolation from nine clamped reads of Xc per value, then A, B = Xc C_W, Xc S_W; (4) Re,
Im, P and its band sums; (5) L and the flatness; (6) the box filter and the residual's running
argmax. Every tl.dot is ROW_BLOCK x ROW_BLOCK by ROW_BLOCK x BW,
so shared memory no longer grows with the plane: `python -m latentguard.kernels.aot` compiles the
kernel for sm_80/86/89/90 here and checks shared memory, registers and spills (README's table).

Inputs are read natively: fp32, fp16, bf16 are loaded as stored and converted in registers;
float8_e4m3fn and float8_e5m2 are read as bytes and decoded here (Triton has no e4m3 type before
sm_89, and NaN/Inf come from the bit pattern, not from how a backend converts them);
`PackedInt4` (packing.py) is decoded in registers from its nibbles and group scales.
Matmuls use `tf32x3` on CUDA (3 tf32 tensor-core products, about fp32 accuracy) and
exact fp32 in the interpreter.

Cost per call for SD3/FLUX latents (16 channels, 128 x 128, batch B; n = 128):
    flops  = 16 planes * B * 6 products * 2 n^3 = B * 0.40 GFLOP (the box filter is 9 adds now)
    bytes  = B * 16 * n^2 * itemsize read once per pass 1-2 (0.5 MB per batch item in bf16), 4 twiddle
             tiles of n^2 fp32 (256 KB, L2), and per plane ~1.3 MB of scratch traffic (A and B are
             re-read once per row block of pass 4) plus 0.6 MB for the isolation's nine reads of Xc
             (pass 3; ~10 adds per value, no products): L2 traffic, ~30 MB per batch item
On an H100 SXM (~495 dense TF32 TFLOPS, so ~165 for tf32x3; L2 ~10 TB/s): batch 1 is bound by
launch latency and the 16 programs' serial passes (16 of 132 SMs busy); batch 8 ~2-5 us of
compute and L2 traffic. These floors are estimates: no GPU has run this kernel yet (see README).
The service passes the previous estimate (the change_* fields), so a step launches
2 x 16 B programs: twice the flops and traffic above, the same single launch; at batch 1 still 32 of
132 SMs.
The O(n^3) DFT-by-matmul trades the FFT's O(n^2 log n) for tensor cores and full fusion; at n = 128
the products are 12 x the FFT's flops but run on units the FFT cannot use.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import triton
import triton.language as tl

from latentguard.kernels.packing import PackedInt4
from latentguard.kernels.stats import (
    EPS_ABS,
    EPS_REL,
    HF_CUTOFF,
    RADIAL_BINS,
    TrajectoryStats,
    interpreted,
    padded_side,
)

# mean, var, hf, sr_peak, sr_freq, nonfinite, hf_flatness, crest, kurtosis, phase_contrast[3],
# isolation, isolation_at, profile[BINS]
_CONTRAST = 9
_ISOLATION = 12
_SCALARS = 14
_OUT = _SCALARS + RADIAL_BINS
_FP8_KIND = {torch.float8_e4m3fn: 1, torch.float8_e5m2: 2}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
#: every input the kernel reads, by name (None: PackedInt4)
INPUT_KINDS: dict[str, torch.dtype | None] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
    "int4": None,
}


@triton.jit
def _freq(idx, n):
    """|frequency| index of full-spectrum index idx along an axis of length n (int64)."""
    return tl.minimum(idx, n - idx).to(tl.int64)


@triton.jit
def _masked_sum(values, mask):
    return tl.sum(tl.where(mask, values, 0.0))


@triton.jit
def _load_rows(x_ptr, scale_ptr, plane, rows, cols, H, W, plane_stride, scale_stride, GROUP, PACKED, FP8):
    """(values as fp32, with non-finite entries and padding read as 0; non-finite mask; valid mask)."""
    valid = (rows < H) & (cols < W)
    flat = rows * W + cols
    if PACKED:
        byte = tl.load(x_ptr + plane * plane_stride + flat // 2, mask=valid, other=0).to(tl.int32)
        nibble = (byte >> ((flat % 2) * 4)) & 15
        scale = tl.load(scale_ptr + plane * scale_stride + flat // GROUP, mask=valid, other=0.0)
        x = (nibble - 8).to(tl.float32) * scale.to(tl.float32)
        bad = x != x
    elif FP8 > 0:  # float8 read as its bytes and decoded here: every architecture, any backend
        byte = tl.load(x_ptr + plane * plane_stride + flat, mask=valid, other=0).to(tl.int32)
        if FP8 == 1:  # float8_e4m3fn: bias 7, 3 mantissa bits, no Inf, NaN is S.1111.111
            exponent, mantissa, bias, bits = (byte >> 3) & 15, byte & 7, 7, 3
            bad = (byte & 0x7F) == 0x7F
        else:  # float8_e5m2: bias 15, 2 mantissa bits, exponent 11111 is Inf or NaN
            exponent, mantissa, bias, bits = (byte >> 2) & 31, byte & 3, 15, 2
            bad = exponent == 31
        implicit = tl.where(exponent > 0, 1 << bits, 0)
        power = (tl.maximum(exponent, 1) - bias - bits).to(tl.float32)
        x = ((implicit + mantissa).to(tl.float32) * tl.exp2(power)) * tl.where(byte >= 128, -1.0, 1.0)
    else:
        x = tl.load(x_ptr + plane * plane_stride + flat, mask=valid, other=0.0).to(tl.float32)
        bad = (x != x) | (tl.abs(x) == float("inf"))
    bad = bad & valid
    return tl.where(bad | ~valid, 0.0, x), bad, valid


@triton.jit
def _trajectory_stats_kernel(
    x_ptr,
    scale_ptr,
    cos_h_ptr,
    sin_h_ptr,
    cos_w_ptr,
    sin_w_ptr,
    scratch_ptr,
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
    BR: tl.constexpr,
    HF_DEN: tl.constexpr,
    SCALARS: tl.constexpr,
    CONTRAST: tl.constexpr,
    ISOLATION: tl.constexpr,
    BINS: tl.constexpr,
    EPS_REL: tl.constexpr,
    EPS_ABS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    plane = tl.program_id(0)
    r = tl.arange(0, BR)[:, None]  # rows of a block
    k = tl.arange(0, BR)[None, :]  # columns of a block of the contraction dimension
    cols = tl.arange(0, BW)[None, :]
    count = (H * W).to(tl.float32)
    # three [BH, BW] fp32 planes per program: Xc, then power, then the log spectrum | A | B
    xc_ptr = scratch_ptr + plane * (3 * BH * BW)
    a_ptr = xc_ptr + BH * BW
    b_ptr = a_ptr + BH * BW
    base = out_ptr + plane * (SCALARS + BINS)

    # pass 1: mean over finite values, non-finite count
    total_x = tl.zeros([], tl.float32)
    nonfinite = tl.zeros([], tl.float32)
    for r0 in range(0, BH, BR):
        x, bad, valid = _load_rows(
            x_ptr, scale_ptr, plane, r0 + r, cols, H, W, plane_stride, scale_stride, GROUP, PACKED, FP8
        )
        total_x += tl.sum(x)
        nonfinite += tl.sum(bad.to(tl.float32))
    mean = total_x / count

    # pass 2: centred plane Xc to scratch; spatial statistics (2 x 2 polyphase energies, crest, kurtosis)
    sums = tl.zeros([8], tl.float32)  # energy then pixel count of phases 00, 01, 10, 11
    slot = tl.arange(0, 8)
    sq_sum = tl.zeros([], tl.float32)
    quartic = tl.zeros([], tl.float32)
    abs_max = tl.zeros([], tl.float32)
    for r0 in range(0, BH, BR):
        rows = r0 + r
        x, bad, valid = _load_rows(
            x_ptr, scale_ptr, plane, rows, cols, H, W, plane_stride, scale_stride, GROUP, PACKED, FP8
        )
        xc = tl.where(valid, x - mean, 0.0)
        tl.store(xc_ptr + rows * BW + cols, xc)
        sq = xc * xc
        sq_sum += tl.sum(sq)
        quartic += tl.sum(sq * sq)
        abs_max = tl.maximum(abs_max, tl.max(tl.abs(xc)))
        for phase in tl.static_range(4):
            mask = valid & ((rows % 2) == phase // 2) & ((cols % 2) == phase % 2)
            sums += tl.where(slot == phase, _masked_sum(sq, mask), 0.0)
            sums += tl.where(slot == phase + 4, tl.sum(mask.to(tl.float32)), 0.0)
    var_s = sq_sum / count
    m00 = tl.sum(tl.where(slot == 0, sums, 0.0)) / tl.maximum(tl.sum(tl.where(slot == 4, sums, 0.0)), 1.0)
    m01 = tl.sum(tl.where(slot == 1, sums, 0.0)) / tl.maximum(tl.sum(tl.where(slot == 5, sums, 0.0)), 1.0)
    m10 = tl.sum(tl.where(slot == 2, sums, 0.0)) / tl.maximum(tl.sum(tl.where(slot == 6, sums, 0.0)), 1.0)
    m11 = tl.sum(tl.where(slot == 3, sums, 0.0)) / tl.maximum(tl.sum(tl.where(slot == 7, sums, 0.0)), 1.0)
    phase_total = tl.maximum(m00 + m01 + m10 + m11, EPS_ABS)
    tl.store(base + CONTRAST + 0, (m00 - m01 - m10 + m11) / phase_total)  # stats.PARITY_PATTERNS' signs
    tl.store(base + CONTRAST + 1, (m00 + m01 - m10 - m11) / phase_total)
    tl.store(base + CONTRAST + 2, (m00 - m01 + m10 - m11) / phase_total)
    tl.store(base + 7, abs_max / tl.sqrt(var_s + EPS_ABS))
    tl.store(base + 8, (quartic / count) / (var_s * var_s + EPS_ABS))
    tl.debug_barrier()

    # pass 3: isolation D = (9 Xc - box3x3(Xc)) / 8, edges replicated (nine clamped reads of Xc):
    # its sums and its extremes with where they sit; then max |D - mean D| / std D
    d_sum = tl.zeros([], tl.float32)
    d_sq = tl.zeros([], tl.float32)
    d_max = tl.full([], float("-inf"), tl.float32)
    d_min = tl.full([], float("inf"), tl.float32)
    max_at = tl.zeros([], tl.int32)
    min_at = tl.zeros([], tl.int32)
    for r0 in range(0, BH, BR):
        rows = r0 + r
        valid = (rows < H) & (cols < W)
        box = tl.zeros([BR, BW], tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                ry = tl.minimum(tl.maximum(rows + dy - 1, 0), H - 1)
                cx = tl.minimum(tl.maximum(cols + dx - 1, 0), W - 1)
                box += tl.load(xc_ptr + ry * BW + cx, mask=valid, other=0.0)
        d = tl.where(valid, (9.0 * tl.load(xc_ptr + rows * BW + cols) - box) / 8.0, 0.0)
        d_sum += tl.sum(d)
        d_sq += tl.sum(d * d)
        flat_hi = tl.reshape(tl.where(valid, d, float("-inf")), [BR * BW])
        flat_lo = tl.reshape(tl.where(valid, d, float("inf")), [BR * BW])
        block_max = tl.max(flat_hi, axis=0)
        block_min = tl.min(flat_lo, axis=0)
        max_at = tl.where(block_max > d_max, tl.argmax(flat_hi, axis=0) + r0 * BW, max_at)
        min_at = tl.where(block_min < d_min, tl.argmin(flat_lo, axis=0) + r0 * BW, min_at)
        d_max = tl.maximum(d_max, block_max)
        d_min = tl.minimum(d_min, block_min)
    d_mean = d_sum / count
    d_std = tl.sqrt(tl.maximum(d_sq / count - d_mean * d_mean, 0.0) + EPS_ABS)
    upper = d_max - d_mean >= d_mean - d_min
    at = tl.where(upper, max_at, min_at)  # padded index r * BW + c
    tl.store(base + ISOLATION, tl.where(upper, d_max - d_mean, d_mean - d_min) / d_std)
    tl.store(base + ISOLATION + 1, ((at // BW) * W + at % BW).to(tl.float32))

    # pass 3, first half of the DFT: A = Xc C_W, B = Xc S_W, BR rows at a time, to scratch
    for r0 in range(0, BH, BR):
        rows = r0 + r
        acc_a = tl.zeros([BR, BW], tl.float32)
        acc_b = tl.zeros([BR, BW], tl.float32)
        for k0 in range(0, BW, BR):
            xc = tl.load(xc_ptr + rows * BW + k0 + k)
            cos_w = tl.load(cos_w_ptr + (k0 + tl.arange(0, BR))[:, None] * BW + cols)
            sin_w = tl.load(sin_w_ptr + (k0 + tl.arange(0, BR))[:, None] * BW + cols)
            acc_a += tl.dot(xc, cos_w, input_precision=PRECISION)
            acc_b += tl.dot(xc, sin_w, input_precision=PRECISION)
        tl.store(a_ptr + rows * BW + cols, acc_a)
        tl.store(b_ptr + rows * BW + cols, acc_b)
    tl.debug_barrier()

    # pass 4, second half: Re F = C_H A - S_H B, -Im F = S_H A + C_H B; power to scratch (over Xc);
    # total, high-frequency and radial-bin energies. Bands in exact integer arithmetic, as
    # stats.radial_bands: r^2 (HW)^2 = ky^2 W^2 + kx^2 H^2
    hw2 = (H * W).to(tl.int64) * (H * W)
    kx = _freq(cols, W)
    bin_slot = tl.arange(0, BINS)
    profile = tl.zeros([BINS], tl.float32)
    total = tl.zeros([], tl.float32)
    hf_power = tl.zeros([], tl.float32)
    hf_count = tl.zeros([], tl.float32)
    for r0 in range(0, BH, BR):
        rows = r0 + r
        re = tl.zeros([BR, BW], tl.float32)
        im = tl.zeros([BR, BW], tl.float32)
        for k0 in range(0, BH, BR):
            cos_h = tl.load(cos_h_ptr + rows * BH + k0 + k)
            sin_h = tl.load(sin_h_ptr + rows * BH + k0 + k)
            a = tl.load(a_ptr + (k0 + tl.arange(0, BR))[:, None] * BW + cols)
            b = tl.load(b_ptr + (k0 + tl.arange(0, BR))[:, None] * BW + cols)
            re += tl.dot(cos_h, a, input_precision=PRECISION) - tl.dot(sin_h, b, input_precision=PRECISION)
            im += tl.dot(sin_h, a, input_precision=PRECISION) + tl.dot(cos_h, b, input_precision=PRECISION)
        valid = (rows < H) & (cols < W)
        is_dc = (rows == 0) & (cols == 0)
        power = tl.where(valid & ~is_dc, re * re + im * im, 0.0)
        tl.store(xc_ptr + rows * BW + cols, power)
        ky = _freq(rows, H)
        r2 = ky * ky * W * W + kx * kx * H * H
        high = valid & (r2 * HF_DEN * HF_DEN >= hw2)
        total += tl.sum(power)
        hf_power += _masked_sum(power, high)
        hf_count += tl.sum(high.to(tl.float32))
        bins = tl.zeros([BR, BW], dtype=tl.int32)
        for b_ in tl.static_range(1, BINS):
            bins += (b_ * b_ * hw2 <= 2 * BINS * BINS * r2).to(tl.int32)
        for b_ in tl.static_range(BINS):
            profile += tl.where(bin_slot == b_, _masked_sum(power, bins == b_), 0.0)
    tl.store(base + 0, mean)
    tl.store(base + 1, total / (count * count))  # Parseval
    tl.store(base + 5, nonfinite)
    total = tl.maximum(total, EPS_ABS)
    tl.store(base + 2, hf_power / total)
    tl.store(base + SCALARS + bin_slot, profile / total)
    tl.debug_barrier()

    # pass 5: L = log(P + eps) in place of P; spectral flatness of the high band; mean of L for DC
    eps = EPS_REL * total / count + EPS_ABS
    log_sum = tl.zeros([], tl.float32)
    hf_log_sum = tl.zeros([], tl.float32)
    for r0 in range(0, BH, BR):
        rows = r0 + r
        valid = (rows < H) & (cols < W)
        r2 = _freq(rows, H) * _freq(rows, H) * W * W + kx * kx * H * H
        high = valid & (r2 * HF_DEN * HF_DEN >= hw2)
        log_p = tl.where(valid, tl.log(tl.load(xc_ptr + rows * BW + cols) + eps), 0.0)
        tl.store(xc_ptr + rows * BW + cols, log_p)
        is_dc = (rows == 0) & (cols == 0)
        log_sum += _masked_sum(log_p, ~is_dc)
        hf_log_sum += _masked_sum(log_p, high)
    hf_log_mean = hf_log_sum / tl.maximum(hf_count, 1.0)
    flatness = tl.exp(hf_log_mean) / (hf_power / tl.maximum(hf_count, 1.0) + eps)
    tl.store(base + 6, tl.where(hf_count > 0, flatness, 0.0))
    tl.debug_barrier()
    tl.store(xc_ptr, log_sum / tl.maximum(count - 1.0, 1.0))  # DC: mean removal zeroed it
    tl.debug_barrier()

    # pass 6: residual R = L - box3x3(L) / 9 (periodic, from 9 shifted reads); its high-band peak
    peak = tl.full([], float("-inf"), tl.float32)
    peak_at = tl.zeros([], tl.int32)
    for r0 in range(0, BH, BR):
        rows = r0 + r
        valid = (rows < H) & (cols < W)
        r2 = _freq(rows, H) * _freq(rows, H) * W * W + kx * kx * H * H
        high = valid & (r2 * HF_DEN * HF_DEN >= hw2)
        box = tl.zeros([BR, BW], tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                ry = (rows + dy - 1 + H) % H
                cx = (cols + dx - 1 + W) % W
                box += tl.load(xc_ptr + ry * BW + cx, mask=valid, other=0.0)
        residual = tl.where(high, tl.load(xc_ptr + rows * BW + cols) - box / 9.0, float("-inf"))
        flat_residual = tl.reshape(residual, [BR * BW])
        block_peak = tl.max(flat_residual, axis=0)
        block_at = tl.argmax(flat_residual, axis=0) + r0 * BW
        peak_at = tl.where(block_peak > peak, block_at, peak_at)
        peak = tl.maximum(peak, block_peak)
    has_band = peak > float("-inf")
    fy = _freq(peak_at // BW, H).to(tl.float32) / H
    fx = _freq(peak_at % BW, W).to(tl.float32) / W
    tl.store(base + 3, tl.where(has_band, 0.5 * peak, 0.0))
    tl.store(base + 4, tl.where(has_band, tl.sqrt(fy * fy + fx * fx), 0.0))


#: Rows per block (and contraction chunk): sizes every tile and tl.dot operand of the kernel.
ROW_BLOCK = 16
NUM_WARPS = 4


@functools.lru_cache(maxsize=32)
def _tiles(n: int, block: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [block, block] fp32 DFT tiles for an axis of length n, zero-padded."""
    k = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, k).remainder(n) / n
    tiles = torch.zeros(2, block, block, dtype=torch.float64)
    tiles[0, :n, :n] = torch.cos(angle)
    tiles[1, :n, :n] = torch.sin(angle)
    cos, sin = tiles.float().to(device).unbind(0)
    return cos.contiguous(), sin.contiguous()


def launch_constants(h: int, w: int, dtype: torch.dtype | None, group: int = 2) -> dict[str, Any]:
    """The compile-time constants of the kernel for one input (also the AOT check's); dtype None is
    a PackedInt4 with `group` values per scale."""
    bh, bw = padded_side(h), padded_side(w)
    return dict(
        GROUP=group,
        PACKED=dtype is None,
        FP8=0 if dtype is None else _FP8_KIND.get(dtype, 0),
        BH=bh,
        BW=bw,
        BR=min(ROW_BLOCK, bh, bw),
        HF_DEN=round(1 / HF_CUTOFF),
        SCALARS=_SCALARS,
        CONTRAST=_CONTRAST,
        ISOLATION=_ISOLATION,
        BINS=RADIAL_BINS,
        EPS_REL=EPS_REL,
        EPS_ABS=EPS_ABS,
        PRECISION="ieee" if interpreted() else "tf32x3",
    )


def trajectory_stats_triton(x: torch.Tensor | PackedInt4) -> TrajectoryStats:
    """One kernel launch for the whole [B, C, H, W] batch."""
    if isinstance(x, PackedInt4):
        b, c, h, w = x.shape
        data, scales = x.data.contiguous(), x.scales.contiguous()
        plane_stride, scale_stride = data.shape[-1], scales.shape[-1]
        constants = launch_constants(h, w, None, x.group_size)
    else:
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"Triton trajectory_stats reads {SUPPORTED_DTYPES}, got {x.dtype}")
        b, c, h, w = x.shape
        data, scales = x.contiguous(), x.new_empty(0, dtype=torch.float16)  # no upcast copy
        if data.dtype in _FP8_KIND:
            data = data.view(torch.uint8)  # decoded in the kernel (Triton has no e4m3 type before sm_89)
        plane_stride, scale_stride = h * w, 0
        constants = launch_constants(h, w, x.dtype)
    bh, bw = int(constants["BH"]), int(constants["BW"])
    cos_h, sin_h = _tiles(h, bh, str(data.device))
    cos_w, sin_w = _tiles(w, bw, str(data.device))
    scratch = torch.empty(b * c, 3, bh, bw, dtype=torch.float32, device=data.device)
    out = torch.empty(b * c, _OUT, dtype=torch.float32, device=data.device)
    _trajectory_stats_kernel[(b * c,)](
        data, scales, cos_h, sin_h, cos_w, sin_w, scratch, out, h, w, plane_stride, scale_stride,
        **constants, num_warps=NUM_WARPS,
    )  # fmt: skip
    out = out.view(b, c, _OUT)
    return TrajectoryStats(
        mean=out[..., 0],
        var=out[..., 1],
        hf_ratio=out[..., 2],
        sr_peak=out[..., 3],
        sr_freq=out[..., 4],
        radial_profile=out[..., _SCALARS:],
        nonfinite=out[..., 5].long(),
        phase_contrast=out[..., _CONTRAST : _CONTRAST + 3],
        hf_flatness=out[..., 6],
        change_flatness=out[..., 6],  # previous = 0 (dispatch sets it otherwise)
        crest=out[..., 7],
        change_crest=out[..., 7],  # previous = 0 (dispatch sets it otherwise)
        kurtosis=out[..., 8],
        isolation=out[..., _ISOLATION],
        isolation_at=out[..., _ISOLATION + 1],
        change_phase_contrast=out[..., _CONTRAST : _CONTRAST + 3],  # previous = 0 (as above)
    )
