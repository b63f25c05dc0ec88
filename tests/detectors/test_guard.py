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
        if guard.check(step, x)[0].abort:
            break
    return guard


def test_non_finite_abort_stops_at_that_step():
    guard = run({"non_finite": NonFinite()}, {"non_finite": DetectorPolicy(Action.ABORT)}, nan_at=1)
    assert guard.aborted_step(0) == 1 and guard.steps_run == 2 and guard.verdict(0) == "abort"
    (rep,) = guard.detector_results(0)
    assert rep.flagged and rep.first_step == 1 and rep.score >= 1


def test_annotate_only_flags_and_runs_on():
    guard = run({"non_finite": NonFinite()}, {"non_finite": DetectorPolicy(Action.ANNOTATE)}, nan_at=1)
    assert guard.aborted_step(0) == -1 and guard.steps_run == 4 and guard.verdict(0) == "flag"


def test_fail_open_records_the_error_and_passes():
    guard = run({"over_smoothing": Broken()}, {"over_smoothing": DetectorPolicy(on_error=OnError.FAIL_OPEN)})
    (rep,) = guard.detector_results(0)
    assert guard.verdict(0) == "pass" and not rep.flagged and "detector bug" in rep.error
    assert all("over_smoothing" not in s.scores for s in guard.step_reports(0))


def test_fail_closed_counts_as_flagged_and_can_abort():
    policy = DetectorPolicy(Action.ABORT, OnError.FAIL_CLOSED)
    guard = run({"over_smoothing": Broken()}, {"over_smoothing": policy})
    (rep,) = guard.detector_results(0)
    assert guard.verdict(0) == "abort" and guard.aborted_step(0) == 0 and rep.flagged and rep.first_step == 0


def test_step_verdicts_are_cumulative_and_agree_with_the_report():
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    dets = {"non_finite": NonFinite()}
    guard = RequestGuard(dets, {"non_finite": DetectorPolicy(Action.ANNOTATE)}, noise, SIGMAS, "reference")
    x, seen = noise, []
    for step in range(4):
        x = x * 0.9
        if step == 1:
            x = x.clone()
            x[1, 0, 0, 0] = float("nan")  # only batch element 1 goes bad, at step 1
        seen.append(guard.check(step, x))
    clean, bad = [v[0] for v in seen], [v[1] for v in seen]
    assert [v.verdict for v in clean] == ["pass"] * 4 and all(not v.flagged for v in clean)
    assert [v.verdict for v in bad] == ["pass", "flag", "flag", "flag"]
    assert [v.flagged for v in bad] == [(), ("non_finite",), ("non_finite",), ("non_finite",)]
    assert bad[0].scores["non_finite"] == 0 and bad[1].scores["non_finite"] == 1
    assert [v.step for v in bad] == [0, 1, 2, 3] and bad[0].total_steps == 4
    (result,) = guard.detector_results(1)
    assert result.first_step == 1 and guard.verdict(1) == bad[-1].verdict
