"""Drills: fault injection into a running trajectory, off unless a request asks for one.

A drill simulates a faulty denoising step: at step N it changes that step's denoised estimate
x0_hat by delta, by moving the latents the pipeline carries on by the matching amount
(see `x0_to_latent_delta`), so the monitor sees x0_hat + delta at step N and the rest of the
trajectory carries the fault forward. `strength` is relative to the per-channel std of x0_hat.

    aliasing  adds a cosine grid at `freq` cycles/pixel along both axes (0.5: checkerboard)
    collapse  shrinks every channel toward its mean: x0 <- m + (1 - strength)(x0 - m)
    blur      mixes in a Gaussian blur (sigma 1.5 px): x0 <- (1 - strength) x0 + strength blur(x0)
    nan       writes NaN into a `strength` fraction of the values (at least one)

Spec syntax: KIND[:step=N,strength=X,freq=F], e.g. `aliasing:step=4,strength=0.5`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

DrillKind = Literal["aliasing", "collapse", "blur", "nan"]
DRILL_KINDS: tuple[str, ...] = ("aliasing", "collapse", "blur", "nan")
DEFAULT_STRENGTH = {"aliasing": 0.5, "collapse": 0.5, "blur": 0.8, "nan": 0.01}


class DrillSpecError(ValueError):
    """A drill spec that cannot be parsed or is out of range."""


@dataclass(frozen=True)
class Drill:
    kind: DrillKind
    step: int = 2
    strength: float = 0.5
    freq: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in DRILL_KINDS:
            raise DrillSpecError(
                f"unknown drill kind {self.kind!r}; expected one of {', '.join(DRILL_KINDS)}"
            )
        if self.step < 0:
            raise DrillSpecError(f"drill step must be >= 0, got {self.step}")
        if not math.isfinite(self.strength) or not 0.0 < self.strength <= (
            10.0 if self.kind == "aliasing" else 1.0
        ):
            limit = "10" if self.kind == "aliasing" else "1"
            raise DrillSpecError(
                f"drill strength for {self.kind} must be in (0, {limit}], got {self.strength}"
            )
        if not 0.0 < self.freq <= 0.5:
            raise DrillSpecError(f"drill freq must be in (0, 0.5] cycles/pixel, got {self.freq}")

    @staticmethod
    def parse(spec: str) -> Drill:
        kind, _, params = spec.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in DRILL_KINDS:
            raise DrillSpecError(
                f"unknown drill kind {kind!r} in {spec!r}; expected one of {', '.join(DRILL_KINDS)}"
            )
        values: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in ("step", "strength", "freq"):
                raise DrillSpecError(
                    f"malformed drill parameter {item!r} in {spec!r}; use step=N,strength=X,freq=F"
                )
            try:
                values[key] = float(raw)
            except ValueError:
                raise DrillSpecError(f"drill parameter {key} must be a number, got {raw!r}") from None
        step = values.get("step", 2.0)
        if step != int(step):
            raise DrillSpecError(f"drill step must be an integer, got {step}")
        return Drill(
            kind=kind,  # type: ignore[arg-type]
            step=int(step),
            strength=values.get("strength", DEFAULT_STRENGTH[kind]),
            freq=values.get("freq", 0.5),
        )

    def __str__(self) -> str:
        extra = f",freq={self.freq:g}" if self.kind == "aliasing" else ""
        return f"{self.kind}:step={self.step},strength={self.strength:g}{extra}"

    def delta(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The change this drill makes to a [B, C, H, W] denoised estimate."""
        x0 = x0.float()
        mean = x0.mean(dim=(-2, -1), keepdim=True)
        std = x0.std(dim=(-2, -1), keepdim=True)
        if self.kind == "aliasing":
            h, w = x0.shape[-2:]
            yy = torch.arange(h, dtype=torch.float32)[:, None]
            xx = torch.arange(w, dtype=torch.float32)[None, :]
            grid = torch.cos(2 * math.pi * self.freq * yy) * torch.cos(2 * math.pi * self.freq * xx)
            return self.strength * std * grid.to(x0.device)
        if self.kind == "collapse":
            return -self.strength * (x0 - mean)
        if self.kind == "blur":
            return self.strength * (_gaussian_blur(x0, sigma=1.5) - x0)
        delta = torch.zeros_like(x0)
        n = x0[0].numel()
        count = max(1, round(self.strength * n))
        idx = torch.randperm(n, generator=generator)[:count].to(x0.device)
        delta.view(x0.shape[0], -1)[:, idx] = float("nan")
        return delta


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)
