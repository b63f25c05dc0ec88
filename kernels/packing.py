"""A packed 4-bit format for keeping trajectories compactly: symmetric int4 with per-group scales.

Each [H, W] plane is flattened and cut into groups of `group_size` values (the last group padded
with zeros). A group stores one scale s = max|x| / 7 and one nibble per value, q = round(x / s) + 8
in 0..15, two nibbles per byte (even index in the low nibble). Decoding is (q - 8) * s.

Storage is 4 bits + 16 / group_size bits per value (4.25 bits at the default 64): 3.8x smaller
than bf16. Non-finite values cannot be represented and are refused at packing time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_GROUP = 64


@dataclass(frozen=True)
class PackedInt4:
    """data: uint8 [B, C, padded/2]; scales: float16 [B, C, padded/group_size]; shape: original."""

    data: torch.Tensor
    scales: torch.Tensor
    shape: tuple[int, int, int, int]
    group_size: int

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()


def pack_int4(x: torch.Tensor, group_size: int = DEFAULT_GROUP) -> PackedInt4:
    if x.ndim != 4:
        raise ValueError(f"pack_int4 expects [B, C, H, W], got shape {tuple(x.shape)}")
    if group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be even and >= 2, got {group_size}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("pack_int4 cannot represent NaN or Inf values")
    b, c, h, w = x.shape
    n = h * w
    padded = -(-n // group_size) * group_size
    flat = torch.nn.functional.pad(x.float().reshape(b, c, n), (0, padded - n))
    groups = flat.reshape(b, c, padded // group_size, group_size)
    scales = (groups.abs().amax(-1) / 7).to(torch.float16)
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("pack_int4: |x| > 4.5e5 overflows the float16 group scale")
    safe = torch.where(scales > 0, scales, 1.0).float()[..., None]
    q = (torch.round(groups / safe).clamp(-8, 7) + 8).to(torch.uint8).reshape(b, c, padded)
    data = q[..., 0::2] | (q[..., 1::2] << 4)
    return PackedInt4(data=data, scales=scales, shape=(b, c, h, w), group_size=group_size)


def unpack_int4(p: PackedInt4) -> torch.Tensor:
    """The float32 [B, C, H, W] tensor the packed values stand for."""
    b, c, h, w = p.shape
    q = torch.stack([p.data & 0xF, p.data >> 4], dim=-1).reshape(b, c, -1).float() - 8
    values = q.reshape(b, c, -1, p.group_size) * p.scales.float()[..., None]
    return values.reshape(b, c, -1)[..., : h * w].reshape(b, c, h, w)
