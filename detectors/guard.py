"""RequestGuard: the per-request loop body. Each step: monitor -> every detector -> policy.

It works on batches (B >= 1); an abort stops the whole pipeline call, so the service runs one
request per call and batch evaluation runs with annotate-only policies.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from latentguard.detectors.base import Detector
from latentguard.detectors.policy import Action, DetectorPolicy, OnError
from latentguard.detectors.report import DetectorReport, StepReport, Verdict
from latentguard.detectors.trajectory import TrajectoryMonitor
from latentguard.kernels import Backend

log = logging.getLogger(__name__)


class RequestGuard:
    def __init__(
        self,
        detectors: dict[str, Detector],
        policies: dict[str, DetectorPolicy],
        initial_latents: torch.Tensor,
        sigmas: list[float],
        backend: Backend = "auto",
    ):
        self.detectors = detectors
        self.policies = {name: policies.get(name, DetectorPolicy()) for name in detectors}
        self.monitor = TrajectoryMonitor(initial_latents, sigmas, backend=backend)
        self.sigmas = self.monitor.sigmas
        b = initial_latents.shape[0]
        self.batch = b
        self.scores: dict[str, list[torch.Tensor]] = {name: [] for name in detectors}
        self.first_step = {name: torch.full((b,), -1, dtype=torch.long) for name in detectors}
        self.errors: dict[str, str] = {}
        self.aborted_at: int = -1
        self.step_seconds: list[float] = []

    def check(self, step: int, latents: torch.Tensor) -> bool:
        """Score the step that produced `latents`; True when the request must abort now."""
        start = time.perf_counter()
        stats = self.monitor.observe(step, latents)
        abort = False
        for name, det in self.detectors.items():
            policy = self.policies[name]
            try:
                if name in self.errors:
                    raise RuntimeError(self.errors[name])
                score = det.step_score(stats, self.sigmas[step]).double()
                assert det.threshold is not None
                flagged = score > det.threshold
            except Exception as exc:  # a detector bug must not take the request down
                if name not in self.errors:
                    self.errors[name] = f"{type(exc).__name__}: {exc}"
                    log.exception("detector %s failed at step %d", name, step)
                closed = policy.on_error == OnError.FAIL_CLOSED
                score = torch.full((self.batch,), math.inf if closed else math.nan, dtype=torch.float64)
                flagged = torch.full((self.batch,), closed)
            self.scores[name].append(score)
            newly = flagged & (self.first_step[name] < 0)
            self.first_step[name][newly] = step
            if bool(flagged.any()) and policy.action == Action.ABORT:
                abort = True
        if abort and self.aborted_at < 0:
            self.aborted_at = step
        self.step_seconds.append(time.perf_counter() - start)
        return abort

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def steps_run(self) -> int:
        return self.monitor.steps_seen

    def score_matrix(self, name: str) -> torch.Tensor:
        """[B, steps_run] scores of one detector."""
        return torch.stack(self.scores[name], dim=1) if self.scores[name] else torch.empty(self.batch, 0)

    def detector_reports(self, i: int) -> list[DetectorReport]:
        out = []
        for name, det in self.detectors.items():
            row = self.score_matrix(name)[i]
            finite = row[torch.isfinite(row)]  # a failed detector's steps carry no score
            out.append(
                DetectorReport(
                    name=name,
                    score=float(finite.max()) if finite.numel() else 0.0,
                    threshold=float(det.threshold or 0.0),
                    flagged=bool(self.first_step[name][i] >= 0),
                    first_step=int(self.first_step[name][i]),
                    error=self.errors.get(name, ""),
                )
            )
        return out

    def verdict(self, i: int) -> Verdict:
        if self.aborted_at >= 0:
            return "abort"
        return "flag" if any(bool(fs[i] >= 0) for fs in self.first_step.values()) else "pass"

    def step_reports(self, i: int) -> list[StepReport]:
        out = []
        for step, stats in enumerate(self.monitor.series):
            out.append(
                StepReport(
                    step=step,
                    sigma=self.sigmas[step],
                    scores={
                        name: float(self.scores[name][step][i])
                        for name in self.detectors
                        if math.isfinite(float(self.scores[name][step][i]))
                    },
                    mean=float(stats.mean[i].mean()),
                    var=float(stats.var[i].mean()),
                    hf_ratio=float(stats.hf_ratio[i].mean()),
                    sr_peak=float(stats.sr_peak[i].mean()),
                    nonfinite=int(stats.nonfinite[i].sum()),
                    guard_seconds=self.step_seconds[step],
                )
            )
        return out
