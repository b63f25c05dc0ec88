"""All Prometheus metrics, defined once, on an injectable registry (names are contract).

The denoising loop only fills plain report objects; `Metrics.observe` turns a finished request into
metric updates on the event loop, after the response is built, never inside the per-step callback.
Label sets are bounded by the config: deployments, variants, detectors and outcomes; never prompts,
seeds or request ids. Every child series is created at zero up front.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from latentguard.detectors import DETECTOR_NAMES
from latentguard.detectors.drift import METHODS as DRIFT_METHODS
from latentguard.kernels.dispatch import fallbacks as kernel_fallbacks
from latentguard.server.report import Report

Outcome = Literal["ok", "flagged", "aborted", "rejected", "error", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "flagged", "aborted", "rejected", "error", "cancelled")
GENERATION_OUTCOMES: tuple[Outcome, ...] = ("ok", "flagged", "aborted", "error", "cancelled")
SHADOW_OUTCOMES = ("compared", "skipped", "preempted", "error")
CANARY_OUTCOMES = ("compared", "skipped", "preempted", "error")
EVIDENCE_OUTCOMES = ("written", "dropped", "error")
AUTH_FAILURE_REASONS = ("missing_token", "unknown_token", "deployment_denied", "inspect_denied")


@dataclass(frozen=True)
class DeploymentLabels:
    deployment: str
    family: str
    variant: str
    baseline: str = ""  # the 16-bit deployment this one is a candidate to replace ("" for none)
    adapters: tuple[tuple[str, float], ...] = ()  # (LoRA adapter, scale)


def exemplar_of(report: Report) -> dict[str, str] | None:
    """The exemplar labels of a finished request (None before the server gave it an id)."""
    labels = {"request_id": report.request_id} if report.request_id else {}
    if report.trace_id:
        labels["trace_id"] = report.trace_id
    return labels or None


def outcome_of(report: Report) -> Outcome:
    return {"pass": "ok", "flag": "flagged", "abort": "aborted"}[report.verdict]  # type: ignore[return-value]


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        deployments: Iterable[DeploymentLabels],
        shadow_pairs: Iterable[tuple[str, str]] = (),
    ):
        disable_created_metrics()  # *_created gauges only add series; process-wide, set once here
        self.registry = registry
        self._define_contract(registry)
        self._define_operations(registry)
        self.labels = {d.deployment: d for d in deployments}
        self._precreate(list(shadow_pairs))

    def _define_contract(self, registry: CollectorRegistry) -> None:
        """The metrics whose names and labels are contract (shared/DESIGN.md)."""
        deployment_labels = ["deployment", "family", "variant"]
        self.requests = Counter(
            "latentguard_requests",
            "Generate/Inspect requests by outcome.",
            [*deployment_labels, "outcome"],
            registry=registry,
        )
        self.artifacts = Counter(
            "latentguard_artifacts",
            "Requests flagged by each detector.",
            [*deployment_labels, "detector"],
            registry=registry,
        )
        self.detector_score = Histogram(
            "latentguard_detector_score",
            "Per-request detector score (max over steps, step-normalised).",
            ["deployment", "detector"],
            registry=registry,
            buckets=(-2, -1, 0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50),
        )
        self.step_check = Histogram(
            "latentguard_step_check_seconds",
            "Guardrail cost per denoising step.",
            ["deployment"],
            registry=registry,
            buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1),
        )
        self.generation = Histogram(
            "latentguard_generation_seconds",
            "Wall time of a generation request.",
            ["deployment", "outcome"],
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.drift_score = Gauge(
            "latentguard_drift_score",
            "Fleet drift of the last window of requests against the drift reference, per method "
            "(kl, angle, mmd, shift, vendi), divided by its threshold: above 1 is an alarm (0 until a window "
            "is full). vendi is 1 / the Vendi score: it rises when requests become alike.",
            ["deployment", "method"],
            registry=registry,
        )
        self.canary_divergence = Gauge(
            "latentguard_canary_divergence",
            "Largest divergence of the deployment's canaries (fixed control requests) from their recorded "
            "reference in the last compared round (0 until one).",
            ["deployment"],
            registry=registry,
        )
        self.drift_pvalue = Gauge(
            "latentguard_drift_pvalue",
            "Permutation p-value of the last window's MMD against the drift reference "
            "(1 until a window is full).",
            ["deployment"],
            registry=registry,
        )

    def _define_operations(self, registry: CollectorRegistry) -> None:
        """Beyond the contract: what the alert rules, dashboards and autoscaler join on."""
        self.detector_errors = Counter(
            "latentguard_detector_errors",
            "Requests in which a detector raised (handled by its fail_open / fail_closed policy).",
            ["deployment", "detector"],
            registry=registry,
        )
        self.admitted = Gauge(
            "latentguard_admitted_requests",
            "Requests admitted and not finished (running + queued); the autoscaling signal.",
            ["deployment"],
            registry=registry,
        )
        self.capacity = Gauge(
            "latentguard_admission_capacity",
            "Requests a deployment admits at once (1 + max_queue, run in dynamic batches).",
            ["deployment"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "latentguard_batch_size",
            "Requests per pipeline call (dynamic batching; 1 when a request ran alone).",
            ["deployment"],
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32),
        )
        self.drift_window = Gauge(
            "latentguard_drift_window_requests",
            "Requests in the fleet-drift window (scores are published once it holds the reference's window).",
            ["deployment"],
            registry=registry,
        )
        self.drift_evaluations = Counter(
            "latentguard_drift_evaluations",
            "Fleet-drift windows scored.",
            ["deployment"],
            registry=registry,
        )
        self.canary_tolerance = Gauge(
            "latentguard_canary_tolerance",
            "Canary divergence above which the model no longer matches its reference (config).",
            ["deployment"],
            registry=registry,
        )
        self.canary_runs = Counter(
            "latentguard_canary_runs",
            "Rounds of canaries by outcome (compared, skipped, preempted, error).",
            ["deployment", "outcome"],
            registry=registry,
        )
        self.adapter_scale = Gauge(
            "latentguard_adapter_scale",
            "Always the configured scale of each LoRA adapter a deployment applies.",
            ["deployment", "adapter"],
            registry=registry,
        )
        self.info = Gauge(
            "latentguard_deployment_info",
            "Always 1; labels say which 16-bit baseline a quantized deployment is a candidate for.",
            ["deployment", "family", "variant", "baseline"],
            registry=registry,
        )
        self.kernel_fallbacks = Gauge(
            "latentguard_kernel_fallbacks",
            "Reasons trajectory_stats ran a slower path than it was set up for: the torch path instead of "
            "Triton ('auto'), or the eager torch path where compile_stats compiled it (0: none).",
            registry=registry,
        )
        self.kernel_fallbacks.set_function(lambda: len(kernel_fallbacks()))
        self.auth_failures = Counter(
            "latentguard_auth_failures",
            "Calls refused by authentication or authorisation, by reason (never by token).",
            ["reason"],
            registry=registry,
        )
        self.shadow_runs = Counter(
            "latentguard_shadow_runs",
            "Requests mirrored to a candidate, by outcome (compared, skipped, preempted, error).",
            ["baseline", "candidate", "outcome"],
            registry=registry,
        )
        self.calibration_runs = Gauge(
            "latentguard_calibration_runs",
            "Live calibration: requests collected so far (it goes live at "
            "latentguard_calibration_runs_needed).",
            ["deployment"],
            registry=registry,
        )
        self.calibration_runs_needed = Gauge(
            "latentguard_calibration_runs_needed",
            "Live calibration: requests it needs at the target rate (0: not calibrating from live traffic).",
            ["deployment"],
            registry=registry,
        )
        self.evidence_writes = Counter(
            "latentguard_evidence_writes",
            "Evidence bundles handed to the writer, by outcome (written; dropped: too many pending; "
            "error: the store failed; the request itself is never affected).",
            ["deployment", "outcome"],
            registry=registry,
        )
        self.shadow_divergence = Histogram(
            "latentguard_shadow_divergence",
            "Relative L2 distance between candidate and baseline final latents on a mirrored request.",
            ["baseline", "candidate"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )

    def _precreate(self, shadow_pairs: list[tuple[str, str]]) -> None:
        """Every child series at zero, so that rates and absent() work before the first request."""
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
        for baseline, candidate in shadow_pairs:
            self.shadow_divergence.labels(baseline, candidate)
            for outcome in SHADOW_OUTCOMES:
                self.shadow_runs.labels(baseline, candidate, outcome)
        for d in self.labels.values():
            self.info.labels(d.deployment, d.family, d.variant, d.baseline).set(1)
            self.admitted.labels(d.deployment)
            self.capacity.labels(d.deployment)
            self.step_check.labels(d.deployment)
            self.batch_size.labels(d.deployment)
            self.drift_window.labels(d.deployment)
            self.drift_evaluations.labels(d.deployment)
            self.drift_pvalue.labels(d.deployment).set(1)
            self.canary_divergence.labels(d.deployment)
            for outcome in CANARY_OUTCOMES:
                self.canary_runs.labels(d.deployment, outcome)
            self.calibration_runs.labels(d.deployment)
            self.calibration_runs_needed.labels(d.deployment)
            for outcome in EVIDENCE_OUTCOMES:
                self.evidence_writes.labels(d.deployment, outcome)
            for method in DRIFT_METHODS:
                self.drift_score.labels(d.deployment, method)
            for adapter, scale in d.adapters:
                self.adapter_scale.labels(d.deployment, adapter).set(scale)
            for outcome in OUTCOMES:
                self.requests.labels(d.deployment, d.family, d.variant, outcome)
            for outcome in GENERATION_OUTCOMES:
                self.generation.labels(d.deployment, outcome)
            for det in DETECTOR_NAMES:
                self.artifacts.labels(d.deployment, d.family, d.variant, det)
                self.detector_score.labels(d.deployment, det)
                self.detector_errors.labels(d.deployment, det)

    def observe(self, report: Report, seconds: float | None = None) -> None:
        """A finished request (Generate or Inspect session). The request and artifact counters carry
        its request id (and trace id) as an exemplar: OpenMetrics scrapes show the last one per series,
        the way from a rate in Grafana to `latentguard evidence show ID`."""
        d = self.labels[report.deployment]
        outcome = outcome_of(report)
        exemplar = exemplar_of(report)
        self.requests.labels(d.deployment, d.family, d.variant, outcome).inc(exemplar=exemplar)
        for det in report.detectors:
            if det.flagged:
                self.artifacts.labels(d.deployment, d.family, d.variant, det.name).inc(exemplar=exemplar)
            if det.error:
                self.detector_errors.labels(d.deployment, det.name).inc()
            else:
                self.detector_score.labels(d.deployment, det.name).observe(det.score)
        per_step = self.step_check.labels(d.deployment)
        for step in report.steps:
            per_step.observe(step.guard_seconds)
        if seconds is not None:
            self.generation.labels(d.deployment, outcome).observe(seconds)

    def set_drift_window(self, deployment: str, requests: int) -> None:
        self.drift_window.labels(deployment).set(requests)

    def set_drift(self, deployment: str, scores: dict[str, float], pvalue: float) -> None:
        for method, score in scores.items():
            self.drift_score.labels(deployment, method).set(score)
        self.drift_pvalue.labels(deployment).set(pvalue)
        self.drift_evaluations.labels(deployment).inc()

    def set_canary_tolerance(self, deployment: str, tolerance: float) -> None:
        self.canary_tolerance.labels(deployment).set(tolerance)

    def set_canary(self, deployment: str, divergence: float) -> None:
        self.canary_divergence.labels(deployment).set(divergence)

    def canary_outcome(self, deployment: str, outcome: str) -> None:
        self.canary_runs.labels(deployment, outcome).inc()

    def set_capacity(self, deployment: str, capacity: int) -> None:
        self.capacity.labels(deployment).set(capacity)

    def observe_batch(self, deployment: str, size: int) -> None:
        self.batch_size.labels(deployment).observe(size)

    def set_admitted(self, deployment: str, admitted: int) -> None:
        self.admitted.labels(deployment).set(admitted)

    def observe_shadow(self, baseline: str, candidate: str, divergence: float) -> None:
        self.shadow_divergence.labels(baseline, candidate).observe(divergence)

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def set_calibration_runs(self, deployment: str, collected: int, needed: int) -> None:
        self.calibration_runs.labels(deployment).set(collected)
        self.calibration_runs_needed.labels(deployment).set(needed)

    def evidence_write(self, deployment: str, outcome: str) -> None:
        self.evidence_writes.labels(deployment, outcome).inc()

    def shadow_outcome(self, baseline: str, candidate: str, outcome: str) -> None:
        self.shadow_runs.labels(baseline, candidate, outcome).inc()

    def count(self, deployment: str, outcome: Outcome, seconds: float | None = None) -> None:
        """A request that ended without a verdict: rejected, error or cancelled."""
        d = self.labels.get(deployment)
        if d is None:  # unknown deployments are not a label value
            return
        self.requests.labels(d.deployment, d.family, d.variant, outcome).inc()
        if seconds is not None and outcome in GENERATION_OUTCOMES:
            self.generation.labels(d.deployment, outcome).observe(seconds)
