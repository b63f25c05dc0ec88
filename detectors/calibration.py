"""Joint calibration of all detectors and the versioned calibration profile file.

Operators set one false-positive rate per request for the overall verdict. Each detector is
calibrated at a common per-detector level alpha, and alpha is the largest value (from fpr / k up to
fpr, k detectors) at which the union "any detector flags" stays within fpr on the held-out benign
set. The report states both the per-detector and the union rate measured there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentguard.detectors.base import CalibrationError, Detector, conformal_threshold
from latentguard.detectors.registry import DETECTORS, build_detectors
from latentguard.kernels import TrajectoryStats

PROFILE_FORMAT = "latentguard.profile/v1"


@dataclass
class CalibrationReport:
    target_fpr: float
    per_detector_alpha: float
    fit_runs: int
    calibration_runs: int
    calibration_fpr: dict[str, float]
    calibration_union_fpr: float


@dataclass
class CalibrationProfile:
    deployment: str
    fingerprint: str
    steps: int
    height: int
    width: int
    guidance_scale: float
    sigmas: list[float]
    detectors: dict[str, dict[str, Any]]
    report: CalibrationReport
    format: str = PROFILE_FORMAT
    notes: dict[str, Any] = field(default_factory=dict)

    def build(self) -> dict[str, Detector]:
        """Fresh detector objects with this profile's state loaded."""
        dets = build_detectors()
        for name, det in dets.items():
            if name not in self.detectors:
                raise CalibrationError(f"profile for {self.deployment} has no state for detector {name!r}")
            det.load_state_dict(self.detectors[name])
        return dets

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @staticmethod
    def load(path: str | Path) -> CalibrationProfile:
        raw = json.loads(Path(path).read_text())
        if raw.get("format") != PROFILE_FORMAT:
            raise CalibrationError(
                f"{path}: unsupported profile format {raw.get('format')!r}, expected {PROFILE_FORMAT}"
            )
        raw["report"] = CalibrationReport(**raw["report"])
        return CalibrationProfile(**raw)


def flag_matrix(
    dets: dict[str, Detector], series: TrajectoryStats, sigmas: list[float]
) -> dict[str, torch.Tensor]:
    """Per detector, a bool [N] of which runs it flags."""
    return {name: torch.tensor([r.flagged for r in d.predict(series, sigmas)]) for name, d in dets.items()}


def calibrate_detectors(
    fit_set: TrajectoryStats, cal_set: TrajectoryStats, sigmas: list[float], fpr: float
) -> tuple[dict[str, Detector], CalibrationReport]:
    """Fit every detector on `fit_set`, then calibrate jointly on the disjoint `cal_set`."""
    if not 0 < fpr < 1:
        raise CalibrationError(f"target false-positive rate must be in (0, 1), got {fpr}")
    dets = {name: cls().fit(fit_set, sigmas) for name, cls in DETECTORS.items()}
    learned = {n: d for n, d in dets.items() if n != "non_finite"}
    request_scores = {n: d.trajectory_scores(cal_set, sigmas).amax(dim=1) for n, d in learned.items()}
    n_cal = cal_set.mean.shape[0]

    def union_rate(alpha: float) -> float:
        thresholds = {n: conformal_threshold(s, alpha) for n, s in request_scores.items()}
        flagged = torch.stack([request_scores[n] > t for n, t in thresholds.items()]).any(dim=0)
        return float(flagged.float().mean())

    lo = fpr / len(learned)
    conformal_threshold(next(iter(request_scores.values())), lo)  # raises if cal_set is too small
    best = lo
    for step in range(1, 41):
        alpha = lo + (fpr - lo) * step / 40
        if union_rate(alpha) <= fpr:
            best = alpha
    for name, det in learned.items():
        det.threshold = conformal_threshold(request_scores[name], best)
    flags = flag_matrix(dets, cal_set, sigmas)
    report = CalibrationReport(
        target_fpr=fpr,
        per_detector_alpha=best,
        fit_runs=int(fit_set.mean.shape[0]),
        calibration_runs=int(n_cal),
        calibration_fpr={n: float(f.float().mean()) for n, f in flags.items()},
        calibration_union_fpr=float(torch.stack(list(flags.values())).any(dim=0).float().mean()),
    )
    return dets, report
