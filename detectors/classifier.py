"""onnx_classifier: a learned secondary detector over every step's statistics (seed 001).

Feature: FEATURES, one vector per step built from the fused statistics (channel means, or the
worst channel where one channel is enough), standardised by its per-step envelope like every other
detector (the base class). Combine: a small model (trained by `latentguard train-classifier` on
benign and drilled trajectories, exported to ONNX) maps the z-vector to the log-odds that the step
is faulty; onnxruntime runs it (CUDAExecutionProvider when onnxruntime-gpu and a GPU are there,
CPUExecutionProvider otherwise). The log-odds then get the same step normalisation, threshold and
joint calibration as the hand-written detectors, so the per-request FPR holds for it too.

Until a model is set the detector is not fitted (a profile without one simply has no classifier).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

from latentguard.detectors.base import Detector, NotFittedError
from latentguard.kernels import TrajectoryStats

FEATURES = (
    "log_var_mean",
    "log_var_max",
    "log_var_min",
    "log_hf_ratio",
    "sr_peak",
    "log_phase_imbalance",
    "log_hf_flatness",
    "log_crest_max",
    "log_kurtosis_max",
    *(f"log_radial_{k}" for k in range(8)),
)
Z_CLIP = 50.0  # z-scores beyond this carry no more information and would only saturate the model


def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.double().clamp_min(1e-12))


class Classifier(Detector):
    name = "onnx_classifier"
    direction = 1

    def __init__(self) -> None:
        super().__init__()
        self.onnx: bytes | None = None
        self._session: Any = None
        self._input = ""

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        log_var = _log(stats.var)
        parts = [
            log_var.mean(dim=-1),
            log_var.amax(dim=-1),
            log_var.amin(dim=-1),
            _log(stats.hf_ratio).mean(dim=-1),
            stats.sr_peak.double().mean(dim=-1),
            _log(stats.phase_imbalance).mean(dim=-1),
            _log(stats.hf_flatness).mean(dim=-1),
            _log(stats.crest).amax(dim=-1),
            _log(stats.kurtosis).amax(dim=-1),
        ]
        profile = _log(stats.radial_profile).mean(dim=-2)  # [..., RADIAL_BINS]
        return torch.cat([torch.stack(parts, dim=-1), profile], dim=-1)

    # --- the model -------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return super().is_fitted and self._session is not None

    def set_model(self, onnx: bytes) -> Classifier:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one tiny matrix per step: threads would only add latency
        self._session = ort.InferenceSession(onnx, sess_options=options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.onnx = onnx
        self._step_envelopes.clear()
        return self

    def standardised(self, series: TrajectoryStats, sigmas: list[float]) -> torch.Tensor:
        """[N, S, F] clipped z-scores of a trajectory batch: what the model reads (and is trained on)."""
        n, s = series.mean.shape[:2]
        loc, scale, *_ = self._envelope(torch.tensor(sigmas[:s], dtype=torch.float64).expand(n, s))
        return ((self.feature(series) - loc) / scale).nan_to_num(0.0).clamp(-Z_CLIP, Z_CLIP)

    def log_odds(self, z: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            raise NotFittedError(f"{self.name}: no model; run `latentguard train-classifier`")
        flat = z.reshape(-1, z.shape[-1]).clamp(-Z_CLIP, Z_CLIP).float().cpu().numpy()
        probabilities = self._session.run(None, {self._input: np.ascontiguousarray(flat)})[1]
        p = torch.from_numpy(np.asarray(probabilities, dtype=np.float64)).clamp(1e-7, 1 - 1e-7)
        return (torch.log(p[:, 1]) - torch.log(p[:, 0])).reshape(z.shape[:-1])

    def combine(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_odds(z)[..., None]  # one part

    def fit(self, reference: TrajectoryStats, sigmas: list[float]) -> Classifier:
        """The envelope always; the step normalisation only once a model is set."""
        self.fit_envelope(reference, sigmas)
        if self._session is not None:
            self.fit_normalisation(reference, sigmas)
        return self

    # --- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.onnx is None:
            raise NotFittedError(f"{self.name}: nothing to save without a model")
        return {**super().state_dict(), "onnx": base64.b64encode(self.onnx).decode()}

    def load_state_dict(self, state: dict[str, Any]) -> Classifier:
        super().load_state_dict(state)
        return self.set_model(base64.b64decode(state["onnx"]))
