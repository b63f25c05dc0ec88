"""The Vendi drift method on a real model: a model whose outputs collapse toward one prompt lowers the
window's Vendi score past its threshold, while the unchanged model's window stays under it."""

from __future__ import annotations

from latentguard.detectors.drift import request_summary
from latentguard.server.offline.collapse import with_one_prompt
from latentguard.server.offline.trajectories import LocalCollector, default_prompts, run_grid

SEEDS = 3_000_000  # fresh: calibration, classifier, drift reference and evaluation use others


def window_scores(dep, prompts):
    runs = LocalCollector(dep).collect(run_grid(prompts, 1, first_seed=SEEDS))
    return dep.drift.scores(request_summary(runs.stats))


def test_vendi_alarms_for_a_model_collapsing_toward_one_prompt_and_not_for_the_unchanged_one(sd3):
    reference = sd3.drift
    prompts = default_prompts("evaluation")[: reference.window]  # one window of fresh prompts
    unchanged = window_scores(sd3, prompts)
    collapsed = window_scores(with_one_prompt(sd3, prompts[0]), prompts)
    assert unchanged["vendi"] < 1 < collapsed["vendi"], (unchanged, collapsed)
