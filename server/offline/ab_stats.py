"""Paired statistics for A/B comparisons of a candidate deployment against its baseline.

Every comparison is paired: the same (prompt, seed) through both deployments. Tests call the
libraries made for them: scipy.stats for Wilcoxon signed-rank and the exact binomial behind McNemar's
test, scikit-image for PSNR and SSIM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from latentguard.server.pipelines.trajectory_record import relative_l2

__all__ = ["cosine", "mcnemar_exact_p", "psnr", "relative_l2", "spread", "ssim", "wilcoxon_p"]


def cosine(candidate: torch.Tensor, baseline: torch.Tensor) -> float:
    c, b = candidate.double().flatten(), baseline.double().flatten()
    return float(torch.dot(c, b) / (c.norm() * b.norm()).clamp_min(1e-12))


def spread(values: Sequence[float]) -> dict[str, float]:
    """mean, std (sample), and the 5th / 50th / 95th percentiles; n is the count."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "p05": math.nan, "p50": math.nan, "p95": math.nan}
    p05, p50, p95 = np.percentile(x, [5, 50, 95])
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"n": int(x.size), "mean": float(x.mean()), "std": std, "p05": p05, "p50": p50, "p95": p95}


def wilcoxon_p(deltas: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 when every difference is 0."""
    d = np.asarray(deltas, dtype=float)
    if d.size == 0 or not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def mcnemar_exact_p(baseline_only: int, candidate_only: int) -> float:
    """McNemar's exact test: two-sided binomial test on the discordant pairs (b, c) at p = 1/2."""
    n = baseline_only + candidate_only
    if n == 0:
        return 1.0
    return float(stats.binomtest(candidate_only, n, 0.5, alternative="two-sided").pvalue)


def psnr(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """PSNR in dB of 8-bit images; inf when identical."""
    if np.array_equal(candidate, baseline):
        return math.inf
    return float(peak_signal_noise_ratio(baseline, candidate, data_range=255))


def ssim(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, scikit-image defaults) of 8-bit H x W x 3 images."""
    return float(structural_similarity(baseline, candidate, channel_axis=-1, data_range=255))
