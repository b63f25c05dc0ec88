"""Calibration of a deployment: benign runs on calibration prompts, split by prompt into a fit set
(envelopes) and a held-out set (joint thresholds), optionally the learned classifier, and the
profile file."""

from __future__ import annotations

import random
from pathlib import Path

from latentguard.detectors import CalibrationProfile, Detector, calibrate_detectors
from latentguard.detectors.base import TAIL_QUANTILE
from latentguard.detectors.calibration import DEFAULT_CONFIDENCE
from latentguard.detectors.classifier import Classifier
from latentguard.server.offline import classifier as classifier_training
from latentguard.server.offline.trajectories import Collector, Progress, run_grid
from latentguard.server.pipelines.deployments import new_profile

FIT_FRACTION = 1 / 3  # of the prompts; the other two thirds set the thresholds
CLASSIFIER_SEEDS = 500_000  # first seed of the classifier's training runs (calibration runs start at 0)


def split_by_prompt(prompts: list[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(fit prompts, held-out prompts): disjoint, drawn at random from the distinct prompts."""
    distinct = list(dict.fromkeys(prompts))
    random.Random(seed).shuffle(distinct)
    cut = max(1, round(len(distinct) * fraction))
    if cut >= len(distinct):
        raise ValueError(f"{len(distinct)} distinct prompts cannot be split into a fit and a held-out set")
    return distinct[:cut], distinct[cut:]


def planned_runs(prompts: list[str], seeds_per_prompt: int, with_classifier: bool) -> int:
    """How many pipeline runs calibrate_deployment makes (for progress bars)."""
    fit_prompts, cal_prompts = split_by_prompt(prompts, FIT_FRACTION)
    runs = (len(fit_prompts) + len(cal_prompts)) * seeds_per_prompt
    if with_classifier:
        drilled = len(classifier_training.training_drills()) * classifier_training.RUNS_PER_DRILL
        runs += len(fit_prompts) + drilled
    return runs


def calibrate_deployment(
    source: Collector,
    prompts: list[str],
    seeds_per_prompt: int,
    fpr: float,
    out: str | Path,
    *,
    with_classifier: bool = False,
    confidence: float = DEFAULT_CONFIDENCE,
    progress: Progress | None = None,
) -> CalibrationProfile:
    """Every run its own seed; envelopes on a third of the prompts, thresholds on the rest, so the
    held-out rate is that of prompts the envelopes never saw. With `with_classifier`, the learned
    detector is trained on drilled and benign runs of the fit prompts (other seeds) and thresholded
    jointly with the rest."""
    cfg = source.config
    fit_prompts, cal_prompts = split_by_prompt(prompts, FIT_FRACTION)
    grid = run_grid(fit_prompts + cal_prompts, seeds_per_prompt)
    fit_runs, cal_runs = (
        grid[: len(fit_prompts) * seeds_per_prompt],
        grid[len(fit_prompts) * seeds_per_prompt :],
    )
    fit = source.collect(fit_runs, progress=progress)
    cal = source.collect(cal_runs, progress=progress)
    fitted: dict[str, Detector] = {}
    if with_classifier:
        clf = Classifier().fit_envelope(fit.stats, fit.sigmas)
        train_runs = run_grid(fit_prompts, 1, first_seed=CLASSIFIER_SEEDS)
        data, sigmas = classifier_training.training_runs(source, train_runs, progress=progress)
        clf.set_model(classifier_training.train(clf, data, sigmas)).fit_normalisation(fit.stats, fit.sigmas)
        fitted[clf.name] = clf
    detectors, report = calibrate_detectors(fit.stats, cal.stats, fit.sigmas, fpr, fitted, confidence)
    report.fit_prompts, report.calibration_prompts = len(fit_prompts), len(cal_prompts)
    notes = {
        "prompts": len(fit_prompts) + len(cal_prompts),
        "seeds_per_prompt": seeds_per_prompt,
        "step_normalisation": f"mean, scale at the {TAIL_QUANTILE:g} quantile",
    }
    profile = new_profile(cfg, source.fingerprint, fit.sigmas, detectors, report, notes)
    profile.save(out)
    return profile
