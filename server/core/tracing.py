"""OpenTelemetry tracing (optional): one span per request, an event per detector's first flagged step.

With `tracing: {otlp_endpoint: ...}` in the config, spans go to that OTLP/HTTP collector through a
batching processor (the `tracing` extra installs the SDK and exporter). The span's trace id goes into
the report, the evidence bundle and the metrics' exemplars, so that a trace, a bundle and a point on
a Grafana panel name the same request. Without the section nothing is imported and nothing is traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from latentguard.detectors import StepVerdict
from latentguard.server.config import TracingConfig
from latentguard.server.report import Report

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Span


class Tracing:
    """Spans for requests; a no-op without a config or a processor."""

    def __init__(self, cfg: TracingConfig | None, processor: SpanProcessor | None = None):
        self.provider: Any = None
        if cfg is None and processor is None:
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise ValueError("tracing needs OpenTelemetry: pip install 'latentguard[tracing]'") from exc
        ratio = cfg.sample_ratio if cfg is not None else 1.0
        name = cfg.service_name if cfg is not None else "latentguard"
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": name}), sampler=ParentBased(TraceIdRatioBased(ratio))
        )
        if processor is None:
            assert cfg is not None
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise ValueError("tracing.otlp_endpoint needs pip install 'latentguard[tracing]'") from exc
            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.otlp_endpoint))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("latentguard")

    def start(self, name: str, deployment: str) -> Span | None:
        if self.provider is None:
            return None
        return self.tracer.start_span(name, attributes={"latentguard.deployment": deployment})

    @staticmethod
    def trace_id(span: Span | None) -> str:
        """32 hex digits; "" when not traced (or not sampled)."""
        if span is None or not span.get_span_context().trace_flags.sampled:
            return ""
        return format(span.get_span_context().trace_id, "032x")

    @staticmethod
    def step_hook(
        span: Span | None, inner: Callable[[StepVerdict], None] | None
    ) -> Callable[[StepVerdict], None] | None:
        """`inner`, plus an event on the span at each step where a detector flags for the first time
        (called on the worker thread, as the step is scored)."""
        if span is None:
            return inner
        seen: set[str] = set()

        def hook(verdict: StepVerdict) -> None:
            new = [name for name in verdict.flagged if name not in seen]
            if new:
                seen.update(new)
                scores = {f"score.{n}": verdict.scores[n] for n in new if n in verdict.scores}
                span.add_event(
                    "latentguard.flagged",
                    {"step": verdict.step, "detectors": new, "verdict": verdict.verdict, **scores},
                )
            if inner is not None:
                inner(verdict)

        return hook

    @staticmethod
    def finish(span: Span | None, report: Report | None, outcome: str) -> None:
        """End a request's span with its outcome (and verdict, when it ran to one)."""
        if span is None:
            return
        span.set_attribute("latentguard.outcome", outcome)
        if report is not None:
            span.set_attribute("latentguard.request_id", report.request_id)
            span.set_attribute("latentguard.verdict", report.verdict)
            span.set_attribute("latentguard.steps_run", report.steps_run)
            span.set_attribute("latentguard.flagged", report.flagged_detectors)
        span.end()

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
