"""Joint calibration of all detectors and the versioned calibration profile file.

Operators set one false-positive rate per request for the overall verdict: the chance that a benign
request on a prompt calibration never saw is flagged by any detector at any step.

- Envelopes are fitted on one set of prompts and thresholds set on another (the caller splits by
  prompt: runs of one prompt are not exchangeable with runs of a new one, so thresholds set on the
  prompts the envelopes were fitted on are optimistic for new prompts).
- Each detector is thresholded at a split-conformal quantile of its request scores at a common
  per-detector level alpha = r / (n + 1): the threshold is the r-th largest of the n held-out
  scores. r is the largest (alpha at most fpr) at which the union "any detector flags" on the
  held-out set stays within `union_budget(n, fpr, confidence)`: the largest count of n held-out
  runs that a binomial with rate fpr would reach with probability at most 1 - confidence.
  Calibrated that way, the union FPR on new prompts is below the target with about that confidence
  (training-conditional rather than only in expectation). Correlated detectors (several read the
  spectrum) make the union smaller than the sum, which is why the level is searched jointly rather
  than split fpr / k ways (k detectors).
- Held-out runs are counted as a new run would be judged (`reaching`): a run *at* a threshold counts
  as flagged. A new run beats the r-th largest of n held-out scores exactly when it would rank among
  the top r of the n + 1 runs, and r held-out runs sit at or above that threshold; so the count over
  n estimates the rate on a new prompt without bias. Counting only the runs strictly above (what
  `predict` does) leaves out one run per detector; at r = 2 that made the held-out union of the
  profiles before this count about 1.5x optimistic (0.47% held out, 0.75-1.10% on fresh prompts).
- The report states the per-detector and the union rate on the held-out set, with the union's
  Clopper-Pearson 95% interval.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy import stats as scipy_stats

from latentguard.detectors.base import CalibrationError, Detector, conformal_threshold
from latentguard.detectors.registry import DETECTORS, detector_class
from latentguard.kernels import TrajectoryStats

log = logging.getLogger(__name__)
#: detectors newer than the profile format: a profile calibrated before one existed (a user's, of
#: their own model) runs without it, said in the log, instead of being refused
ADDED_LATER = frozenset({"stuck_value", "phase_gain"})

#: v4: every part score has its own step normalisation (loc2, scale2 of shape [steps, parts]);
#: checkerboard has coherent and incoherent parts, tail reads the change's crest too
PROFILE_FORMAT = "latentguard.profile/v4"
DEFAULT_CONFIDENCE = 0.9


@dataclass
class CalibrationReport:
    target_fpr: float
    per_detector_alpha: float
    fit_runs: int
    calibration_runs: int
    calibration_fpr: dict[str, float]
    calibration_union_fpr: float
    union_fpr_interval: tuple[float, float] = (0.0, 1.0)  # Clopper-Pearson 95% on the held-out runs
    union_budget: float = 0.0  # the largest held-out union rate the level search allowed
    confidence: float = DEFAULT_CONFIDENCE
    fit_prompts: int = 0
    calibration_prompts: int = 0


def clopper_pearson(flagged: int, n: int, level: float = 0.95) -> tuple[float, float]:
    ci = scipy_stats.binomtest(flagged, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def union_budget(n: int, fpr: float, confidence: float) -> int:
    """The largest k with P(Binomial(n, fpr) <= k) <= 1 - confidence (at least 0)."""
    return max(0, int(scipy_stats.binom.ppf(1 - confidence, n, fpr)) - 1)


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
        missing = {n for n, cls in DETECTORS.items() if not cls.requires} - set(self.detectors)
        if missing - ADDED_LATER:
            raise CalibrationError(f"profile for {self.deployment} has no state for {sorted(missing)}")
        if missing:
            log.warning(
                "profile for %s predates %s: not run until it is recalibrated (latentguard "
                "train-classifier)", self.deployment, ", ".join(sorted(missing))
            )  # fmt: skip
        return {name: detector_class(name)().load_state_dict(state) for name, state in self.detectors.items()}

    def save(self, path: str | Path) -> None:
        """JSON; a learned model goes to a file of its own next to it (<profile>.<detector>.onnx)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = asdict(self)
        for name, state in raw["detectors"].items():
            if "onnx" in state:
                model = path.with_suffix(f".{name}.onnx")
                model.write_bytes(base64.b64decode(state.pop("onnx")))
                state["onnx_file"] = model.name
        path.write_text(json.dumps(raw, indent=1) + "\n")

    @staticmethod
    def load(path: str | Path) -> CalibrationProfile:
        path = Path(path)
        raw = json.loads(path.read_text())
        if raw.get("format") != PROFILE_FORMAT:
            raise CalibrationError(
                f"{path}: unsupported profile format {raw.get('format')!r}, expected {PROFILE_FORMAT} "
                "(re-run `latentguard calibrate`)"
            )
        for state in raw["detectors"].values():
            if "onnx_file" in state:
                state["onnx"] = base64.b64encode((path.parent / state.pop("onnx_file")).read_bytes()).decode()
        raw["report"]["union_fpr_interval"] = tuple(raw["report"]["union_fpr_interval"])
        raw["report"] = CalibrationReport(**raw["report"])
        return CalibrationProfile(**raw)


def flag_matrix(
    dets: dict[str, Detector], series: TrajectoryStats, sigmas: list[float]
) -> dict[str, torch.Tensor]:
    """Per detector, a bool [N] of which runs it flags."""
    return {name: torch.tensor([r.flagged for r in d.predict(series, sigmas)]) for name, d in dets.items()}


def reaching(
    request_scores: dict[str, torch.Tensor], thresholds: dict[str, float]
) -> dict[str, torch.Tensor]:
    """Per detector, a bool [N] of the held-out runs at or above its threshold (see the module doc)."""
    return {name: s >= thresholds[name] for name, s in request_scores.items()}


def runs_needed(reaching_at_strictest: int, fpr: float, confidence: float) -> int:
    """The fewest held-out runs whose union budget admits `reaching_at_strictest` flagged runs."""
    n = max(1, math.ceil(reaching_at_strictest / fpr))
    while union_budget(n, fpr, confidence) < reaching_at_strictest:
        n += max(1, n // 50)
    return n


def joint_level(request_scores: dict[str, torch.Tensor], fpr: float, confidence: float) -> float:
    """The largest common per-detector level r / (n + 1) at which at most `budget` held-out runs
    reach any detector's threshold. At level r / (n + 1) each threshold is the detector's r-th
    largest held-out score, so r runs reach it; r goes up from 1 while the union stays in budget
    (it only grows with r). The budget is `union_budget(n, fpr, confidence)`."""
    budget = union_budget(len(next(iter(request_scores.values()))), fpr, confidence)
    k = len(request_scores)
    n = len(next(iter(request_scores.values())))
    ordered = {name: s.sort(descending=True).values for name, s in request_scores.items()}

    def union(r: int) -> int:
        thresholds = {name: float(s[r - 1]) for name, s in ordered.items()}
        return int(torch.stack(list(reaching(request_scores, thresholds).values())).any(dim=0).sum())

    best = 0
    for r in range(1, math.floor(fpr * (n + 1)) + 1):
        if union(r) > budget:
            break
        best = r
    if best == 0:
        strictest = union(1)
        raise CalibrationError(
            f"{n} held-out benign runs cannot calibrate {k} detectors jointly at {fpr:.2%}: even at the "
            f"strictest thresholds (each detector's highest held-out run) {strictest} runs are flagged, "
            f"and {n} runs allow {budget} at {confidence:.0%} confidence; about "
            f"{runs_needed(strictest, fpr, confidence)} held-out runs would allow {strictest} "
            f"(more prompts or seeds)"
        )
    return best / (n + 1)


def calibrate_detectors(
    fit_set: TrajectoryStats,
    cal_set: TrajectoryStats,
    sigmas: list[float],
    fpr: float,
    fitted: dict[str, Detector] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[dict[str, Detector], CalibrationReport]:
    """Fit every hand-written detector that can read `fit_set` on it, then threshold them, and any
    already `fitted` ones (the learned classifier), jointly on the disjoint `cal_set`."""
    if not 0 < fpr < 1:
        raise CalibrationError(f"target false-positive rate must be in (0, 1), got {fpr}")
    if not 0 < confidence < 1:
        raise CalibrationError(f"confidence must be in (0, 1), got {confidence}")
    dets = {name: cls().fit(fit_set, sigmas) for name, cls in DETECTORS.items() if cls.can_read(fit_set)}
    dets.update(fitted or {})
    learned = {n: d for n, d in dets.items() if n != "non_finite"}
    request_scores = {n: d.trajectory_scores(cal_set, sigmas).amax(dim=1) for n, d in learned.items()}
    n_cal = int(cal_set.mean.shape[0])
    budget = union_budget(n_cal, fpr, confidence)
    alpha = joint_level(request_scores, fpr, confidence)
    for name, det in learned.items():
        det.threshold = conformal_threshold(request_scores[name], alpha)
    reached = reaching(request_scores, {name: det.threshold for name, det in learned.items()})
    reached.update(flag_matrix({"non_finite": dets["non_finite"]}, cal_set, sigmas))
    flags = {name: reached[name] for name in dets}
    union = torch.stack(list(flags.values())).any(dim=0)
    report = CalibrationReport(
        target_fpr=fpr,
        per_detector_alpha=alpha,
        fit_runs=int(fit_set.mean.shape[0]),
        calibration_runs=n_cal,
        calibration_fpr={n: float(f.float().mean()) for n, f in flags.items()},
        calibration_union_fpr=float(union.float().mean()),
        union_fpr_interval=clopper_pearson(int(union.sum()), n_cal),
        union_budget=budget / n_cal,
        confidence=confidence,
    )
    return dets, report
