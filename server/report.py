"""The per-request report (proto `latentguard.v1.Report`; JSON uses the proto field names)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from latentguard.detectors import DetectorResult, StepReport, Verdict


@dataclass
class Timings:
    total_seconds: float = 0.0
    guard_seconds: float = 0.0
    guard_seconds_per_step: float = 0.0


@dataclass
class Attribution:
    """A flagged request replayed with the deployment's adapters disabled (proto `Attribution`)."""

    adapters: list[str]
    verdict_without_adapters: Verdict
    flagged_without_adapters: list[str]
    adapters_caused: bool  # the artifact goes away without the adapters


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
    detectors: list[DetectorResult]
    steps: list[StepReport]
    timings: Timings = field(default_factory=Timings)
    profile: str = ""  # calibration profile fingerprint
    profile_exact: bool = True  # request used the calibrated resolution and schedule
    attribution: Attribution | None = None
    request_id: str = ""  # set by the server for each request: the evidence bundle's id, the exemplars'
    trace_id: str = ""  # OpenTelemetry trace id (32 hex digits) when tracing is on
    # what guarded the request: profile (calibrated detectors), collecting (live calibration under way)
    # or none (uncalibrated); in the last two only non_finite ran, so a "pass" means no NaN / Inf
    calibration: str = "profile"

    @property
    def flagged_detectors(self) -> list[str]:
        return [d.name for d in self.detectors if d.flagged]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Report:
        """Inverse of to_dict; also takes protobuf JSON (64-bit integers arrive as strings)."""
        steps = [StepReport(**{**x, "nonfinite": int(x["nonfinite"])}) for x in d.get("steps", [])]
        attribution = d.get("attribution")
        return Report(
            **{
                k: v
                for k, v in d.items()
                if k not in ("detectors", "steps", "timings", "seed", "attribution")
            },
            attribution=Attribution(**attribution) if attribution else None,
            seed=int(d["seed"]),
            detectors=[DetectorResult(**x) for x in d.get("detectors", [])],
            steps=steps,
            timings=Timings(**d.get("timings", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False, default=str)
