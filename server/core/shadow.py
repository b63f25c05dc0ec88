"""Shadow mode: mirror a fraction of a deployment's requests to a candidate, off the caller's path.

For a sampled request the primary run also records its trajectory. After the caller has its answer,
the same resolved request (prompt, seed, steps, size, guidance) runs on the candidate's worker and
the relative L2 distance between the two final latents goes to `latentguard_shadow_divergence`.
The candidate's own report is counted under the candidate deployment like any request, so its
artifact rate is measured on mirrored traffic (the A/B dashboard and alert read it).

Bounds, so that shadow load never starves primary traffic:
- at most `max_pending` shadow runs per pair at once (waiting or running); beyond that, skipped;
- a shadow run starts only once no primary request is admitted anywhere in the server (idle.py); if
  that takes over `max_wait_seconds`, it is skipped;
- a running shadow yields: it stops at the next step boundary as soon as a primary request is
  admitted (outcome `preempted`), so a primary request waits at most about one denoising step.
Every sampled request ends in one outcome: compared, skipped, preempted or error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from latentguard.server.config import ShadowConfig
from latentguard.server.core.idle import until_idle
from latentguard.server.metrics import Metrics
from latentguard.server.pipelines.requests import ResolvedRequest
from latentguard.server.pipelines.runner import PipelineRunner
from latentguard.server.pipelines.trajectory_record import RecordedTrajectory, relative_l2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    """One sampled request to mirror: the baseline's resolved request and trajectory, and where to run."""

    config: ShadowConfig
    request: ResolvedRequest
    baseline: RecordedTrajectory
    runner: PipelineRunner  # the candidate's
    executor: Executor  # the candidate's worker
    primary_busy: Callable[[], bool]


def final_divergence(candidate: RecordedTrajectory, baseline: RecordedTrajectory) -> float:
    """||c - b|| / ||b|| of the final latents."""
    return relative_l2(candidate.latents[-1], baseline.latents[-1])


class ShadowMirror:
    def __init__(self, configs: list[ShadowConfig], metrics: Metrics, seed: int | None = None):
        self.configs = configs
        self.metrics = metrics
        self.rng = random.Random(seed)
        self.pending: dict[tuple[str, str], int] = {(c.baseline, c.candidate): 0 for c in configs}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    def sample(self, deployment: str) -> list[ShadowConfig]:
        """The shadow pairs this request of `deployment` is mirrored to (drawn per request)."""
        return [c for c in self.configs if c.baseline == deployment and self.rng.random() < c.fraction]

    def launch(self, job: ShadowJob) -> None:
        cfg = job.config
        key = (cfg.baseline, cfg.candidate)
        if self.pending[key] >= cfg.max_pending:
            self.metrics.shadow_outcome(cfg.baseline, cfg.candidate, "skipped")
            return
        self.pending[key] += 1
        task = asyncio.ensure_future(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: ShadowJob) -> None:
        cfg = job.config
        shadow = dataclasses.replace(job.request, deployment=cfg.candidate, return_trajectory=True)
        outcome = "error"
        try:
            if not await until_idle(job.primary_busy, cfg.max_wait_seconds, lambda: self.closing):
                outcome = "skipped"
                return
            result = await asyncio.get_running_loop().run_in_executor(
                job.executor, lambda: job.runner.generate(shadow, should_stop=job.primary_busy, decode=False)
            )
            report, trajectory = result.report, result.trajectory
            finished = report.steps_run == report.steps_requested
            if trajectory is not None and finished and job.baseline.steps == trajectory.steps:
                divergence = final_divergence(trajectory, job.baseline)
                self.metrics.observe_shadow(cfg.baseline, cfg.candidate, divergence)
                self.metrics.observe(report)
                outcome = "compared"
            elif report.verdict == "abort":
                self.metrics.observe(report)  # the candidate aborted what the baseline finished
                outcome = "compared"
            else:
                outcome = "preempted"
        except Exception:
            log.exception("shadow run %s -> %s failed", cfg.baseline, cfg.candidate)
        finally:
            self.pending[(cfg.baseline, cfg.candidate)] -= 1
            self.metrics.shadow_outcome(cfg.baseline, cfg.candidate, outcome)

    def close(self) -> None:
        """Draining: runs not yet started are skipped; running ones stop at their next step."""
        self.closing = True

    async def wait(self) -> None:
        """Until every shadow run in flight has finished (drain, tests)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
