"""The per-step statistics returned by `trajectory_stats`, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

#: Radial frequency (cycles/pixel) at and above which spectrum bins count as high frequency.
HF_CUTOFF = 0.25
#: Number of uniform radial bins between 0 and the corner frequency sqrt(0.5).
RADIAL_BINS = 8
_HF_DEN = round(1 / HF_CUTOFF)
#: log(P + EPS_REL * mean(P) + EPS_ABS): keeps the log spectrum finite for empty bins (every backend).
EPS_REL = 1e-10
EPS_ABS = 1e-30


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
    """

    mean: torch.Tensor
    var: torch.Tensor
    hf_ratio: torch.Tensor
    sr_peak: torch.Tensor
    sr_freq: torch.Tensor
    radial_profile: torch.Tensor
    nonfinite: torch.Tensor

    def to(self, device: str | torch.device) -> TrajectoryStats:
        return TrajectoryStats(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def stack(series: list[TrajectoryStats], dim: int = 1) -> TrajectoryStats:
        """Stack per-step stats into fields of shape [B, S, ...] (dim=1) for a whole trajectory."""
        names = [f.name for f in fields(TrajectoryStats)]
        return TrajectoryStats(**{n: torch.stack([getattr(s, n) for s in series], dim) for n in names})

    @staticmethod
    def cat(parts: list[TrajectoryStats], dim: int = 0) -> TrajectoryStats:
        names = [f.name for f in fields(TrajectoryStats)]
        return TrajectoryStats(**{n: torch.cat([getattr(s, n) for s in parts], dim) for n in names})

    def index(self, idx: int | slice | torch.Tensor) -> TrajectoryStats:
        return TrajectoryStats(**{k: v[idx] for k, v in self.as_dict().items()})
