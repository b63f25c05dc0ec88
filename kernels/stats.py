"""The per-step statistics returned by `trajectory_stats`, shared by every backend."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields

import torch

#: Radial frequency (cycles/pixel) at and above which spectrum bins count as high frequency.
HF_CUTOFF = 0.25
#: Number of uniform radial bins between 0 and the corner frequency sqrt(0.5).
RADIAL_BINS = 8
_HF_DEN = round(1 / HF_CUTOFF)
#: log(P + EPS_REL * mean(P) + EPS_ABS): keeps the log spectrum finite for empty bins (every backend).
EPS_REL = 1e-10
EPS_ABS = 1e-30


#: Signs of the 2 x 2 polyphase components (order 00, 01, 10, 11) for the checkerboard (-1)^(i+j),
#: row (-1)^i and column (-1)^j patterns.
PARITY_PATTERNS = ((1.0, -1.0, -1.0, 1.0), (1.0, 1.0, -1.0, -1.0), (1.0, -1.0, 1.0, -1.0))


def padded_side(n: int) -> int:
    """The side a Triton kernel tile has for a latent side of n: the next power of two, at least 16
    (one compiled kernel per padded plane size)."""
    return max(16, 1 << (n - 1).bit_length())


def interpreted() -> bool:
    """Triton kernels run in its CPU interpreter (the tests), which compiles nothing."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 4:
        raise ValueError(f"trajectory_stats expects [B, C, H, W], got shape {tuple(shape)}")


def radial_bands(ky: torch.Tensor, kx: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high-frequency mask, radial bin) for integer |frequency| indices ky (of h) and kx (of w).

    Exact integer arithmetic on r^2 (HW)^2 = ky^2 W^2 + kx^2 H^2, so that every backend puts a bin
    that sits exactly on a band edge (common at power-of-two sizes) on the same side.
    """
    r2 = ky.long() ** 2 * w**2 + kx.long() ** 2 * h**2
    scale = (h * w) ** 2
    high = r2 * _HF_DEN**2 >= scale
    bins = sum(((k * k * scale) <= 2 * RADIAL_BINS**2 * r2).long() for k in range(1, RADIAL_BINS))
    return high, torch.as_tensor(bins)


@dataclass(frozen=True)
class TrajectoryStats:
    """Statistics of one [B, C, H, W] tensor; every field is [B, C] unless noted.

    mean, var        per-channel mean and (population) variance over finite values
    hf_ratio         fraction of spectral energy at radial frequency >= HF_CUTOFF
    sr_peak          peak of the spectral residual R = L - box3x3(L) in the high-frequency band,
                     L the log amplitude spectrum (Hou & Zhang 2007)
    sr_freq          radial frequency (cycles/pixel) where that peak sits
    radial_profile   [B, C, RADIAL_BINS] fraction of spectral energy per radial bin
    nonfinite        count of NaN/Inf values (int64)
    phase_contrast   [B, C, 3] signed energy contrast between the 2 x 2 polyphase components: with
                     m_ab the mean of (x - mean)^2 over the pixels (i, j) with (i mod 2, j mod 2) =
                     (a, b), sum s_ab m_ab / sum m_ab for each pattern s of PARITY_PATTERNS
                     (checkerboard, rows, columns). It is the DFT of (x - mean)^2 at that pattern's
                     Nyquist frequency relative to its DC, i.e. how much the spectrum correlates with
                     its own replica mirrored about Nyquist: a multiplicative 2-periodic modulation
                     x (1 + a s) makes it about 2a on any content; an additive one shows in sr_peak
                     instead. `phase_imbalance` is its largest magnitude over the patterns.
    hf_flatness      spectral flatness (geometric over arithmetic mean of power) in the band
                     r >= HF_CUTOFF: near 0.56 for white noise, low for structured content
    change_flatness  hf_flatness of x - previous, previous the estimate of the step before
                     (`trajectory_stats(x, previous=...)`; 0 without one, so hf_flatness itself):
                     image content changes smoothly from step to step, noise drawn afresh at each
                     denoiser call does not, so the change is flat where x itself may not be
    crest            max |x - mean| / std (finite overflow and saturation raise it)
    change_crest     crest of x - previous (crest itself without one): a value that jumps between
                     two steps stands out in the change even where the scene's own extremes (a small
                     bright object on a flat background) hide it in x
    kurtosis         mean (x - mean)^4 / var^2 (3 for Gaussian values)
    isolation        max |D - mean D| / std D, D = x - the mean of its 8 neighbours (edges replicated):
                     how far one value stands from the values around it. Image content is smooth in
                     the latent (a small object spans several values); a stuck activation is alone
    isolation_at     the flat index i * W + j of that value (float): a stuck token is at the same
                     place in every channel, a scene's most isolated value mostly is not
    change_phase_contrast  [B, C, 3] phase_contrast of x - previous (phase_contrast itself without
                     one). A 2 x 2 gain pattern in the denoiser's output (uneven overlap, an output
                     projection whose weights differ per patch position) scales each phase of every
                     step's update; x itself is mostly the scene, whose own 2 x 2 structure hides it

    Not from the tensor but from the denoiser's attention at the same step, when the deployment runs
    the attention probes (None otherwise), [B, L] for L probed blocks (attention.py):
    attn_entropy     image-query -> text-key attention entropy / log(text tokens)
    attn_rank        effective rank of the block's image-token output / min(tokens, width)
    """

    mean: torch.Tensor
    var: torch.Tensor
    hf_ratio: torch.Tensor
    sr_peak: torch.Tensor
    sr_freq: torch.Tensor
    radial_profile: torch.Tensor
    nonfinite: torch.Tensor
    phase_contrast: torch.Tensor
    hf_flatness: torch.Tensor
    change_flatness: torch.Tensor
    crest: torch.Tensor
    change_crest: torch.Tensor
    kurtosis: torch.Tensor
    isolation: torch.Tensor
    isolation_at: torch.Tensor
    change_phase_contrast: torch.Tensor
    attn_entropy: torch.Tensor | None = None
    attn_rank: torch.Tensor | None = None

    @property
    def phase_imbalance(self) -> torch.Tensor:
        """[B, C] max over the parity patterns of |phase_contrast|."""
        return self.phase_contrast.abs().amax(dim=-1)

    def to(self, device: str | torch.device) -> TrajectoryStats:
        return TrajectoryStats(**{k: v.to(device) for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The fields this object has (the optional ones only when set)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    @staticmethod
    def _join(parts: list[TrajectoryStats], join: Callable[..., torch.Tensor], dim: int) -> TrajectoryStats:
        """Fields joined with torch.stack or torch.cat; an optional field that some part lacks is None."""
        out: dict[str, torch.Tensor | None] = {}
        for f in fields(TrajectoryStats):
            values = [getattr(p, f.name) for p in parts]
            out[f.name] = None if any(v is None for v in values) else join(values, dim)
        return TrajectoryStats(**out)  # type: ignore[arg-type]

    @staticmethod
    def stack(series: list[TrajectoryStats], dim: int = 1) -> TrajectoryStats:
        """Stack per-step stats into fields of shape [B, S, ...] (dim=1) for a whole trajectory."""
        return TrajectoryStats._join(series, torch.stack, dim)

    @staticmethod
    def cat(parts: list[TrajectoryStats], dim: int = 0) -> TrajectoryStats:
        return TrajectoryStats._join(parts, torch.cat, dim)

    def index(self, idx: int | slice | torch.Tensor) -> TrajectoryStats:
        return TrajectoryStats(**{k: v[idx] for k, v in self.as_dict().items()})


#: The fields every backend computes from the tensor (the others come from the attention probes).
LATENT_FIELDS = tuple(f.name for f in fields(TrajectoryStats) if f.default is MISSING)


def oracle_tolerance(field: str) -> float:
    """rtol = atol within which a backend's statistic equals the float64 oracle's on the same input
    values (the interpreter tests and benchmarks/gpu_check.py both hold the kernel to it): sr_peak is
    the log of small spectral bins, so float32 rounding shows more there."""
    return 5e-4 if field == "sr_peak" else 2e-5
