"""Trajectories over prompt x seed grids, in batches, keeping per-step statistics only (calibration,
classifier training, evaluation), and the shipped prompt sets."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias

from latentguard.detectors import Drill
from latentguard.kernels import TrajectoryStats
from latentguard.server.config import DeploymentConfig
from latentguard.server.pipelines.deployments import Deployment
from latentguard.server.pipelines.runner import PipelineRunner

PROMPTS_DIR = Path(__file__).parent / "prompts"
Progress = Callable[[int], None]  # called with the number of runs just finished


class RunCount:
    """A deployment's pipeline runs done, on stderr: a line per 5% with the elapsed time and a linear
    estimate of the rest (plain lines, readable in a log, where a progress bar does not draw)."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done, self.start = name, total, 0, time.time()

    def __call__(self, runs: int) -> None:
        before, self.done = self.done, self.done + runs
        if 20 * self.done // self.total > 20 * before // self.total:
            spent = time.time() - self.start
            left = spent * (self.total - self.done) / self.done
            done = f"{self.done}/{self.total} runs"
            print(f"  {self.name}: {done}, {spent / 60:.0f} min, ~{left / 60:.0f} min left", file=sys.stderr)


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


Drills: TypeAlias = Drill | Sequence[Drill] | None  # one for every batch, or cycled over the batches


def drill_for(drills: Drills, batch: int) -> Drill | None:
    if drills is None or isinstance(drills, Drill):
        return drills
    return drills[batch % len(drills)]


def collect(
    dep: Deployment,
    runs: list[tuple[str, int]],
    *,
    drill: Drills = None,
    batch_size: int = 8,
    first_batch: int = 0,
    progress: Progress | None = None,
) -> Collected:
    """Run (prompt, seed) pairs in batches at the deployment's defaults, keeping per-step stats (not
    latents). A sequence of drills is cycled over the batches (counted from `first_batch`, so that a
    shard of a larger grid gets the drills the whole grid would give it)."""
    runner = PipelineRunner(dep)
    parts, sigmas = [], []
    for b, batch in enumerate(_batches(runs, batch_size)):
        guard = runner.denoise_at_defaults(
            [p for p, _ in batch], [s for _, s in batch], drill_for(drill, first_batch + b)
        ).guard
        parts.append(guard.monitor.stacked())
        sigmas = guard.sigmas
        if progress is not None:
            progress(len(batch))
    return Collected(TrajectoryStats.cat(parts, dim=0), sigmas)


class Collector(Protocol):
    """Where trajectories are computed: this process (LocalCollector) or a Ray cluster
    (distributed.RayCollector); both give the same Collected for the same runs."""

    config: DeploymentConfig
    fingerprint: str

    def collect(
        self, runs: list[tuple[str, int]], drill: Drills = None, progress: Progress | None = None
    ) -> Collected: ...


class LocalCollector:
    def __init__(self, dep: Deployment, batch_size: int = 8):
        self.dep, self.batch_size = dep, batch_size
        self.config, self.fingerprint = dep.config, dep.fingerprint

    def collect(
        self, runs: list[tuple[str, int]], drill: Drills = None, progress: Progress | None = None
    ) -> Collected:
        return collect(self.dep, runs, drill=drill, batch_size=self.batch_size, progress=progress)
