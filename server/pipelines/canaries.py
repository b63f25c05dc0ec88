"""Control-prompt canaries (seed 000): fixed prompts and seeds whose trajectories are recorded once
per deployment and replayed later; a model that no longer reproduces them has changed.

A canary's reference is its per-step features (`detectors.drift.step_features`) and its final
latents average-pooled 4 x 4 (a 256 x 256 image: 16 x 8 x 8 values). Its divergence is the larger of
the final latents' relative L2 distance and the largest absolute change of any per-step feature;
`first_divergent_step` is the first step whose features moved by more than the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from latentguard.detectors.drift import step_features
from latentguard.detectors.stored import load_arrays, save_arrays
from latentguard.server.config import CanaryPrompt
from latentguard.server.pipelines.trajectory_record import relative_l2

if TYPE_CHECKING:  # the runner imports deployments, which holds a deployment's CanarySet
    from latentguard.server.pipelines.runner import PipelineRunner

CANARY_FORMAT = "latentguard.canaries/v1"
POOL = 4


@dataclass(frozen=True)
class Canary:
    prompt: str
    seed: int
    steps: int


@dataclass
class Observation:
    features: np.ndarray  # [S, F]
    final: np.ndarray  # [C, H / 4, W / 4]


@dataclass
class CanaryResult:
    canary: Canary
    divergence: float
    first_divergent_step: int  # -1 for none


@dataclass(frozen=True)
class CanaryReport:
    """One round: every canary of a deployment, compared with its reference."""

    deployment: str
    results: list[CanaryResult]
    tolerance: float

    @property
    def divergence(self) -> float:
        return max(r.divergence for r in self.results)

    @property
    def changed(self) -> bool:
        return self.divergence > self.tolerance or any(r.first_divergent_step >= 0 for r in self.results)


@dataclass
class CanarySet:
    """The recorded canaries of one deployment (saved next to its profile)."""

    fingerprint: str
    height: int
    width: int
    guidance_scale: float
    canaries: list[Canary]
    references: list[Observation]

    def save(self, path: str | Path) -> None:
        arrays = {}
        for i, ref in enumerate(self.references):
            arrays[f"features.{i}"] = ref.features.astype(np.float64)
            arrays[f"final.{i}"] = ref.final.astype(np.float32)
        meta = {k: getattr(self, k) for k in ("fingerprint", "height", "width", "guidance_scale")}
        save_arrays(path, CANARY_FORMAT, arrays, {**meta, "canaries": [c.__dict__ for c in self.canaries]})

    @staticmethod
    def load(path: str | Path) -> CanarySet:
        meta, arrays = load_arrays(path, CANARY_FORMAT)
        canaries = [Canary(**c) for c in meta.pop("canaries")]
        refs = [Observation(arrays[f"features.{i}"], arrays[f"final.{i}"]) for i in range(len(canaries))]
        return CanarySet(**meta, canaries=canaries, references=refs)


def canaries_of(prompts: list[CanaryPrompt], default_steps: int) -> list[Canary]:
    return [Canary(p.prompt, p.seed, p.steps or default_steps) for p in prompts]


def observe(
    runner: PipelineRunner,
    canary: Canary,
    size_and_guidance: tuple[int, int, float],
    should_stop: Callable[[], bool] | None = None,
) -> Observation | None:
    """Run one canary alone at (height, width, guidance); None when `should_stop` stopped it."""
    height, width, guidance_scale = size_and_guidance
    run = runner.denoise(
        [canary.prompt],
        [canary.seed],
        canary.steps,
        height,
        width,
        guidance_scale,
        detectors={},
        policies={},
        should_stop=(lambda i: should_stop()) if should_stop is not None else None,
    )
    if run.guard.steps_run < canary.steps:
        return None
    final = torch.nn.functional.avg_pool2d(run.latents.float().cpu(), POOL)[0]
    return Observation(step_features(run.guard.monitor.stacked())[0], final.numpy())


def compare(canary: Canary, reference: Observation, seen: Observation, tolerance: float) -> CanaryResult:
    per_step = np.abs(seen.features - reference.features).max(axis=1)
    final = relative_l2(torch.from_numpy(seen.final), torch.from_numpy(reference.final))
    over = np.flatnonzero(per_step > tolerance)
    return CanaryResult(canary, max(final, float(per_step.max())), int(over[0]) if len(over) else -1)


def run_round(
    runner: PipelineRunner,
    reference: CanarySet,
    tolerance: float,
    should_stop: Callable[[], bool] | None = None,
) -> CanaryReport | None:
    """Every canary in turn, alone, at the size and guidance it was recorded at; None when
    `should_stop` stopped one (checked at each step)."""
    recorded = (reference.height, reference.width, reference.guidance_scale)
    results = []
    for canary, ref in zip(reference.canaries, reference.references, strict=True):
        seen = observe(runner, canary, recorded, should_stop)
        if seen is None:
            return None
        results.append(compare(canary, ref, seen, tolerance))
    return CanaryReport(runner.dep.name, results, tolerance)


def record(runner: PipelineRunner, prompts: list[CanaryPrompt]) -> CanarySet:
    cfg = runner.dep.config
    canaries = canaries_of(prompts, cfg.steps)
    references = [observe(runner, c, (cfg.height, cfg.width, cfg.guidance_scale)) for c in canaries]
    assert all(r is not None for r in references)
    return CanarySet(
        runner.dep.fingerprint,
        cfg.height,
        cfg.width,
        cfg.guidance_scale,
        canaries,
        references,  # type: ignore[arg-type]
    )
