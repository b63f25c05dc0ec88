"""non_finite: any NaN or Inf in the denoised estimate (the fp16 black-image failure class).

There is nothing to learn: one non-finite value is a failure at every step, so the envelope is empty,
the threshold is fixed at 0.5 values and calibration leaves it alone (benign runs have none).
The score is the number of non-finite values at that step.
"""

from __future__ import annotations

from typing import Any

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats

_THRESHOLD = 0.5


class NonFinite(Detector):
    name = "non_finite"
    direction = 1
    reduce = "max"

    def __init__(self) -> None:
        super().__init__()
        self.threshold = _THRESHOLD

    @property
    def is_fitted(self) -> bool:
        return True

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return stats.nonfinite.double()

    def score(self, stats: TrajectoryStats, sigma: torch.Tensor) -> torch.Tensor:
        return self.feature(stats).sum(dim=-1)

    def step_score(self, stats: TrajectoryStats, sigma: float) -> torch.Tensor:
        return self.feature(stats).sum(dim=-1)

    def fit(self, reference: TrajectoryStats, sigmas: list[float]) -> NonFinite:
        return self

    def calibrate(self, benign: TrajectoryStats, sigmas: list[float], fpr: float) -> float:
        return _THRESHOLD

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": _THRESHOLD}

    def load_state_dict(self, state: dict[str, Any]) -> NonFinite:
        if state.get("name") != self.name:
            raise ValueError(f"state for {state.get('name')!r} cannot load into {self.name!r}")
        return self
