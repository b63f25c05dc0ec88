"""Every detector by its contract name."""

from __future__ import annotations

from latentguard.detectors.base import Detector
from latentguard.detectors.latent_variance import LatentVariance
from latentguard.detectors.non_finite import NonFinite
from latentguard.detectors.over_smoothing import OverSmoothing
from latentguard.detectors.spectral_residual import SpectralResidual

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (SpectralResidual, LatentVariance, OverSmoothing, NonFinite)
}
DETECTOR_NAMES: tuple[str, ...] = tuple(DETECTORS)


def build_detectors() -> dict[str, Detector]:
    return {name: cls() for name, cls in DETECTORS.items()}
