"""What detectors and the guard return: per detector, per step, and the per-step verdict.

The request-level report (deployment, seed, timings) is the server's (latentguard.server.report);
these are its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Verdict = Literal["pass", "flag", "abort"]


@dataclass(frozen=True)
class DetectorResult:
    """One detector's result for one request (or one run of a batch)."""

    name: str
    score: float  # max over the steps scored (step-normalised; higher is riskier)
    threshold: float
    flagged: bool
    first_step: int  # -1 when never flagged
    error: str = ""  # set when the detector raised; see the policy's fail_open / fail_closed

    @staticmethod
    def from_scores(name: str, row: torch.Tensor, threshold: float, error: str = "") -> DetectorResult:
        """From one run's per-step scores [S]. A step that failed fail-open carries NaN (never
        flags), fail-closed +inf (flags); the reported score is the max over finite steps (0 if none)."""
        over = (row > threshold).nonzero()
        finite = row[torch.isfinite(row)]
        return DetectorResult(
            name=name,
            score=float(finite.max()) if finite.numel() else 0.0,
            threshold=float(threshold),
            flagged=bool(over.numel()),
            first_step=int(over[0]) if over.numel() else -1,
            error=error,
        )


@dataclass(frozen=True)
class StepVerdict:
    """The guard's answer after one denoising step, for one request: the one source of per-step events
    (GenerateStream's step events and Inspect's verdicts are this, converted)."""

    step: int
    total_steps: int
    verdict: Verdict  # of the request so far: abort once a detector with the abort policy flagged
    scores: dict[str, float]  # this step's score per detector (detectors that raised are left out)
    flagged: tuple[str, ...]  # detectors that flagged at this step or earlier

    @property
    def abort(self) -> bool:
        return self.verdict == "abort"


@dataclass
class StepReport:
    step: int
    sigma: float
    scores: dict[str, float]
    # channel averages of the x0_hat statistics at this step
    mean: float
    var: float
    hf_ratio: float
    sr_peak: float
    nonfinite: int
    guard_seconds: float = 0.0  # guardrail cost of this step
    # attention probes, averaged over the probed blocks (None when the deployment does not probe)
    attention_entropy: float | None = None
    attention_rank: float | None = None
