import pytest
import torch

from latentguard.detectors import CalibrationError, CalibrationProfile, calibrate_detectors

from .synthetic import SIGMAS, benign, perturb


def test_joint_calibration_holds_the_union_rate_on_held_out_runs(tmp_path):
    dets, report = calibrate_detectors(benign(500, 20), benign(3000, 21), SIGMAS, fpr=0.05)
    assert report.calibration_union_fpr <= 0.05
    assert report.per_detector_alpha >= 0.05 / 3
    test = benign(4000, 22)
    flags = torch.stack([torch.tensor([r.flagged for r in d.predict(test, SIGMAS)]) for d in dets.values()])
    union = float(flags.any(dim=0).float().mean())
    assert 0.03 <= union <= 0.07, union
    assert report.calibration_fpr["non_finite"] == 0.0


def test_too_few_calibration_runs_is_a_clear_error():
    with pytest.raises(CalibrationError, match="need at least"):
        calibrate_detectors(benign(50, 1), benign(50, 2), SIGMAS, fpr=0.01)
    with pytest.raises(CalibrationError, match=r"\(0, 1\)"):
        calibrate_detectors(benign(50, 1), benign(50, 2), SIGMAS, fpr=0.0)


def test_profile_round_trip_and_format_check(tmp_path):
    dets, report = calibrate_detectors(benign(300, 3), benign(300, 4), SIGMAS, fpr=0.05)
    profile = CalibrationProfile(
        deployment="x",
        fingerprint="abc",
        steps=8,
        height=64,
        width=64,
        guidance_scale=1.0,
        sigmas=SIGMAS,
        detectors={n: d.state_dict() for n, d in dets.items()},
        report=report,
    )
    path = tmp_path / "p.json"
    profile.save(path)
    loaded = CalibrationProfile.load(path)
    assert loaded.report == report
    bad = perturb(benign(50, 5), "over_smoothing", 3)
    a = [r.flagged for r in dets["over_smoothing"].predict(bad, SIGMAS)]
    b = [r.flagged for r in loaded.build()["over_smoothing"].predict(bad, SIGMAS)]
    assert a == b and all(a)
    path.write_text(path.read_text().replace("latentguard.profile/v1", "latentguard.profile/v0"))
    with pytest.raises(CalibrationError, match="unsupported profile format"):
        CalibrationProfile.load(path)
