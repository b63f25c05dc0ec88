"""The detector contract: fit on benign trajectories, score steps, calibrate at a target FPR, predict.

A trajectory batch is a `TrajectoryStats` whose fields are [N, S, C] (N runs, S steps, C channels),
with the S noise levels `sigmas` the steps were taken at. A subclass names what it reads (`feature`:
[..., K], usually one value per channel, or K bands or features), which side of it is risky
(`direction`) and how the K values combine into P part scores (`combine`; by default `reduce`, mean
or max, over the channels, and with `parts` > 1 over the channels of each of the K = C x parts
statistics; a subclass may combine its own way, e.g. a learned model); the base class derives the rest:

    z[n, s, k] = direction * (f[n, s, k] - loc[s, k]) / scale[s, k]      per-step envelope (0: |z|)
    r[n, s, p] = combine_k z[n, s, k]                                    P part scores
    score      = max_p (r - loc2[s, p]) / scale2[s, p]                   each part step-normalised
    request    = max_s score,  flagged when > threshold

`fit` learns the envelope (loc, scale, loc2, scale2) on one benign set. scale2 is tail-matched:
(the part's 99th percentile at that step - loc2) / 2.326, the standard deviation for a normal part,
wider where a step's benign tail is heavy. With the standard deviation, the steps with heavy benign
tails (the early ones, where the image forms) set the request maximum's threshold, and a fault that
shows only at the light-tailed late steps stays under it however far it stands out there (tiny-flux,
grain 0.2 from step 8: within 2 steps 0.08 with the std, 1.00 tail-matched; README, round 5).
`calibrate` sets the one threshold on a held-out benign set so that P(max_s score > threshold) <= fpr
per request (the split conformal quantile: the ceil((n + 1)(1 - fpr))-th smallest held-out request
score). Envelopes are keyed by noise level and interpolated linearly in sigma, so a request may use
another schedule.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from scipy import stats as scipy_stats

from latentguard.detectors.results import DetectorResult
from latentguard.kernels import TrajectoryStats

_MIN_SCALE = 1e-6
#: scale2 maps each step's benign part scores so that this quantile lands where a normal's would
TAIL_QUANTILE = 0.99
_NORMAL_AT_TAIL = float(scipy_stats.norm.ppf(TAIL_QUANTILE))  # 2.326


class NotFittedError(RuntimeError):
    """The detector was used before fit/calibrate (or load_state_dict)."""


class CalibrationError(ValueError):
    """Calibration data cannot support the requested false-positive rate."""


def interp_sigma(table: torch.Tensor, grid: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of table [K, ...] defined at increasing `grid` [K], at `sigma` [...]."""
    sigma = sigma.to(grid.dtype).clamp(grid[0], grid[-1])
    hi = torch.searchsorted(grid, sigma.contiguous()).clamp(1, len(grid) - 1) if len(grid) > 1 else None
    if hi is None:
        return table[torch.zeros_like(sigma, dtype=torch.long)]
    lo = hi - 1
    w = (sigma - grid[lo]) / (grid[hi] - grid[lo]).clamp_min(1e-12)
    w = w.reshape(tuple(w.shape) + (1,) * (table.ndim - 1))
    return table[lo] * (1 - w) + table[hi] * w


def conformal_threshold(request_scores: torch.Tensor, fpr: float) -> float:
    n = request_scores.numel()
    k = math.ceil((n + 1) * (1 - fpr) - 1e-9)  # exact at fpr = r / (n + 1)
    if k > n:
        raise CalibrationError(
            f"{n} held-out benign runs cannot calibrate a {fpr:.2%} false-positive rate; "
            f"need at least {math.ceil(1 / fpr) - 1}"
        )
    return float(request_scores.flatten().sort().values[k - 1])


class Detector(ABC):
    name: ClassVar[str]
    direction: ClassVar[Literal[1, -1, 0]] = 1
    reduce: ClassVar[Literal["mean", "max"]] = "mean"
    #: statistics per channel: a feature [..., C * parts], channel-major, each its own part score
    parts: ClassVar[int] = 1
    #: optional TrajectoryStats fields it reads (the attention probes'): without them it is not built
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._grid: torch.Tensor | None = None  # increasing sigmas
        self._loc: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None
        self._loc2: torch.Tensor | None = None
        self._scale2: torch.Tensor | None = None
        self.threshold: float | None = None
        self._step_envelopes: dict[float, tuple[torch.Tensor, ...]] = {}

    @abstractmethod
    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        """What this detector watches: [..., K] from stats fields [..., C] (K = C for most)."""

    @property
    def is_fitted(self) -> bool:
        return self._loc is not None

    @classmethod
    def can_read(cls, stats: TrajectoryStats) -> bool:
        """Whether `stats` carries every optional field this detector reads."""
        return all(getattr(stats, name) is not None for name in cls.requires)

    # --- scoring ---------------------------------------------------------------------------------
    def combine(self, z: torch.Tensor) -> torch.Tensor:
        """[..., K] z-scores to [..., P] raw part scores (each gets its own step normalisation, then
        the worst counts): `reduce` over the channels of each of the `parts` statistics unless a
        subclass knows better."""
        z = z.unflatten(-1, (-1, self.parts)).transpose(-1, -2)  # [..., parts, C]
        return z.amax(dim=-1) if self.reduce == "max" else z.mean(dim=-1)

    def _envelope(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loc, scale, loc2, scale2) interpolated at noise levels `sigma` [...]."""
        if self._grid is None or self._loc is None or self._scale is None:
            raise NotFittedError(f"{self.name}: call fit() or load_state_dict() first")
        tables = (self._loc, self._scale, self._loc2, self._scale2)
        return tuple(interp_sigma(t, self._grid, sigma) for t in tables if t is not None)

    def _part_scores(self, stats: TrajectoryStats, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        z = torch.nan_to_num((self.feature(stats).double() - loc) / scale, nan=0.0, posinf=1e6, neginf=-1e6)
        return self.combine(z.abs() if self.direction == 0 else self.direction * z)

    def score(self, stats: TrajectoryStats, sigma: torch.Tensor) -> torch.Tensor:
        """Step-normalised risk score for stats [..., C] at noise levels `sigma` [...]; higher is riskier."""
        loc, scale, loc2, scale2 = self._envelope(sigma)
        return ((self._part_scores(stats, loc, scale) - loc2) / scale2).amax(dim=-1)

    def step_score(self, stats: TrajectoryStats, sigma: float) -> torch.Tensor:
        """`score` for one step of a live request ([B, C] stats, one sigma), envelope cached per sigma."""
        env = self._step_envelopes.get(sigma)
        if env is None:
            if len(self._step_envelopes) > 4096:  # schedules are few; bound it anyway
                self._step_envelopes.clear()
            env = self._step_envelopes[sigma] = self._envelope(torch.tensor(sigma, dtype=torch.float64))
        loc, scale, loc2, scale2 = env
        return ((self._part_scores(stats, loc, scale) - loc2) / scale2).amax(dim=-1)

    def trajectory_scores(self, series: TrajectoryStats, sigmas: list[float]) -> torch.Tensor:
        """[N, S] scores of a trajectory batch whose steps were taken at `sigmas`."""
        n, s = series.mean.shape[:2]
        return self.score(series, torch.tensor(sigmas[:s], dtype=torch.float64).expand(n, s))

    # --- learning --------------------------------------------------------------------------------
    def fit(self, reference: TrajectoryStats, sigmas: list[float]) -> Detector:
        """Learn the per-step envelope from benign trajectories [N, S, C] taken at `sigmas` [S]."""
        self.fit_envelope(reference, sigmas)
        return self.fit_normalisation(reference, sigmas)

    def fit_envelope(self, reference: TrajectoryStats, sigmas: list[float]) -> Detector:
        """loc and scale of the feature per step."""
        s = reference.mean.shape[1]
        order = torch.argsort(torch.tensor(sigmas[:s], dtype=torch.float64))
        self._grid = torch.tensor(sigmas[:s], dtype=torch.float64)[order]
        f = self.feature(reference).double()[:, order]
        self._loc = f.mean(dim=0)
        self._scale = f.std(dim=0).clamp_min(_MIN_SCALE) + _MIN_SCALE * self._loc.abs()
        self._step_envelopes.clear()
        return self

    def fit_normalisation(self, reference: TrajectoryStats, sigmas: list[float]) -> Detector:
        """loc2 (mean) and tail-matched scale2 of each part score per step (after fit_envelope)."""
        if self._grid is None or self._loc is None or self._scale is None:
            raise NotFittedError(f"{self.name}: fit_envelope() first")
        s = reference.mean.shape[1]
        order = torch.argsort(torch.tensor(sigmas[:s], dtype=torch.float64))
        r = self._part_scores(reference.index((slice(None), order)), self._loc, self._scale)
        self._loc2 = r.mean(dim=0)
        tail = r.quantile(TAIL_QUANTILE, dim=0) - self._loc2
        self._scale2 = (tail / _NORMAL_AT_TAIL).clamp_min(_MIN_SCALE)
        self._step_envelopes.clear()
        return self

    def calibrate(self, benign: TrajectoryStats, sigmas: list[float], fpr: float) -> float:
        """Set the threshold on held-out benign runs so that a benign request flags with prob. <= fpr."""
        self.threshold = conformal_threshold(self.trajectory_scores(benign, sigmas).amax(dim=1), fpr)
        return self.threshold

    def predict(self, series: TrajectoryStats, sigmas: list[float]) -> list[DetectorResult]:
        if self.threshold is None:
            raise NotFittedError(f"{self.name}: call calibrate() or load_state_dict() first")
        scores = self.trajectory_scores(series, sigmas)
        return [DetectorResult.from_scores(self.name, row, self.threshold) for row in scores]

    # --- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._grid is None or self.threshold is None:
            raise NotFittedError(f"{self.name}: nothing to save before fit() and calibrate()")
        tensors = {
            "grid": self._grid,
            "loc": self._loc,
            "scale": self._scale,
            "loc2": self._loc2,
            "scale2": self._scale2,
        }
        return {
            "name": self.name,
            "threshold": self.threshold,
            **{k: v.tolist() for k, v in tensors.items() if v is not None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> Detector:
        if state.get("name") != self.name:
            raise ValueError(f"state for {state.get('name')!r} cannot load into {self.name!r}")
        as_t = lambda k: torch.tensor(state[k], dtype=torch.float64)  # noqa: E731
        self._grid, self._loc, self._scale = as_t("grid"), as_t("loc"), as_t("scale")
        self._loc2, self._scale2 = as_t("loc2"), as_t("scale2")
        self._step_envelopes.clear()
        self.threshold = float(state["threshold"])
        return self
