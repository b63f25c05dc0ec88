"""The learned secondary detector: ONNX export agrees with the in-process model, it flags faults it
was trained on, and a profile carries it (the model file next to the JSON)."""

import numpy as np
import pytest
import torch

from latentguard.detectors import CalibrationProfile, NotFittedError, calibrate_detectors
from latentguard.detectors.classifier import FEATURES, Classifier
from latentguard.server.offline.classifier import Labelled, export_onnx, fit_model, train

from .synthetic import SIGMAS, STEPS, benign, perturb, profile_of

FAULTS = ("checkerboard", "grain", "spectral_residual", "latent_variance")


def labelled(seed: int) -> Labelled:
    parts, labels, kinds = [benign(400, seed)], [torch.zeros(400, STEPS)], [""] * 400
    for i, name in enumerate(FAULTS):
        bad = perturb(benign(100, seed + 1 + i), name, step=3)
        lab = torch.zeros(100, STEPS)
        lab[:, 3] = 1
        parts.append(bad)
        labels.append(lab)
        kinds += [name] * 100
    from latentguard.kernels import TrajectoryStats

    return Labelled(TrajectoryStats.cat(parts), torch.cat(labels), kinds)


@pytest.fixture(scope="module")
def classifier():
    clf = Classifier().fit_envelope(benign(500, 100), SIGMAS)
    clf.set_model(train(clf, labelled(200), SIGMAS)).fit_normalisation(benign(500, 100), SIGMAS)
    return clf


def test_onnx_model_agrees_with_the_in_process_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 3] > 1).astype(int)
    model = fit_model(x, y)
    clf = Classifier().set_model(export_onnx(model, x.shape[1]))
    want = model.predict_proba(x)[:, 1]
    p = torch.sigmoid(clf.log_odds(torch.from_numpy(x).double())).numpy()
    np.testing.assert_allclose(p, want, rtol=1e-4, atol=1e-5)


def test_without_a_model_it_is_not_fitted():
    clf = Classifier().fit(benign(100, 1), SIGMAS)
    assert not clf.is_fitted
    with pytest.raises(NotFittedError):
        clf.log_odds(torch.zeros(1, len(FEATURES)))


def test_it_flags_trained_faults_and_stays_quiet_on_benign(classifier):
    classifier.calibrate(benign(2000, 300), SIGMAS, fpr=0.02)
    clean = [r.flagged for r in classifier.predict(benign(1000, 301), SIGMAS)]
    assert sum(clean) / len(clean) <= 0.04
    for name in FAULTS:
        bad = classifier.predict(perturb(benign(200, 302), name, step=5), SIGMAS)
        assert sum(r.flagged for r in bad) >= 0.9 * len(bad), name
        assert all(r.first_step == 5 for r in bad if r.flagged), name


def test_a_profile_carries_the_model_in_a_file_next_to_it(classifier, tmp_path):
    dets, report = calibrate_detectors(
        benign(300, 3), benign(1000, 4), SIGMAS, fpr=0.05, fitted={classifier.name: classifier}
    )
    profile = profile_of(dets, report)
    profile.save(tmp_path / "p.json")
    assert (tmp_path / "p.onnx_classifier.onnx").is_file()
    assert (
        "onnx_file" in (tmp_path / "p.json").read_text()
        and '"onnx":' not in (tmp_path / "p.json").read_text()
    )
    built = CalibrationProfile.load(tmp_path / "p.json").build()
    test = perturb(benign(100, 5), "checkerboard", step=2)
    assert [r.flagged for r in built["onnx_classifier"].predict(test, SIGMAS)] == [
        r.flagged for r in dets["onnx_classifier"].predict(test, SIGMAS)
    ]
