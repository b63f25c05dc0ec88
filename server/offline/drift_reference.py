"""The fleet-drift reference of a deployment (detectors/drift.py): benign runs on calibration
prompts, split by prompt into the reference itself and held-out runs that set the thresholds."""

from __future__ import annotations

from pathlib import Path

from latentguard.detectors.drift import ALPHA, NULL_WINDOWS, WINDOW, DriftReference, request_summary
from latentguard.server.offline.calibrate import split_by_prompt
from latentguard.server.offline.trajectories import Collector, Progress, run_grid

DRIFT_SEEDS = 1_000_000  # first seed of the reference runs (calibration: 0, classifier: 500_000)


def build_drift_reference(
    source: Collector,
    prompts: list[str],
    out: str | Path,
    *,
    window: int = WINDOW,
    alpha: float = ALPHA,
    null_windows: int = NULL_WINDOWS,
    progress: Progress | None = None,
    windows_progress: Progress | None = None,
) -> DriftReference:
    """One run per prompt (each its own seed): half the prompts make the reference, the other half
    the held-out runs whose resampled windows set each method's threshold. `progress` counts runs,
    `windows_progress` the resampled windows."""
    cfg = source.config
    ref_prompts, held_prompts = split_by_prompt(prompts, 0.5)
    ref = source.collect(run_grid(ref_prompts, 1, first_seed=DRIFT_SEEDS), progress=progress)
    held = source.collect(
        run_grid(held_prompts, 1, first_seed=DRIFT_SEEDS + len(ref_prompts)), progress=progress
    )
    reference = DriftReference.build(
        request_summary(ref.stats),
        request_summary(held.stats),
        fingerprint=source.fingerprint,
        steps=cfg.steps,
        height=cfg.height,
        width=cfg.width,
        guidance_scale=cfg.guidance_scale,
        channels=int(ref.stats.mean.shape[2]),
        window=window,
        alpha=alpha,
        null_windows=null_windows,
        progress=windows_progress,
    )
    reference.save(out)
    return reference
