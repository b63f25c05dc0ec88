"""Trajectory monitoring, the detector contract, the detectors, calibration, policy and report.

Never imports gRPC, Prometheus or diffusers' pipeline classes.
"""

from latentguard.detectors.base import CalibrationError, Detector, NotFittedError
from latentguard.detectors.calibration import CalibrationProfile, CalibrationReport, calibrate_detectors
from latentguard.detectors.drills import DRILL_KINDS, Drill, DrillSpecError
from latentguard.detectors.guard import RequestGuard
from latentguard.detectors.policy import Action, DetectorPolicy, OnError, default_policies
from latentguard.detectors.registry import DETECTOR_NAMES, DETECTORS, build_detectors
from latentguard.detectors.results import DetectorResult, StepReport, StepVerdict, Verdict
from latentguard.detectors.trajectory import TrajectoryMonitor, denoised_estimate, x0_to_latent_delta

__all__ = [
    "DETECTORS",
    "DETECTOR_NAMES",
    "DRILL_KINDS",
    "Action",
    "CalibrationError",
    "CalibrationProfile",
    "CalibrationReport",
    "Detector",
    "DetectorPolicy",
    "DetectorResult",
    "Drill",
    "DrillSpecError",
    "NotFittedError",
    "OnError",
    "RequestGuard",
    "StepReport",
    "StepVerdict",
    "TrajectoryMonitor",
    "Verdict",
    "build_detectors",
    "calibrate_detectors",
    "default_policies",
    "denoised_estimate",
    "x0_to_latent_delta",
]
