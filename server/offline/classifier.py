"""Training the learned secondary detector (detectors/classifier.py): benign and drilled
trajectories -> one labelled z-vector per step -> a small MLP (scikit-learn) -> ONNX (skl2onnx).

Labels: every step of a benign run is 0; a drilled run's steps are 1 from the onset on (model-mode
drills persist; a step-mode drill is labelled for its step and the two after, which is as long as
its trace stays clear of the benign spread). The classifier is evaluated leave-one-drill-kind-out
(evaluation/evaluate_detectors.py), so it is judged on faults it was not trained on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentguard.detectors import DRILL_KINDS, Drill
from latentguard.detectors.classifier import Classifier
from latentguard.kernels import TrajectoryStats
from latentguard.server.offline.trajectories import Collector, Progress

# what the shipped classifier is trained on: every kind but patch_gain (held out, drills.py) at a
# weak and a moderate strength
TRAINING_STRENGTHS = {
    "aliasing": (0.15, 0.3),
    "collapse": (0.1, 0.2),
    "blur": (0.3, 0.5),
    "nan": (0.001,),
    "checkerboard": (0.05, 0.1),
    "grain": (0.1, 0.2),
    "spike": (0.1, 0.3),
}
STEP_LABEL_SPAN = 3  # a step-mode drill's fault is labelled at its step and the two after
TRAINED_KINDS = tuple(k for k in DRILL_KINDS if k in TRAINING_STRENGTHS)
ONSETS = (1, 3, 5, 7)
RUNS_PER_DRILL = 8  # per (kind, strength, onset): 8 x 4 onsets = 32 runs per (kind, strength)


@dataclass
class Labelled:
    stats: TrajectoryStats  # [N, S, ...]
    labels: torch.Tensor  # [N, S] 0 / 1
    kinds: list[str]  # per run: the drill kind, "" for benign

    def without(self, kind: str) -> Labelled:
        """The runs of every other kind (and the benign ones): leave-one-kind-out training data."""
        keep = torch.tensor([k != kind for k in self.kinds])
        return Labelled(self.stats.index(keep), self.labels[keep], [k for k in self.kinds if k != kind])


def label_steps(n: int, steps: int, drill: Drill | None) -> torch.Tensor:
    labels = torch.zeros(n, steps)
    if drill is not None:
        end = steps if drill.mode == "model" else min(steps, drill.step + STEP_LABEL_SPAN)
        labels[:, drill.step : end] = 1
    return labels


def training_drills(kinds: Iterable[str] = TRAINED_KINDS) -> list[Drill]:
    """Every (kind, strength, onset) the classifier trains on."""
    return [
        Drill(kind, step=onset, strength=s)
        for kind in kinds
        for s in TRAINING_STRENGTHS[kind]
        for onset in ONSETS
    ]


def training_runs(
    source: Collector,
    runs: list[tuple[str, int]],
    kinds: Iterable[str] = TRAINED_KINDS,
    progress: Progress | None = None,
) -> tuple[Labelled, list[float]]:
    """Every run benign, plus RUNS_PER_DRILL of them (drawn from `runs`) per training drill."""
    parts, labels, tags, sigmas = [], [], [], []
    rng = random.Random(0)
    for drill in [None, *training_drills(kinds)]:
        chosen = runs if drill is None else rng.sample(runs, min(len(runs), RUNS_PER_DRILL))
        got = source.collect(chosen, drill=drill, progress=progress)
        parts.append(got.stats)
        labels.append(label_steps(len(chosen), got.stats.mean.shape[1], drill))
        tags += [drill.kind if drill else ""] * len(chosen)
        sigmas = got.sigmas
    return Labelled(TrajectoryStats.cat(parts), torch.cat(labels), tags), sigmas


def fit_model(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    """A small MLP on z-vectors (negatives subsampled to at most 3 per positive)."""
    from sklearn.neural_network import MLPClassifier

    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    if len(negatives) > 3 * len(positives) > 0:  # balance, keeping every positive
        negatives = rng.choice(negatives, 3 * len(positives), replace=False)
    keep = np.concatenate([positives, negatives])
    model = MLPClassifier(
        hidden_layer_sizes=(32, 16), alpha=1e-3, max_iter=400, early_stopping=True, random_state=seed
    )
    return model.fit(x[keep], y[keep])


def export_onnx(model: Any, n_features: int) -> bytes:
    """float32 input [N, F] -> label and probabilities [N, 2] (no ZipMap), as Classifier reads it."""
    from skl2onnx import to_onnx

    sample = np.zeros((1, n_features), dtype=np.float32)
    return to_onnx(model, sample, options={id(model): {"zipmap": False}}).SerializeToString()


def train(clf: Classifier, data: Labelled, sigmas: list[float]) -> bytes:
    """ONNX bytes of a model trained on `data` (the classifier's envelope must be fitted already)."""
    z = clf.standardised(data.stats, sigmas)  # [N, S, F]
    x = z.reshape(-1, z.shape[-1]).float().numpy()
    y = data.labels.reshape(-1).long().numpy()
    return export_onnx(fit_model(x, y), x.shape[1])
