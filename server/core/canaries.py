"""Control-prompt canaries per deployment: a round every `interval_seconds` when the server is idle,
and on demand (the RunCanaries RPC, `latentguard canary`).

An idle round starts only once no primary request is admitted anywhere (idle.py) and yields like a
shadow run: each canary stops at its next step boundary as soon as a primary request is admitted
(outcome `preempted`; the next round tries again). An on-demand round runs to the end. Each compared
round sets `latentguard_canary_divergence{deployment}` to the largest divergence of its canaries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from latentguard.server.config import CanaryConfig
from latentguard.server.core.idle import until_idle
from latentguard.server.metrics import Metrics
from latentguard.server.pipelines.canaries import CanaryReport, CanarySet, run_round
from latentguard.server.pipelines.runner import PipelineRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Watched:
    runner: PipelineRunner
    executor: Executor
    config: CanaryConfig
    reference: CanarySet


class Canaries:
    def __init__(self, metrics: Metrics, primary_busy: Callable[[], bool]):
        self.metrics = metrics
        self.primary_busy = primary_busy
        self.watched: dict[str, _Watched] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    def watch(self, name: str, runner: PipelineRunner, executor: Executor, config: CanaryConfig) -> None:
        reference = runner.dep.canaries
        assert reference is not None
        self.watched[name] = _Watched(runner, executor, config, reference)
        self.metrics.set_canary_tolerance(name, config.tolerance)
        task = asyncio.ensure_future(self._every(name))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _every(self, name: str) -> None:
        w = self.watched[name]
        while not self.closing:
            await asyncio.sleep(w.config.interval_seconds)
            if not await until_idle(self.primary_busy, w.config.max_wait_seconds, lambda: self.closing):
                if not self.closing:
                    self.metrics.canary_outcome(name, "skipped")
                continue
            try:
                await self.run(name, preemptible=True)
            except Exception:
                log.exception("canaries of %s failed", name)

    async def run(self, name: str, preemptible: bool = False) -> CanaryReport | None:
        """Every canary of a deployment, compared with its reference; None when a primary request
        preempted the round. Counted in `latentguard_canary_runs_total` either way."""
        w = self.watched[name]
        loop = asyncio.get_running_loop()
        stop = self.primary_busy if preemptible else None
        try:
            report = await loop.run_in_executor(
                w.executor, run_round, w.runner, w.reference, w.config.tolerance, stop
            )
        except Exception:
            self.metrics.canary_outcome(name, "error")
            raise
        if report is None:
            self.metrics.canary_outcome(name, "preempted")
            return None
        self.metrics.set_canary(name, report.divergence)
        self.metrics.canary_outcome(name, "compared")
        if report.changed:
            log.warning(
                "%s: canaries diverge from their reference (%.3g > tolerance %.3g): the model changed",
                name,
                report.divergence,
                w.config.tolerance,
            )
        return report

    def close(self) -> None:
        """Draining: no new round starts; a running canary finishes its step."""
        self.closing = True
        for task in list(self.tasks):
            task.cancel()
