import pytest
import torch

from latentguard.detectors import CalibrationError, CalibrationProfile, calibrate_detectors
from latentguard.detectors.base import conformal_threshold
from latentguard.detectors.calibration import PROFILE_FORMAT, reaching, union_budget

from .synthetic import SIGMAS, benign, perturb, profile_of


def union_on(dets, test) -> float:
    flags = torch.stack([torch.tensor([r.flagged for r in d.predict(test, SIGMAS)]) for d in dets.values()])
    return float(flags.any(dim=0).float().mean())


def test_joint_calibration_holds_the_union_rate_on_held_out_runs():
    """On correlated detectors the joint level search lands the union near (below) the target; both
    shortcuts miss it on the same data: fpr / k each is far too strict, fpr each far too loose."""
    fpr, fit, cal, test = 0.05, benign(500, 20), benign(3000, 21), benign(6000, 22)
    dets, report = calibrate_detectors(fit, cal, SIGMAS, fpr)
    assert report.calibration_union_fpr <= report.union_budget <= fpr
    low, high = report.union_fpr_interval
    assert low <= report.calibration_union_fpr <= high
    learned = {n: d for n, d in dets.items() if n != "non_finite"}
    assert fpr / len(learned) < report.per_detector_alpha < fpr
    assert 0.7 * fpr <= union_on(dets, test) <= fpr * 1.05
    assert abs(union_on(dets, test) - report.calibration_union_fpr) < 0.1 * fpr
    assert report.calibration_fpr["non_finite"] == 0.0
    shortcuts = {}
    for alpha in (fpr / len(learned), fpr):
        for det in learned.values():
            det.threshold = conformal_threshold(det.trajectory_scores(cal, SIGMAS).amax(dim=1), alpha)
        shortcuts[alpha] = union_on(dets, test)
    # fpr / k each is needlessly strict (correlated detectors overlap), fpr each too loose (they add up)
    assert shortcuts[fpr / len(learned)] < 0.7 * fpr, shortcuts
    assert shortcuts[fpr] > 1.05 * fpr, shortcuts


def test_held_out_count_is_the_rate_a_new_run_sees():
    """Counting held-out runs at or above each threshold estimates the union rate on new runs without
    bias; counting only those strictly above (what `predict` does on the same runs) is about 30%
    low at 2-3 runs per threshold, the round-2 gap between calibration and fresh prompts."""
    g = torch.Generator().manual_seed(0)
    k, n, alpha = 6, 2000, 0.0015

    def correlated(m: int) -> torch.Tensor:
        return 0.8**0.5 * torch.randn(1, m, generator=g) + 0.2**0.5 * torch.randn(k, m, generator=g)

    fresh = correlated(100_000)
    held_out_rate, strict_rate, fresh_rate = [], [], []
    for _ in range(40):
        cal = correlated(n)
        scores = {f"d{i}": cal[i] for i in range(k)}
        thresholds = {name: conformal_threshold(s, alpha) for name, s in scores.items()}
        limits = torch.tensor(list(thresholds.values()))[:, None]
        held_out_rate.append(
            torch.stack(list(reaching(scores, thresholds).values())).any(dim=0).float().mean()
        )
        strict_rate.append((cal > limits).any(dim=0).float().mean())
        fresh_rate.append((fresh > limits).any(dim=0).float().mean())
    fresh_mean = torch.stack(fresh_rate).mean()
    ratio = float(torch.stack(held_out_rate).mean() / fresh_mean)
    strict_ratio = float(torch.stack(strict_rate).mean() / fresh_mean)
    assert 0.9 < ratio < 1.1, ratio
    assert strict_ratio < 0.8, strict_ratio


def test_union_budget_is_the_binomial_lower_tail():
    from scipy import stats

    k = union_budget(3000, 0.05, 0.9)
    assert stats.binom.cdf(k, 3000, 0.05) <= 0.1 < stats.binom.cdf(k + 1, 3000, 0.05)


def test_too_few_calibration_runs_is_a_clear_error():
    with pytest.raises(CalibrationError, match="held-out runs would allow"):
        calibrate_detectors(benign(50, 1), benign(50, 2), SIGMAS, fpr=0.01)


def test_the_runs_the_error_asks_for_are_enough():
    """Independent detectors: their highest held-out runs are k different runs, so n >= k / fpr is not
    enough at 90% confidence; the message names a count whose budget does admit them."""
    import re

    from latentguard.detectors.calibration import joint_level

    k, fpr = 10, 0.01
    scores = lambda n, seed: dict(  # noqa: E731
        zip(map(str, range(k)), torch.rand(k, n, generator=torch.Generator().manual_seed(seed)), strict=True)
    )
    with pytest.raises(CalibrationError) as info:
        joint_level(scores(1067, 0), fpr, 0.9)
    message = str(info.value)
    assert "10 runs are flagged, and 1067 runs allow" in message
    needed = int(re.search(r"about (\d+) held-out runs would allow 10", message).group(1))
    assert needed > 1067 and union_budget(needed, fpr, 0.9) >= 10 > union_budget(needed - 30, fpr, 0.9)
    assert joint_level(scores(needed, 1), fpr, 0.9) > 0
    with pytest.raises(CalibrationError, match=r"\(0, 1\)"):
        calibrate_detectors(benign(50, 1), benign(50, 2), SIGMAS, fpr=0.0)


def test_profile_round_trip_and_format_check(tmp_path):
    dets, report = calibrate_detectors(benign(300, 3), benign(300, 4), SIGMAS, fpr=0.05)
    profile = profile_of(dets, report)
    path = tmp_path / "p.json"
    profile.save(path)
    loaded = CalibrationProfile.load(path)
    assert loaded.report == report
    bad = perturb(benign(50, 5), "over_smoothing", 3)
    a = [r.flagged for r in dets["over_smoothing"].predict(bad, SIGMAS)]
    b = [r.flagged for r in loaded.build()["over_smoothing"].predict(bad, SIGMAS)]
    assert a == b and all(a)
    path.write_text(path.read_text().replace(PROFILE_FORMAT, "latentguard.profile/v0"))
    with pytest.raises(CalibrationError, match="unsupported profile format"):
        CalibrationProfile.load(path)


def test_a_profile_may_predate_a_detector_added_later_but_not_lack_another(caplog):
    """A profile calibrated before stuck_value existed builds without it, and says so; a profile
    without any other latent detector is refused."""
    dets, report = calibrate_detectors(benign(300, 3), benign(300, 4), SIGMAS, fpr=0.05)
    states = {n: d.state_dict() for n, d in dets.items()}
    older = profile_of(dets, report)
    older.detectors = {n: s for n, s in states.items() if n != "stuck_value"}
    with caplog.at_level("WARNING", logger="latentguard"):  # the deployments fixture quiets it
        assert set(older.build()) == set(dets) - {"stuck_value"}
    assert "predates stuck_value" in caplog.text
    broken = profile_of(dets, report)
    broken.detectors = {n: s for n, s in states.items() if n != "tail"}
    with pytest.raises(CalibrationError, match="no state for"):
        broken.build()


def test_attention_detectors_need_probe_statistics():
    """Runs without the attention probes calibrate every other detector, and their profile builds."""
    dets, report = calibrate_detectors(
        benign(300, 3, attention=False), benign(300, 4, attention=False), SIGMAS, fpr=0.05
    )
    assert "attention_entropy" not in dets and "attention_rank" not in dets
    assert set(profile_of(dets, report).build()) == set(dets)
    with_probes, _ = calibrate_detectors(benign(300, 3), benign(300, 4), SIGMAS, fpr=0.05)
    assert {"attention_entropy", "attention_rank"} <= set(with_probes)
