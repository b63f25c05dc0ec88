"""The per-request report (proto `latentguard.v1.Report`; JSON uses the proto field names)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Verdict = Literal["pass", "flag", "abort"]


@dataclass
class DetectorReport:
    name: str
    score: float
    threshold: float
    flagged: bool
    first_step: int  # -1 when never flagged
    error: str = ""  # set when the detector raised; see the policy's fail_open / fail_closed


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


@dataclass
class Timings:
    total_seconds: float = 0.0
    guard_seconds: float = 0.0
    guard_seconds_per_step: float = 0.0


@dataclass
class Report:
    verdict: Verdict
    deployment: str
    family: str
    variant: str
    seed: int
    steps_requested: int
    steps_run: int
    aborted_at_step: int  # -1 when not aborted
    drill: str
    detectors: list[DetectorReport]
    steps: list[StepReport]
    timings: Timings = field(default_factory=Timings)
    profile: str = ""  # calibration profile fingerprint
    profile_exact: bool = True  # request used the calibrated resolution and schedule

    @property
    def flagged_detectors(self) -> list[str]:
        return [d.name for d in self.detectors if d.flagged]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Report:
        """Inverse of to_dict; also takes protobuf JSON (64-bit integers arrive as strings)."""
        steps = [StepReport(**{**x, "nonfinite": int(x["nonfinite"])}) for x in d.get("steps", [])]
        return Report(
            **{k: v for k, v in d.items() if k not in ("detectors", "steps", "timings", "seed")},
            seed=int(d["seed"]),
            detectors=[DetectorReport(**x) for x in d.get("detectors", [])],
            steps=steps,
            timings=Timings(**d.get("timings", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False, default=str)
