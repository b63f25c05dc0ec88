"""Drills: fault injection into a running trajectory, off unless a request asks for one.

Each kind is a transform T of a [B, C, H, W] denoised estimate; `strength` is relative to its
per-channel std (additive kinds) or a fraction (the others). A drill runs in one of two modes:

    step   at step N only, the latents move so that step N's x0_hat becomes T(x0_hat) (see
           `x0_to_latent_delta`); the rest of the trajectory carries the fault on, and the model
           may correct it. A faulty denoising step.
    model  from step N on, every call of the denoiser is rewritten by a forward hook: its prediction
           of the clean latents x0 = x_t - sigma v becomes T(x0) (v' = (x_t - T(x0)) / sigma). A
           persistent fault of the model itself, as a broken layer or a bad adapter would be.

Model mode rewrites x0 for every kind but patch_gain, which scales the prediction v itself (`predict`).

Kinds (default mode in brackets):

    aliasing      [step]  + strength * std * cos(2 pi f i) cos(2 pi f j), f = `freq` cycles/px
    collapse      [step]  every channel shrunk toward its mean: m + (1 - strength)(x - m)
    blur          [step]  (1 - strength) x + strength * gaussian_blur(x, sigma 1.5 px)
    nan           [step]  NaN in a `strength` fraction of the values (at least one)
    checkerboard  [model] x * (1 + strength * (-1)^(i + j)): the multiplicative 2 x 2-periodic
                          modulation of transposed-convolution / patch un-embedding artifacts
    grain         [model] + strength * std * fresh white noise at every call: a noisy denoiser
    spike         [model] one value in 2000 (at least one per plane, fixed positions) pushed to
                          +- (3 + 30 strength) std: finite overflow building up in a few activations
    patch_gain    [model] the denoiser's prediction v times (1 + strength) at one of the 2 x 2 latent
                          positions (i, j even): an output projection whose weights for one patch
                          position are off (a gain, not an offset; as a step drill, x0_hat's). Held
                          out: no detector was tuned on it and the classifier does not train on it

Spec syntax: KIND[:step=N,strength=X,freq=F,mode=step|model], e.g. `aliasing:step=4,strength=0.5`
or `checkerboard:step=2,strength=0.2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

DrillKind = Literal["aliasing", "collapse", "blur", "nan", "checkerboard", "grain", "spike", "patch_gain"]
DrillMode = Literal["step", "model"]
DRILL_KINDS: tuple[str, ...] = (
    "aliasing", "collapse", "blur", "nan", "checkerboard", "grain", "spike", "patch_gain"
)  # fmt: skip
DEFAULT_STRENGTH = {
    "aliasing": 0.5,
    "collapse": 0.5,
    "blur": 0.8,
    "nan": 0.01,
    "checkerboard": 0.2,
    "grain": 0.3,
    "spike": 0.5,
    "patch_gain": 0.2,
}
DEFAULT_MODE: dict[str, DrillMode] = {
    k: "model" if k in ("checkerboard", "grain", "spike", "patch_gain") else "step" for k in DRILL_KINDS
}
MAX_STRENGTH = {"aliasing": 10.0, "grain": 10.0}  # the others: 1
SPIKE_EVERY = 2000


class DrillSpecError(ValueError):
    """A drill spec that cannot be parsed or is out of range."""


@dataclass(frozen=True)
class Drill:
    kind: DrillKind
    step: int = 2
    strength: float = 0.5
    freq: float = 0.5
    mode: DrillMode | None = None  # None: the kind's default

    def __post_init__(self) -> None:
        if self.kind not in DRILL_KINDS:
            raise DrillSpecError(
                f"unknown drill kind {self.kind!r}; expected one of {', '.join(DRILL_KINDS)}"
            )
        if self.step < 0:
            raise DrillSpecError(f"drill step must be >= 0, got {self.step}")
        limit = MAX_STRENGTH.get(self.kind, 1.0)
        if not math.isfinite(self.strength) or not 0.0 < self.strength <= limit:
            raise DrillSpecError(
                f"drill strength for {self.kind} must be in (0, {limit:g}], got {self.strength}"
            )
        if not 0.0 < self.freq <= 0.5:
            raise DrillSpecError(f"drill freq must be in (0, 0.5] cycles/pixel, got {self.freq}")
        if self.mode is None:
            object.__setattr__(self, "mode", DEFAULT_MODE[self.kind])
        if self.mode not in ("step", "model"):
            raise DrillSpecError(f"drill mode must be step or model, got {self.mode!r}")

    @staticmethod
    def parse(spec: str) -> Drill:
        kind, _, params = spec.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in DRILL_KINDS:
            raise DrillSpecError(
                f"unknown drill kind {kind!r} in {spec!r}; expected one of {', '.join(DRILL_KINDS)}"
            )
        values: dict[str, float] = {}
        mode: str | None = None
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if sep and key == "mode":
                mode = raw.lower()
                continue
            if not sep or key not in ("step", "strength", "freq"):
                raise DrillSpecError(
                    f"malformed drill parameter {item!r} in {spec!r}; use step=N,strength=X,freq=F,mode=M"
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
            mode=mode,  # type: ignore[arg-type]
        )

    def __str__(self) -> str:
        extra = f",freq={self.freq:g}" if self.kind == "aliasing" else ""
        mode = f",mode={self.mode}" if self.mode != DEFAULT_MODE[self.kind] else ""
        return f"{self.kind}:step={self.step},strength={self.strength:g}{extra}{mode}"

    def transform(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The faulty version of a [B, C, H, W] denoised estimate (float32)."""
        x0 = x0.float()
        mean = x0.mean(dim=(-2, -1), keepdim=True)
        std = x0.std(dim=(-2, -1), keepdim=True)
        h, w = x0.shape[-2:]
        if self.kind == "aliasing":
            yy = torch.arange(h, dtype=torch.float32, device=x0.device)[:, None]
            xx = torch.arange(w, dtype=torch.float32, device=x0.device)[None, :]
            grid = torch.cos(2 * math.pi * self.freq * yy) * torch.cos(2 * math.pi * self.freq * xx)
            return x0 + self.strength * std * grid
        if self.kind == "collapse":
            return mean + (1 - self.strength) * (x0 - mean)
        if self.kind == "blur":
            return (1 - self.strength) * x0 + self.strength * _gaussian_blur(x0, sigma=1.5)
        if self.kind == "checkerboard":
            parity = (
                torch.arange(h, device=x0.device)[:, None] + torch.arange(w, device=x0.device)[None, :]
            ) % 2
            return x0 * (1 + self.strength * (1 - 2 * parity.float()))
        if self.kind == "patch_gain":
            return x0 * self._patch_gain(h, w, x0.device)
        if self.kind == "grain":
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
            return x0 + self.strength * std * noise
        b, c = x0.shape[:2]
        if self.kind == "spike":  # the same positions at every call: a few stuck activations
            n = h * w
            fixed = torch.Generator().manual_seed(n)
            positions = torch.randperm(n, generator=fixed)[: max(1, n // SPIKE_EVERY)].to(x0.device)
            signs = torch.where(torch.arange(positions.numel(), device=x0.device) % 2 == 0, 1.0, -1.0)
            out = x0.clone().view(b, c, n)
            out[..., positions] = mean.view(b, c, 1) + signs * (3 + 30 * self.strength) * std.view(b, c, 1)
            return out.view_as(x0)
        n = x0[0].numel()  # nan: a strength fraction of each sample's values
        positions = torch.randperm(n, generator=generator)[: max(1, round(self.strength * n))]
        out = x0.clone().view(b, n)
        out[:, positions.to(x0.device)] = float("nan")
        return out.view_as(x0)

    def predict(
        self, x_t: torch.Tensor, v: torch.Tensor, sigma: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The faulty model-mode prediction for latents x_t [B, C, H, W] at noise level sigma > 0
        whose velocity prediction is v (float32): v' with x_t - sigma v' = T(x_t - sigma v), or
        for patch_gain the prediction itself scaled per patch position."""
        if self.kind == "patch_gain":
            return v * self._patch_gain(v.shape[-2], v.shape[-1], v.device)
        return (x_t - self.transform(x_t - sigma * v, generator)) / sigma

    def _patch_gain(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """[H, W]: 1 + strength where i and j are both even, 1 elsewhere."""
        even = (torch.arange(h, device=device)[:, None] % 2 == 0) & (torch.arange(w, device=device) % 2 == 0)
        return 1 + self.strength * even.float()

    def delta(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """T(x0) - x0: the change this drill makes to a [B, C, H, W] denoised estimate."""
        return self.transform(x0, generator) - x0.float()


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
