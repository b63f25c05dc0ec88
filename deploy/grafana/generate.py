"""Grafana dashboards as code: `python deploy/grafana/generate.py` writes dashboards/*.json.

Four dashboards (overview, drift, A/B, cost) with template variables for datasource, deployment and
variant. Queries use the recording rules in deploy/prometheus/rules where one exists, so a dashboard
shows exactly what the alerts see. A test regenerates them and fails when the JSON is stale, and the
live Prometheus test runs every query here against a real sidecar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).parent / "dashboards"
SEL = 'deployment=~"$deployment", variant=~"$variant"'
ONE = 'deployment=~"$deployment"'  # for metrics without a variant label
DS = {"type": "prometheus", "uid": "${datasource}"}


def rate(metric: str, selector: str) -> str:
    return f"rate({metric}{{{selector}}}[$__rate_interval])"


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 12
    extra: dict = field(default_factory=dict)
    # Grafana asks Prometheus for exemplars too (points carrying a request id: `latentguard evidence
    # show ID`); only raw counters carry them, not recording rules
    exemplars: bool = False


def variable(name: str, query: str, multi: bool = True) -> dict:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "sort": 1,
    }


DATASOURCE = {
    "name": "datasource",
    "label": "Prometheus",
    "type": "datasource",
    "query": "prometheus",
    "current": {},
}
DEPLOYMENT = variable("deployment", "label_values(latentguard_deployment_info, deployment)")
VARIANT = variable("variant", 'label_values(latentguard_deployment_info{deployment=~"$deployment"}, variant)')
CANDIDATE = variable(
    "candidate", 'label_values(latentguard_deployment_info{baseline!=""}, deployment)', multi=False
)
BASELINE = variable(
    "baseline", 'label_values(latentguard_deployment_info{deployment="$candidate"}, baseline)', multi=False
)


def dashboard(uid: str, title: str, description: str, variables: list[dict], panels: list[Panel]) -> dict:
    out, x, y = [], 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p.width > 24:
            x, y = 0, y + 8
        out.append(
            {
                "id": i,
                "type": p.kind,
                "title": p.title,
                "description": p.description,
                "datasource": DS,
                "gridPos": {"x": x, "y": y, "w": p.width, "h": 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]}
                },
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "datasource": DS,
                        "expr": expr,
                        "legendFormat": legend,
                        "exemplar": p.exemplars,
                    }
                    for j, (expr, legend) in enumerate(p.targets)
                ],
                **p.extra,
            }
        )
        x += p.width
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["latentguard"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [DATASOURCE, *variables]},
        "annotations": {"list": []},
        "panels": out,
    }


def overview() -> dict:
    return dashboard(
        "latentguard-overview",
        "latentguard / Overview",
        "Requests, outcomes and artifact rates per deployment and detector.",
        [DEPLOYMENT, VARIANT],
        [
            Panel(
                "Requests by outcome",
                [
                    (
                        f"sum by (deployment, outcome) ({rate('latentguard_requests_total', SEL)})",
                        "{{deployment}} {{outcome}}",
                    )
                ],
                unit="reqps",
                exemplars=True,
            ),
            Panel(
                "Artifact rate (any detector, 5m)",
                [
                    (
                        f"deployment_variant:latentguard_artifacts:ratio_rate5m{{{SEL}}}",
                        "{{deployment}} {{variant}}",
                    )
                ],
                unit="percentunit",
                description="Flagged or aborted / completed requests. Alert: > 5% for 10m.",
            ),
            Panel(
                "Artifact rate by detector (5m)",
                [
                    (
                        f"deployment_variant_detector:latentguard_artifacts:ratio_rate5m{{{SEL}}}",
                        "{{deployment}} {{detector}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Flagged requests by detector (points: request ids)",
                [
                    (
                        f"sum by (deployment, detector) ({rate('latentguard_artifacts_total', SEL)})",
                        "{{deployment}} {{detector}}",
                    )
                ],
                unit="reqps",
                description="Each point is a flagged request's id (an exemplar): "
                "`latentguard evidence show ID --store URL` shows what it looked like (runbook: From the "
                "alert to the request).",
                exemplars=True,
            ),
            Panel(
                "Aborts, errors, rejections (5m)",
                [
                    (
                        f"deployment_variant:latentguard_aborts:ratio_rate5m{{{SEL}}}",
                        "{{deployment}} aborted",
                    ),
                    (f"deployment_variant:latentguard_errors:ratio_rate5m{{{SEL}}}", "{{deployment}} error"),
                    (
                        f"deployment_variant:latentguard_rejections:ratio_rate5m{{{SEL}}}",
                        "{{deployment}} rejected",
                    ),
                ],
                unit="percentunit",
            ),
            Panel(
                "Non-finite latents (requests, 5m)",
                [
                    (
                        "sum by (deployment) (increase(latentguard_artifacts_total"
                        f'{{{SEL}, detector="non_finite"}}[5m]))',
                        "{{deployment}}",
                    )
                ],
            ),
            Panel(
                "Detector errors",
                [
                    (
                        'deployment_detector:latentguard_detector_errors:rate5m{deployment=~"$deployment"}',
                        "{{deployment}} {{detector}}",
                    )
                ],
                unit="reqps",
            ),
        ],
    )


def drift() -> dict:
    return dashboard(
        "latentguard-drift",
        "latentguard / Drift",
        "Per-detector flag rate over the last hour against its 7-day average; score distributions.",
        [DEPLOYMENT, VARIANT],
        [
            Panel(
                "Flag rate, last hour",
                [
                    (
                        f"deployment_variant_detector:latentguard_artifacts:ratio_rate1h{{{SEL}}}",
                        "{{deployment}} {{detector}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Flag rate, 7-day average",
                [
                    (
                        f"deployment_variant_detector:latentguard_artifacts:ratio_avg7d{{{SEL}}}",
                        "{{deployment}} {{detector}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Drift: last hour / (2 x 7-day average + 1 point)  (alert above 1 for 30m)",
                [
                    (
                        f"deployment_variant_detector:latentguard_artifacts:ratio_rate1h{{{SEL}}}"
                        " / (2 * deployment_variant_detector:latentguard_artifacts:ratio_avg7d"
                        f"{{{SEL}}} + 0.01)",
                        "{{deployment}} {{detector}}",
                    )
                ],
                width=24,
            ),
            Panel(
                "Fleet drift: score per method / threshold  (alert above 1 for 10m)",
                [
                    (
                        f"max by (deployment, method) (latentguard_drift_score{{{ONE}}})",
                        "{{deployment}} {{method}}",
                    )
                ],
                description="The last window of requests against the drift reference (server/core/drift.py).",
            ),
            Panel(
                "Fleet drift: MMD permutation p-value",
                [(f"min by (deployment) (latentguard_drift_pvalue{{{ONE}}})", "{{deployment}}")],
                description="Below 0.001 on consecutive windows: the requests are not from the reference "
                "population.",
                extra={"fieldConfig": {"defaults": {"unit": "short", "min": 0, "max": 1}, "overrides": []}},
            ),
            Panel(
                "Canaries: divergence from the recorded reference  (alert above the tolerance)",
                [
                    (f"max by (deployment) (latentguard_canary_divergence{{{ONE}}})", "{{deployment}}"),
                    (
                        f"max by (deployment) (latentguard_canary_tolerance{{{ONE}}})",
                        "{{deployment}} tolerance",
                    ),
                ],
                description="Control-prompt canaries, run when the server is idle (server/core/canaries.py).",
            ),
            Panel(
                "Canary rounds by outcome",
                [
                    (
                        "sum by (deployment, outcome) "
                        f"(increase(latentguard_canary_runs_total{{{ONE}}}[1h]))",
                        "{{deployment}} {{outcome}}",
                    )
                ],
            ),
            Panel(
                "Attention probes: flag rate, last hour vs 7-day average",
                [
                    (
                        f"deployment_variant_detector:latentguard_artifacts:ratio_{window}"
                        f'{{{SEL}, detector=~"attention_.*"}}',
                        f"{{{{deployment}}}} {{{{detector}}}} {label}",
                    )
                    for window, label in (("rate1h", "1h"), ("avg7d", "7d"))
                ],
                unit="percentunit",
                description="attention_entropy / attention_rank (server/pipelines/attention_probes.py): "
                "the denoiser's image-to-text attention or token rank left its envelope.",
            ),
            Panel(
                "Fleet drift: requests in the window / windows scored per minute",
                [
                    (
                        f"min by (deployment) (latentguard_drift_window_requests{{{ONE}}})",
                        "{{deployment}} window",
                    ),
                    (
                        f"sum by (deployment) ({rate('latentguard_drift_evaluations_total', ONE)}) * 60",
                        "{{deployment}} scored/min",
                    ),
                ],
                width=24,
            ),
            Panel(
                "Detector score p50 / p95 (step-normalised; threshold ~ calibrated line)",
                [
                    (
                        f"histogram_quantile({q}, sum by (detector, le) "
                        f"({rate('latentguard_detector_score_bucket', ONE)}))",
                        f"{{{{detector}}}} p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                width=24,
            ),
        ],
    )


def ab() -> dict:
    pair = 'deployment=~"$candidate|$baseline"'
    return dashboard(
        "latentguard-ab",
        "latentguard / A/B candidate vs baseline",
        "A quantized candidate next to the 16-bit deployment it may replace (latentguard_deployment_info).",
        [CANDIDATE, BASELINE],
        [
            Panel(
                "Artifact rate (1h): candidate vs baseline",
                [
                    (
                        f"deployment_variant:latentguard_artifacts:ratio_rate1h{{{pair}}}",
                        "{{deployment}} {{variant}}",
                    )
                ],
                unit="percentunit",
                description="Alert CandidateWorseThanBaseline: candidate > 1.5 x baseline + 1 point for 30m.",
            ),
            Panel(
                "Artifact rate by detector (1h)",
                [
                    (
                        f"deployment_variant_detector:latentguard_artifacts:ratio_rate1h{{{pair}}}",
                        "{{deployment}} {{detector}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Detector score p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (deployment, detector, le) "
                        f"({rate('latentguard_detector_score_bucket', pair)}))",
                        "{{deployment}} {{detector}}",
                    )
                ],
            ),
            Panel(
                "Generation p95",
                [(f"deployment:latentguard_generation_seconds:p95_5m{{{pair}}}", "{{deployment}}")],
                unit="s",
            ),
            Panel(
                "Shadow divergence p95 (1h): final latents, relative L2 on mirrored requests",
                [
                    (
                        'baseline_candidate:latentguard_shadow_divergence:p95_1h{candidate="$candidate"}',
                        "{{candidate}} vs {{baseline}}",
                    )
                ],
                description="Shadow mode only (config `shadow:`). int4 vs fp32 on tiny-sd3 is ~0.04.",
            ),
            Panel(
                "Shadow runs by outcome",
                [
                    (
                        'baseline_candidate_outcome:latentguard_shadow_runs:rate5m{candidate="$candidate"}',
                        "{{outcome}}",
                    )
                ],
                unit="reqps",
                description="preempted: yielded to primary traffic; skipped: max_pending reached.",
            ),
        ],
    )


def cost() -> dict:
    return dashboard(
        "latentguard-cost",
        "latentguard / Cost",
        "What the guard costs per step, generation latency, batching, and admission load "
        "(the autoscaling signal).",
        [DEPLOYMENT, VARIANT],
        [
            Panel(
                "Guard cost per step p99 (5m)",
                [(f"deployment:latentguard_step_check_seconds:p99_5m{{{ONE}}}", "{{deployment}}")],
                unit="s",
            ),
            Panel(
                "Guard share of generation time",
                [
                    (
                        f"sum by (deployment) ({rate('latentguard_step_check_seconds_sum', ONE)}) / "
                        f"sum by (deployment) ({rate('latentguard_generation_seconds_sum', ONE)})",
                        "{{deployment}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Generation seconds p50 / p95 by outcome",
                [
                    (
                        f"histogram_quantile({q}, sum by (deployment, outcome, le) "
                        f"({rate('latentguard_generation_seconds_bucket', ONE)}))",
                        f"{{{{deployment}}}} {{{{outcome}}}} p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            Panel(
                "Requests per pipeline call (dynamic batching, mean over 5m)",
                [
                    (
                        f"sum by (deployment) ({rate('latentguard_batch_size_sum', ONE)}) / "
                        f"sum by (deployment) ({rate('latentguard_batch_size_count', ONE)})",
                        "{{deployment}}",
                    )
                ],
                description="1 when every request ran alone; up to max_batch_size under concurrent load.",
            ),
            Panel(
                "Admitted requests vs capacity (all replicas)",
                [
                    (f"deployment:latentguard_admitted_requests:sum{{{ONE}}}", "{{deployment}} admitted"),
                    (
                        f"sum by (deployment) (latentguard_admission_capacity{{{ONE}}})",
                        "{{deployment}} capacity",
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = {"overview": overview, "drift": drift, "ab": ab, "cost": cost}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
