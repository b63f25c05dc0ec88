"""`latentguard init`: a config and everything the guard needs for a user's diffusers folder, in one go.

    1. load the folder as the deployment will be served (fails early on a bad folder);
    2. say how many runs calibration takes and why (joint_level's budget, detectors.calibration);
    3. calibrate: the profile, and with `classifier` the learned detector (train-classifier's path);
    4. the fleet-drift reference and the canaries next to the profile;
    5. write the config, whose deployment points at the profile.

Each step is the function the single-purpose commands (`calibrate`, `drift-reference`,
`canary-reference`) call; this module only orders them and puts the files side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from latentguard.detectors import build_detectors
from latentguard.detectors.calibration import runs_needed
from latentguard.detectors.drift import NULL_WINDOWS
from latentguard.server.config import DeploymentConfig
from latentguard.server.offline.calibrate import FIT_FRACTION, calibrate_deployment, planned_runs
from latentguard.server.offline.drift_reference import build_drift_reference
from latentguard.server.offline.trajectories import LocalCollector
from latentguard.server.pipelines.canaries import record
from latentguard.server.pipelines.deployments import (
    canary_reference_path,
    drift_reference_path,
    load_deployment,
)
from latentguard.server.pipelines.runner import PipelineRunner

#: (what, total) -> advance(n): how the CLI shows each stage's progress
Stage = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class Plan:
    detectors: int
    held_out_needed: int  # held-out runs the joint calibration needs at the target
    calibration_runs: int  # what the chosen prompts and seeds give (classifier runs included)
    drift_runs: int

    def explain(self, fpr: float, confidence: float) -> str:
        return (
            f"{self.calibration_runs} calibration runs and {self.drift_runs} drift-reference runs. Why: "
            f"a benign request on an unseen prompt may be flagged with probability {fpr:.2%} by any of "
            f"{self.detectors} detectors at any step, with {confidence:.0%} confidence and no assumption on "
            f"the score distributions; each detector's highest held-out run is flagged even at the "
            f"strictest thresholds, so the held-out runs (the {1 - FIT_FRACTION:.0%} of prompts not used "
            f"for the envelopes) must admit that many: about {self.held_out_needed} of them."
        )


def plan(
    dep_config: DeploymentConfig,
    prompts: list[str],
    seeds: int,
    fpr: float,
    confidence: float,
    classifier: bool,
) -> Plan:
    # thresholded jointly: every detector but non_finite (which flags only NaN / Inf), the classifier too
    detectors = len(build_detectors()) - 1 + classifier - (0 if dep_config.attention.enabled else 2)
    return Plan(
        detectors=detectors,
        held_out_needed=runs_needed(detectors, fpr, confidence),
        calibration_runs=planned_runs(prompts, seeds, classifier),
        drift_runs=len(set(prompts)),
    )


def initialise(
    dep_config: DeploymentConfig,
    out: Path,
    prompts: list[str],
    *,
    seeds: int,
    fpr: float,
    confidence: float,
    classifier: bool,
    device: str,
    batch_size: int,
    stage: Stage,
    null_windows: int = NULL_WINDOWS,
) -> Path:
    """Writes `out` (the config), NAME.json (the profile) and its references beside it; returns the
    profile's path."""
    profile = out.parent / f"{dep_config.name}.json"
    dep = load_deployment(dep_config, device, with_profile=False)
    source = LocalCollector(dep, batch_size)
    calibrate_deployment(
        source,
        prompts,
        seeds,
        fpr,
        profile,
        with_classifier=classifier,
        confidence=confidence,
        progress=stage("calibrating", planned_runs(prompts, seeds, classifier)),
    )
    build_drift_reference(
        source,
        prompts,
        drift_reference_path(profile),
        null_windows=null_windows,
        progress=stage("drift reference runs", len(set(prompts))),
        windows_progress=stage("drift thresholds from resampled windows", null_windows),
    )
    advance = stage("canaries", 1)
    record(PipelineRunner(dep), dep_config.canaries.prompts).save(canary_reference_path(profile))
    advance(1)
    served = dep_config.model_copy(update={"profile": str(profile)})
    config = {"device": device, "deployments": [served.model_dump(mode="json", exclude_defaults=True)]}
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return profile
