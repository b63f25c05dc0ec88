"""Benign (and drilled) trajectory collection over prompt x seed grids, and profile calibration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from latentguard.detectors import CalibrationProfile, Detector, Drill, RequestGuard, calibrate_detectors
from latentguard.detectors.policy import DetectorPolicy
from latentguard.kernels import TrajectoryStats
from latentguard.server.pipelines.deployments import Deployment
from latentguard.server.pipelines.runner import PipelineRunner

PROMPTS_DIR = Path(__file__).parent / "prompts"
Progress = Callable[[int], None]  # called with the number of runs just finished


def default_prompts(split: str) -> list[str]:
    """The shipped prompt set of a split: "calibration" or "evaluation" (disjoint)."""
    return read_prompts(PROMPTS_DIR / f"{split}.txt")


def read_prompts(path: str | Path) -> list[str]:
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line; '#' starts a comment)")
    return prompts


def run_grid(prompts: list[str], seeds_per_prompt: int, first_seed: int = 0) -> list[tuple[str, int]]:
    """Every prompt with `seeds_per_prompt` seeds, every run its own seed.

    Distinct seeds matter: the initial noise dominates the latent statistics, so reusing seeds
    0..N-1 for every prompt would calibrate on only N noise draws.
    """
    return [
        (p, first_seed + i * seeds_per_prompt + j)
        for i, p in enumerate(prompts)
        for j in range(seeds_per_prompt)
    ]


def _batches(items: list[tuple[str, int]], size: int) -> Iterator[list[tuple[str, int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class Collected:
    stats: TrajectoryStats  # fields [N, S, ...]
    sigmas: list[float]
    guards: list[RequestGuard]


def collect(
    dep: Deployment,
    runs: list[tuple[str, int]],
    *,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    drill: Drill | Callable[[int], Drill | None] | None = None,
    detectors: dict[str, Detector] | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> Collected:
    """Run (prompt, seed) pairs in batches, annotate-only, keeping per-step stats (not latents).

    `drill` may be a function of the batch index, so one collection can spread injection steps.
    """
    cfg = dep.config
    runner = PipelineRunner(dep)
    policies = {name: DetectorPolicy() for name in (detectors or {})}
    parts, guards, sigmas = [], [], []
    for b, batch in enumerate(_batches(runs, batch_size)):
        this_drill = drill(b) if callable(drill) else drill
        guard = runner.denoise(
            [p for p, _ in batch],
            [s for _, s in batch],
            steps or cfg.steps,
            height or cfg.height,
            width or cfg.width,
            cfg.guidance_scale,
            detectors=detectors or {},
            policies=policies,
            drill=this_drill,
        ).guard
        parts.append(guard.monitor.stacked())
        guards.append(guard)
        sigmas = guard.sigmas
        if progress is not None:
            progress(len(batch))
    return Collected(TrajectoryStats.cat(parts, dim=0), sigmas, guards)


def calibrate_deployment(
    dep: Deployment,
    prompts: list[str],
    seeds_per_prompt: int,
    fpr: float,
    out: str | Path,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> CalibrationProfile:
    """Benign runs (seeds 0 .. len(prompts) * seeds_per_prompt - 1) split alternately into a fit half
    and a held-out calibration half."""
    cfg = dep.config
    collected = collect(dep, run_grid(prompts, seeds_per_prompt), batch_size=batch_size, progress=progress)
    fit_set, cal_set = collected.stats.index(slice(0, None, 2)), collected.stats.index(slice(1, None, 2))
    detectors, report = calibrate_detectors(fit_set, cal_set, collected.sigmas, fpr)
    profile = CalibrationProfile(
        deployment=cfg.name,
        fingerprint=dep.fingerprint,
        steps=cfg.steps,
        height=cfg.height,
        width=cfg.width,
        guidance_scale=cfg.guidance_scale,
        sigmas=collected.sigmas,
        detectors={name: det.state_dict() for name, det in detectors.items()},
        report=report,
        notes={"prompts": len(prompts), "seeds_per_prompt": seeds_per_prompt},
    )
    profile.save(out)
    return profile
