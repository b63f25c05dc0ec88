"""A/B statistics against scipy / scikit-image / hand-computed values on fixed data."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from latentguard.server.offline import ab_stats

DELTAS = [0.8, -0.1, 1.3, 0.4, 0.0, 2.2, 0.9, -0.3, 1.1, 0.6]


def test_wilcoxon_matches_scipy_and_handles_all_zero_differences():
    expected = stats.wilcoxon(DELTAS, zero_method="wilcox").pvalue
    assert ab_stats.wilcoxon_p(DELTAS) == pytest.approx(expected, rel=1e-12)
    # exact distribution for n = 9 non-zero differences, ranks of the two negatives 1 (0.1) and 2 (0.3):
    # W- = 3; P(W <= 3) = 5/512 under H0 -> two-sided p = 10/512
    assert ab_stats.wilcoxon_p(DELTAS) == pytest.approx(10 / 512, rel=1e-9)
    assert ab_stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert ab_stats.wilcoxon_p([]) == 1.0


def test_mcnemar_exact_is_the_two_sided_binomial_on_discordant_pairs():
    # b = 1, c = 9: p = 2 * P(X <= 1 | n = 10, 1/2) = 2 * 11 / 1024
    assert ab_stats.mcnemar_exact_p(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert ab_stats.mcnemar_exact_p(9, 1) == ab_stats.mcnemar_exact_p(1, 9)
    assert ab_stats.mcnemar_exact_p(0, 8) == pytest.approx(2 / 256, rel=1e-12)
    assert ab_stats.mcnemar_exact_p(0, 0) == 1.0
    assert ab_stats.mcnemar_exact_p(5, 5) == 1.0


def test_psnr_and_ssim_on_known_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 250, size=(32, 32, 3), dtype=np.uint8)
    b = a + 1  # MSE exactly 1
    assert ab_stats.psnr(b, a) == pytest.approx(10 * math.log10(255**2), rel=1e-9)
    assert ab_stats.psnr(a, a) == math.inf
    assert ab_stats.ssim(a, a) == pytest.approx(1.0)
    assert ab_stats.ssim(255 - a, a) < 0


def test_relative_l2_cosine_and_spread():
    b = torch.tensor([3.0, 4.0])
    assert ab_stats.relative_l2(torch.tensor([3.0, 4.5]), b) == pytest.approx(0.1)
    assert ab_stats.cosine(-b, b) == pytest.approx(-1.0)
    s = ab_stats.spread([1.0, 2.0, 3.0, 4.0])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["p50"] == 2.5 and math.isnan(ab_stats.spread([])["mean"])
