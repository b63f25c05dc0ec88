"""One contract, every detector: fit / score / calibrate / predict / state_dict."""

import dataclasses
import itertools
import json

import pytest
import torch

from latentguard.detectors import DETECTORS, DetectorResult, NotFittedError

from .synthetic import SIGMAS, benign, perturb

NAMES = list(DETECTORS)


@pytest.fixture(scope="module")
def data():
    return benign(300, 0), benign(300, 1), benign(200, 2)


def fitted(name, data):
    fit_set, cal_set, _ = data
    det = DETECTORS[name]().fit(fit_set, SIGMAS)
    det.calibrate(cal_set, SIGMAS, fpr=0.05)
    return det


def test_the_registry_holds_exactly_the_contract_names():
    """shared/DESIGN.md names the detectors; dashboards and alerts select on them."""
    assert set(NAMES) == {
        "spectral_residual",
        "latent_variance",
        "over_smoothing",
        "non_finite",
        "checkerboard",
        "grain",
        "spectral_shape",
        "tail",
        "stuck_value",
        "phase_gain",
        "attention_entropy",
        "attention_rank",
    }


def test_results_from_scores_with_failed_steps():
    """A step that failed fail-open carries NaN and never flags; fail-closed carries +inf and flags at
    that step; the reported score is the max over the finite steps (0 when none is)."""
    nan, inf = float("nan"), float("inf")
    fail_open = DetectorResult.from_scores("d", torch.tensor([0.5, nan, 2.0, nan]), threshold=3.0)
    assert (fail_open.score, fail_open.flagged, fail_open.first_step) == (2.0, False, -1)
    all_failed = DetectorResult.from_scores("d", torch.tensor([nan, nan]), threshold=3.0, error="boom")
    assert (all_failed.score, all_failed.flagged, all_failed.error) == (0.0, False, "boom")
    fail_closed = DetectorResult.from_scores("d", torch.tensor([0.5, 1.0, inf, 4.0]), threshold=3.0)
    assert (fail_closed.score, fail_closed.flagged, fail_closed.first_step) == (4.0, True, 2)
    only_inf = DetectorResult.from_scores("d", torch.tensor([inf]), threshold=3.0)
    assert (only_inf.score, only_inf.flagged, only_inf.first_step) == (0.0, True, 0)
    at_threshold = DetectorResult.from_scores("d", torch.tensor([3.0, 2.0]), threshold=3.0)
    assert not at_threshold.flagged  # flags strictly above the threshold


@pytest.mark.parametrize("name", [n for n in NAMES if n != "non_finite"])
def test_unfitted_detector_raises_typed_error(name, data):
    det = DETECTORS[name]()
    with pytest.raises(NotFittedError):
        det.predict(data[2], SIGMAS)
    with pytest.raises(NotFittedError):
        det.state_dict()


@pytest.mark.parametrize("name", NAMES)
def test_predict_returns_frozen_results_per_run(name, data):
    results = fitted(name, data).predict(data[2], SIGMAS)
    assert len(results) == 200 and all(isinstance(r, DetectorResult) for r in results)
    with pytest.raises(dataclasses.FrozenInstanceError):
        results[0].flagged = True  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_failure_scores_higher_and_is_flagged_at_its_step(name, data):
    det = fitted(name, data)
    clean = det.predict(data[2], SIGMAS)
    bad = det.predict(perturb(data[2], name, step=5), SIGMAS)
    assert sum(b.score > c.score for b, c in zip(bad, clean, strict=True)) >= 0.95 * len(clean)
    assert sum(b.flagged for b in bad) >= 0.95 * len(bad)
    first = [b.first_step for b in bad if b.flagged]
    assert sum(f == 5 for f in first) >= 0.9 * len(first)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_json_predicts_the_same(name, data):
    det = fitted(name, data)
    restored = DETECTORS[name]().load_state_dict(json.loads(json.dumps(det.state_dict())))
    a, b = det.predict(data[2], SIGMAS), restored.predict(data[2], SIGMAS)
    assert [r.flagged for r in a] == [r.flagged for r in b]
    torch.testing.assert_close(torch.tensor([r.score for r in a]), torch.tensor([r.score for r in b]))
    with pytest.raises(ValueError, match="cannot load"):
        DETECTORS[name]().load_state_dict({**det.state_dict(), "name": "other"})


@pytest.mark.parametrize("name", [n for n in NAMES if n != "non_finite"])
def test_held_out_false_positive_rate_is_near_target(name):
    fit_set, cal_set, test_set = benign(400, 10), benign(2000, 11), benign(4000, 12)
    det = DETECTORS[name]().fit(fit_set, SIGMAS)
    det.calibrate(cal_set, SIGMAS, fpr=0.05)
    fpr = sum(r.flagged for r in det.predict(test_set, SIGMAS)) / 4000
    assert 0.03 <= fpr <= 0.07, fpr  # binomial sd at n=4000 is 0.0034, plus calibration noise


@pytest.mark.parametrize("name", [n for n in NAMES if n != "non_finite"])
def test_other_schedules_interpolate_the_envelope_in_sigma(name, data):
    det = fitted(name, data)
    # sigmas midway between calibration sigmas: a benign trajectory there must still score like one
    mid = [(a + b) / 2 for a, b in itertools.pairwise(SIGMAS)] + [0.0]
    scores = torch.tensor([r.score for r in det.predict(data[2], mid)])
    assert scores.median() < det.threshold


@pytest.mark.parametrize("name", [n for n in NAMES if n != "non_finite"])
def test_the_envelope_between_calibration_sigmas_is_their_linear_interpolation(name, data):
    """Nearest-neighbour lookup, or an envelope that ignores sigma, fails this; clamped at the ends."""
    det = fitted(name, data)
    grid = det._grid.tolist()
    env = lambda sigma: det._envelope(torch.tensor(sigma, dtype=torch.float64))  # noqa: E731
    moved = False
    for a, b in itertools.pairwise(grid):
        lo, hi = env(a), env(b)
        moved |= any(not torch.equal(x, y) for x, y in zip(lo, hi, strict=True))
        for w in (0.25, 0.5, 0.9):
            for got, x, y in zip(env(a + w * (b - a)), lo, hi, strict=True):
                torch.testing.assert_close(got, x * (1 - w) + y * w)
    assert moved  # the synthetic envelope differs between steps, so the check has teeth
    for got, end in zip(env(grid[-1] + 1.0), env(grid[-1]), strict=True):
        torch.testing.assert_close(got, end)
    for got, end in zip(env(grid[0] - 1.0), env(grid[0]), strict=True):
        torch.testing.assert_close(got, end)


@pytest.mark.parametrize("name", NAMES)
def test_live_step_score_equals_the_batch_score(name, data):
    det = fitted(name, data)
    batch = det.trajectory_scores(data[2], SIGMAS)
    for step in range(batch.shape[1]):
        live = det.step_score(data[2].index((slice(None), step)), SIGMAS[step])
        torch.testing.assert_close(live.double(), batch[:, step].double())
