"""RequestGuard: the per-request loop body. Each step: monitor -> every detector -> policy -> verdict.

It works on batches (B >= 1) and keeps every verdict per element: an element aborts when a detector
with the abort policy flags it. `check` returns one `StepVerdict` per element; that is the only
per-step answer (stream events, Inspect verdicts and the runner's interrupt all read it).
"""

from __future__ import annotations

import logging
import math
import time

import torch

from latentguard.detectors.base import Detector
from latentguard.detectors.policy import Action, DetectorPolicy, OnError
from latentguard.detectors.results import DetectorResult, StepReport, StepVerdict, Verdict
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
        keep_flagged_x0: bool = False,
    ):
        self.detectors = detectors
        self.policies = {name: policies.get(name, DetectorPolicy()) for name in detectors}
        self.monitor = TrajectoryMonitor(initial_latents, sigmas, backend=backend)
        self.sigmas = self.monitor.sigmas
        b = initial_latents.shape[0]
        self.batch = b
        self.scores: dict[str, list[torch.Tensor]] = {name: [] for name in detectors}
        self.first_step = {name: torch.full((b,), -1, dtype=torch.long) for name in detectors}
        self.aborted_at = torch.full((b,), -1, dtype=torch.long)
        self.errors: dict[str, str] = {}
        self.step_seconds: list[float] = []
        # with keep_flagged_x0 (evidence bundles): element -> (step, its x0_hat [C, H, W] on the CPU)
        # at the first step any detector flagged it; one tensor per flagged element, never per step
        self.keep_flagged_x0 = keep_flagged_x0
        self.flagged_x0: dict[int, tuple[int, torch.Tensor]] = {}

    @property
    def total_steps(self) -> int:
        return len(self.sigmas) - 1

    def check(
        self, step: int, latents: torch.Tensor, attention: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> list[StepVerdict]:
        """Score the step that produced `latents` (and the attention probes' ([B, L] entropy, [B, L]
        rank) of that step, when the deployment probes); one verdict per batch element."""
        start = time.perf_counter()
        stats = self.monitor.observe(step, latents, attention)
        abort = torch.zeros(self.batch, dtype=torch.bool)
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
            self.first_step[name][flagged & (self.first_step[name] < 0)] = step
            if policy.action == Action.ABORT:
                abort |= flagged
        self.aborted_at[abort & (self.aborted_at < 0)] = step
        if self.keep_flagged_x0:
            self._keep_newly_flagged(step)
        verdicts = self.step_verdicts(step)
        self.step_seconds.append(time.perf_counter() - start)
        return verdicts

    def _keep_newly_flagged(self, step: int) -> None:
        if not self.first_step:
            return
        flagged = torch.stack(list(self.first_step.values())).ge(0).any(dim=0)
        for i in flagged.nonzero().flatten().tolist():
            if i not in self.flagged_x0:
                self.flagged_x0[i] = (step, self.monitor.latest_x0[i].detach().float().cpu().clone())

    def step_verdicts(self, step: int) -> list[StepVerdict]:
        """One verdict per element for `step`, from the scores and first steps so far (copied to
        Python once for the batch rather than element by element: this runs every step)."""
        names = list(self.detectors)
        empty: list[list] = [[] for _ in range(self.batch)]
        scores = torch.stack([self.scores[n][step] for n in names], dim=1).tolist() if names else empty
        first = torch.stack([self.first_step[n] for n in names], dim=1).tolist() if names else empty
        aborted = (self.aborted_at >= 0).tolist()
        return [
            StepVerdict(
                step=step,
                total_steps=self.total_steps,
                verdict=_verdict(aborted[i], first[i]),
                scores={n: v for n, v in zip(names, scores[i], strict=True) if math.isfinite(v)},
                flagged=tuple(n for n, f in zip(names, first[i], strict=True) if 0 <= f <= step),
            )
            for i in range(self.batch)
        ]

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def steps_run(self) -> int:
        return self.monitor.steps_seen

    def aborted_step(self, i: int) -> int:
        return int(self.aborted_at[i])

    def score_matrix(self, name: str) -> torch.Tensor:
        """[B, steps_run] scores of one detector."""
        return torch.stack(self.scores[name], dim=1) if self.scores[name] else torch.empty(self.batch, 0)

    def detector_results(self, i: int) -> list[DetectorResult]:
        return [
            DetectorResult.from_scores(
                name, self.score_matrix(name)[i], float(det.threshold or 0.0), self.errors.get(name, "")
            )
            for name, det in self.detectors.items()
        ]

    def verdict(self, i: int) -> Verdict:
        return _verdict(bool(self.aborted_at[i] >= 0), [int(fs[i]) for fs in self.first_step.values()])

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
                    attention_entropy=_block_mean(stats.attn_entropy, i),
                    attention_rank=_block_mean(stats.attn_rank, i),
                )
            )
        return out


def _verdict(aborted: bool, first_steps: list[int]) -> Verdict:
    """An element's verdict so far: abort once an abort-policy detector flagged it, else flag once
    any detector did (first_steps: each detector's first flagged step, -1 for none)."""
    if aborted:
        return "abort"
    return "flag" if any(f >= 0 for f in first_steps) else "pass"


def _block_mean(values: torch.Tensor | None, i: int) -> float | None:
    return None if values is None else float(values[i].mean())
