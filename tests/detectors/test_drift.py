"""Fleet-drift statistics on synthetic summaries with known ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentguard.detectors.drift import (
    METHODS,
    DriftReference,
    _top_subspace,
    request_summary,
    step_features,
    vendi,
)
from latentguard.kernels import trajectory_stats
from latentguard.kernels.stats import TrajectoryStats

STEPS, CHANNELS = 3, 2
LOADINGS = np.random.default_rng(42).normal(size=(4, STEPS * 14 * CHANNELS)) * 0.5  # one population


def population(n: int, rng: np.random.Generator, shift: float = 0.0, spread: float = 1.0) -> np.ndarray:
    """Summaries shaped like request_summary's ([N, S * 14 C]): correlated features (a few latent
    factors, like prompts), the latent means and log variances first. `shift` moves three spectral
    features; `spread` scales the latent values (the KL's variances)."""
    x = rng.normal(size=(n, 4)) @ LOADINGS + rng.normal(size=(n, LOADINGS.shape[1]))
    x = x.reshape(n, STEPS, -1)
    x[:, :, CHANNELS : 2 * CHANNELS] *= 0.3  # log variances vary less across prompts than means
    x[:, :, CHANNELS : 2 * CHANNELS] += 2 * np.log(spread)
    x[:, 1, 2 * CHANNELS : 2 * CHANNELS + 3] += shift
    return x.reshape(n, -1)


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    rng = np.random.default_rng(0)
    return DriftReference.build(
        population(600, rng),
        population(600, rng),
        fingerprint="f",
        steps=STEPS,
        height=16,
        width=16,
        guidance_scale=1.0,
        channels=CHANNELS,
        window=32,
        alpha=0.01,
        null_windows=3000,
    )


def alarm_rate(ref: DriftReference, runs: np.ndarray, windows: int = 300, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    scores = [ref.scores(runs[rng.choice(len(runs), ref.window, replace=False)]) for _ in range(windows)]
    return {m: float(np.mean([s[m] > 1 for s in scores])) for m in METHODS} | {
        "any": float(np.mean([max(s.values()) > 1 for s in scores]))
    }


def test_an_unchanged_population_rarely_alarms(reference):
    fresh = population(2000, np.random.default_rng(5))
    assert alarm_rate(reference, fresh)["any"] <= 0.03  # alpha = 0.01, 300 windows


def test_a_shift_of_a_few_features_is_caught_by_shift(reference):
    shifted = population(2000, np.random.default_rng(6), shift=1.0)
    rates = alarm_rate(reference, shifted)
    assert rates["shift"] >= 0.95


def test_a_change_of_the_latent_variance_is_caught_by_kl(reference):
    wider = population(2000, np.random.default_rng(7), spread=2.0)
    assert alarm_rate(reference, wider)["kl"] >= 0.95


def test_save_and_load_give_the_same_scores(reference, tmp_path):
    reference.save(tmp_path / "r.drift.safetensors")
    loaded = DriftReference.load(tmp_path / "r.drift.safetensors")
    window = population(32, np.random.default_rng(8))
    for m, s in reference.scores(window).items():
        assert loaded.scores(window)[m] == pytest.approx(s, rel=1e-4)
    assert loaded.thresholds == reference.thresholds and loaded.window == 32


def test_loading_something_else_is_a_clear_error(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"not a latentguard\.drift"):
        DriftReference.load(tmp_path / "other.safetensors")


def test_the_null_windows_score_as_a_served_window_does(reference):
    """The thresholds come from null_scores (kernels computed once); the server scores with raw_scores:
    both must be the same statistic."""
    runs = population(200, np.random.default_rng(9))
    null = reference.null_scores(runs, 5, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    for i in range(5):
        rows = rng.choice(len(runs), reference.window, replace=False)
        raw = reference.raw_scores(runs[rows])
        for m in METHODS:
            assert null[m][i] == pytest.approx(raw[m], rel=1e-6, abs=1e-9)


def test_the_mmd_pvalue_is_small_only_for_a_different_population(reference):
    rng = np.random.default_rng(10)
    same = [reference.mmd_pvalue(population(32, rng), permutations=500, seed=i) for i in range(40)]
    assert 0.2 < np.mean(same) < 0.8  # roughly uniform under the null
    moved = population(32, rng) + 1.5
    assert reference.mmd_pvalue(moved, permutations=500) < 0.01


def test_the_gram_route_to_the_top_subspace_matches_the_svd():
    z = np.random.default_rng(0).normal(size=(20, 300)) * np.linspace(3, 0.1, 300)
    fast = _top_subspace(z, 4)
    exact = np.linalg.svd(z, full_matrices=False)[2][:4].T
    assert np.allclose(np.abs(fast.T @ exact), np.eye(4), atol=1e-8)


def test_summaries_keep_step_and_channel_order():
    x = torch.randn(3, STEPS, CHANNELS, 16, 16)
    stats = TrajectoryStats.stack([trajectory_stats(x[:, s], backend="reference") for s in range(STEPS)])
    features = step_features(stats)
    assert features.shape == (3, STEPS, 14 * CHANNELS)
    assert np.allclose(features[:, :, :CHANNELS], stats.mean.numpy())
    assert np.allclose(features[:, :, CHANNELS : 2 * CHANNELS], np.log(stats.var.numpy()))
    assert np.array_equal(request_summary(stats), features.reshape(3, -1))


def test_only_requests_at_the_reference_settings_are_comparable(reference):
    assert reference.matches(STEPS, 16, 16, 1.0)
    assert not reference.matches(STEPS + 1, 16, 16, 1.0) and not reference.matches(STEPS, 16, 16, 2.0)


def test_the_vendi_score_counts_distinct_samples():
    assert vendi(np.eye(8)) == pytest.approx(8)  # all unrelated
    assert vendi(np.ones((8, 8))) == pytest.approx(1)  # all alike
    two_groups = np.kron(np.eye(2), np.ones((4, 4)))  # two groups of four identical samples
    assert vendi(two_groups) == pytest.approx(2)


def test_a_population_collapsing_toward_one_output_is_caught_by_vendi(reference):
    """Every request pulled 70% of the way to one summary: each stays in range, the variety goes."""
    rng = np.random.default_rng(8)
    fresh = population(2000, rng)
    one = population(1, rng)
    collapsed = 0.3 * fresh + 0.7 * one
    assert alarm_rate(reference, collapsed)["vendi"] >= 0.95
    assert alarm_rate(reference, population(2000, np.random.default_rng(9)))["vendi"] <= 0.03
