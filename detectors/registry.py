"""Every detector by its contract name: the hand-written ones, fitted by every calibration (the
attention ones when the calibration runs had the attention probes), and the learned classifier,
which a profile has only when `latentguard train-classifier` made it one."""

from __future__ import annotations

from latentguard.detectors.attention import AttentionEntropy, AttentionRank
from latentguard.detectors.base import Detector
from latentguard.detectors.checkerboard import Checkerboard
from latentguard.detectors.classifier import Classifier
from latentguard.detectors.grain import Grain
from latentguard.detectors.latent_variance import LatentVariance
from latentguard.detectors.non_finite import NonFinite
from latentguard.detectors.over_smoothing import OverSmoothing
from latentguard.detectors.phase_gain import PhaseGain
from latentguard.detectors.spectral_residual import SpectralResidual
from latentguard.detectors.spectral_shape import SpectralShape
from latentguard.detectors.stuck_value import StuckValue
from latentguard.detectors.tail import Tail

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        SpectralResidual,
        LatentVariance,
        OverSmoothing,
        NonFinite,
        Checkerboard,
        Grain,
        SpectralShape,
        Tail,
        StuckValue,
        PhaseGain,
        AttentionEntropy,
        AttentionRank,
    )
}
LEARNED: dict[str, type[Detector]] = {Classifier.name: Classifier}
DETECTOR_NAMES: tuple[str, ...] = (*DETECTORS, *LEARNED)


def latent_only(detectors: dict[str, Detector]) -> dict[str, Detector]:
    """The detectors that read the latents alone (not the attention probes' statistics)."""
    return {name: det for name, det in detectors.items() if not det.requires}


def build_detectors() -> dict[str, Detector]:
    """Fresh, unfitted instances of the hand-written detectors."""
    return {name: cls() for name, cls in DETECTORS.items()}


def detector_class(name: str) -> type[Detector]:
    return {**DETECTORS, **LEARNED}[name]
