"""Detectors with several statistics per channel (`parts`): each part has its own envelope, so a
part with a narrow benign spread is not drowned by one with a wide spread."""

import dataclasses

import torch

from latentguard.detectors import DETECTORS

from .synthetic import SIGMAS, benign


def with_contrasts(n: int, seed: int) -> object:
    """Benign runs whose checkerboard contrast is narrow (sd 0.01) and row / column contrasts wide
    (sd 0.2, the model's own 2 x 2 patch structure varies a lot across prompts)."""
    g = torch.Generator().manual_seed(seed)
    stats = benign(n, seed)
    shape = stats.phase_contrast.shape[:-1]
    sd = torch.tensor([0.01, 0.2, 0.2])
    return dataclasses.replace(stats, phase_contrast=sd * torch.randn((*shape, 3), generator=g))


def test_checkerboard_flags_a_contrast_below_the_row_patterns_spread():
    det = DETECTORS["checkerboard"]().fit(with_contrasts(300, 0), SIGMAS)
    det.calibrate(with_contrasts(1000, 1), SIGMAS, fpr=0.02)
    clean, bad = with_contrasts(400, 2), with_contrasts(400, 2)
    bad.phase_contrast[:, 5, :, 0] -= 0.08  # either sign is a checkerboard; 8 sd of its own spread
    assert sum(r.flagged for r in det.predict(clean, SIGMAS)) <= 0.04 * 400
    assert sum(r.first_step == 5 for r in det.predict(bad, SIGMAS)) >= 0.95 * 400  # a few flag earlier
    # the max over raw patterns (phase_imbalance) hides it in the row / column spread
    limit = clean.phase_imbalance[:, 5].mean(-1).quantile(0.98)
    assert (bad.phase_imbalance[:, 5].mean(-1) > limit).float().mean() < 0.5


def test_grain_flags_either_part_alone():
    fit, cal, test = benign(300, 3), benign(1000, 4), benign(400, 5)
    det = DETECTORS["grain"]().fit(fit, SIGMAS)
    det.calibrate(cal, SIGMAS, fpr=0.02)
    for field in ("hf_flatness", "change_flatness"):
        bad = dataclasses.replace(test, **{field: getattr(test, field).clone()})
        getattr(bad, field)[:, 5] *= 1.5
        assert sum(r.first_step == 5 for r in det.predict(bad, SIGMAS)) >= 0.95 * 400, field
