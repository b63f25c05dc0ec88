"""Fleet drift per deployment, off the hot path (the statistics: detectors/drift.py).

Every finished Generate request that ran its whole trajectory at the drift reference's schedule,
size and guidance, without a drill, adds its summary to its deployment's window (the last W such
requests, W the reference's window). Once the window is full, every `every` new requests it is
scored on a thread of its own (numpy only, so the denoising thread's OpenMP team is left alone),
and the scores and the MMD permutation p-value go to `latentguard_drift_score{deployment,method}`
and `latentguard_drift_pvalue{deployment}`. At most one scoring per deployment runs at a time; a
window that fills meanwhile is scored next.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from latentguard.detectors.drift import DriftReference, Window
from latentguard.server.config import DriftConfig
from latentguard.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class _Watched:
    reference: DriftReference
    config: DriftConfig
    window: Window
    scoring: bool = False


class FleetDrift:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.watched: dict[str, _Watched] = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="lg-drift")
        self.tasks: set[asyncio.Task[None]] = set()

    def watch(self, deployment: str, reference: DriftReference, config: DriftConfig) -> None:
        self.watched[deployment] = _Watched(reference, config, Window(reference.window, config.every))

    def add(self, deployment: str, summary: np.ndarray) -> None:
        """A comparable request finished (called on the event loop)."""
        w = self.watched.get(deployment)
        if w is None:
            return
        due = w.window.add(summary)
        self.metrics.set_drift_window(deployment, len(w.window))
        if due and not w.scoring:
            w.scoring = True
            task = asyncio.ensure_future(self._score(deployment, w, w.window.take()))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _score(self, deployment: str, w: _Watched, window: np.ndarray) -> None:
        try:
            loop = asyncio.get_running_loop()
            scores, pvalue = await loop.run_in_executor(self.executor, self._compute, w, window)
            self.metrics.set_drift(deployment, scores, pvalue)
        except Exception:
            log.exception("drift scoring of %s failed", deployment)
        finally:
            w.scoring = False

    @staticmethod
    def _compute(w: _Watched, window: np.ndarray) -> tuple[dict[str, float], float]:
        return w.reference.scores(window), w.reference.mmd_pvalue(window, w.config.permutations)

    async def wait(self) -> None:
        """Until every scoring in flight has finished (tests)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
