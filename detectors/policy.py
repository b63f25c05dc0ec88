"""What happens when a detector flags or fails: per detector `annotate` or `abort`, `fail_open` or
`fail_closed`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    ANNOTATE = "annotate"  # flag the request, let it finish
    ABORT = "abort"  # stop denoising at this step, return no image


class OnError(StrEnum):
    FAIL_OPEN = "fail_open"  # a detector that raises is recorded and ignored
    FAIL_CLOSED = "fail_closed"  # a detector that raises counts as flagged


@dataclass(frozen=True)
class DetectorPolicy:
    action: Action = Action.ANNOTATE
    on_error: OnError = OnError.FAIL_OPEN


def default_policies() -> dict[str, DetectorPolicy]:
    """non_finite aborts and fails closed (a NaN image is never worth finishing); the rest annotate."""
    from latentguard.detectors.registry import DETECTOR_NAMES

    policies = {name: DetectorPolicy() for name in DETECTOR_NAMES}
    policies["non_finite"] = DetectorPolicy(Action.ABORT, OnError.FAIL_CLOSED)
    return policies
