"""Policy in the per-step loop: annotate vs abort, fail_open vs fail_closed."""

import torch

from latentguard.detectors import Action, DetectorPolicy, OnError, RequestGuard
from latentguard.detectors.non_finite import NonFinite
from latentguard.detectors.over_smoothing import OverSmoothing

SIGMAS = [1.0, 0.75, 0.5, 0.25, 0.0]


class Broken(OverSmoothing):
    name = "over_smoothing"

    def step_score(self, stats, sigma):
        raise RuntimeError("detector bug")


def run(detectors, policies, nan_at=None):
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    guard = RequestGuard(detectors, policies, noise, SIGMAS, backend="reference")
    x = noise
    for step in range(4):
        x = x * 0.9
        if step == nan_at:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        if guard.check(step, x):
            break
    return guard


def test_non_finite_abort_stops_at_that_step():
    guard = run({"non_finite": NonFinite()}, {"non_finite": DetectorPolicy(Action.ABORT)}, nan_at=1)
    assert guard.aborted_at == 1 and guard.steps_run == 2 and guard.verdict(0) == "abort"
    (rep,) = guard.detector_reports(0)
    assert rep.flagged and rep.first_step == 1 and rep.score >= 1


def test_annotate_only_flags_and_runs_on():
    guard = run({"non_finite": NonFinite()}, {"non_finite": DetectorPolicy(Action.ANNOTATE)}, nan_at=1)
    assert guard.aborted_at == -1 and guard.steps_run == 4 and guard.verdict(0) == "flag"


def test_fail_open_records_the_error_and_passes():
    guard = run({"over_smoothing": Broken()}, {"over_smoothing": DetectorPolicy(on_error=OnError.FAIL_OPEN)})
    (rep,) = guard.detector_reports(0)
    assert guard.verdict(0) == "pass" and not rep.flagged and "detector bug" in rep.error
    assert all("over_smoothing" not in s.scores for s in guard.step_reports(0))


def test_fail_closed_counts_as_flagged_and_can_abort():
    policy = DetectorPolicy(Action.ABORT, OnError.FAIL_CLOSED)
    guard = run({"over_smoothing": Broken()}, {"over_smoothing": policy})
    (rep,) = guard.detector_reports(0)
    assert guard.verdict(0) == "abort" and guard.aborted_at == 0 and rep.flagged and rep.first_step == 0
