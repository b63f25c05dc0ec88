"""The quick-start demo: a real `latentguard serve` on loopback, a batch of requests over gRPC
(benign and every drill kind), the verdicts, and the artifact rates read back from /metrics.

    python -m latentguard.server.harness.demo [--requests 8]
"""

from __future__ import annotations

import argparse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from latentguard.server.harness.process import ServeProcess
from latentguard.server.rpc.client import channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

console = Console(width=150)
DRILLS = [
    "",
    "aliasing:step=4,strength=0.5",
    "collapse:step=4,strength=0.5",
    "blur:step=4,strength=0.8",
    "nan:step=3",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3, help="benign requests per deployment")
    args = parser.parse_args()
    server = ServeProcess(grace_seconds=30)
    target, mport = server.target, server.metrics_port
    console.print(f"[bold]starting[/bold] latentguard serve on {target} (metrics :{mport})")
    try:
        server.wait_serving()
        stub = pb_grpc.GuardrailStub(channel(target))
        table = Table(
            "deployment", "seed", "drill", "verdict", "flagged (first step)", "steps", "guard ms/step"
        )
        served = [d.name for d in stub.ListDeployments(pb.ListDeploymentsRequest(), timeout=10).deployments]
        for dep in served:  # tiny-sd3, tiny-flux, and the FP8 / int4 candidates of tiny-sd3
            plan = [("", seed) for seed in range(args.requests)] + [(d, 100) for d in DRILLS[1:]]
            for drill, seed in plan:
                req = pb.GenerateRequest(
                    deployment=dep, prompt="a red fox in the snow", seed=seed, drill=drill
                )
                rep = stub.Generate(req, timeout=120).report
                flagged = ", ".join(f"{d.name} ({d.first_step})" for d in rep.detectors if d.flagged)
                colour = {"pass": "green", "flag": "yellow", "abort": "red"}[rep.verdict]
                table.add_row(
                    dep,
                    str(seed),
                    drill or "-",
                    f"[{colour}]{rep.verdict}[/{colour}]",
                    flagged or "-",
                    f"{rep.steps_run}/{rep.steps_requested}",
                    f"{rep.timings.guard_seconds_per_step * 1e3:.2f}",
                )
        console.print(table)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            text = r.read().decode()
        counts: dict[str, dict[str, float]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "latentguard_requests_total":
                    counts.setdefault(s.labels["deployment"], {}).setdefault("requests", 0.0)
                    counts[s.labels["deployment"]]["requests"] += s.value
                if s.name == "latentguard_artifacts_total":
                    counts.setdefault(s.labels["deployment"], {})[s.labels["detector"]] = s.value
        rates = Table(
            "deployment",
            "requests",
            "spectral_residual",
            "latent_variance",
            "over_smoothing",
            "non_finite",
            title="artifact rates read back from /metrics (latentguard_artifacts_total / requests_total)",
        )
        for dep, c in counts.items():
            n = c["requests"] or 1.0
            rates.add_row(
                dep,
                f"{c['requests']:.0f}",
                *(
                    f"{c.get(d, 0) / n:.2f}"
                    for d in ("spectral_residual", "latent_variance", "over_smoothing", "non_finite")
                ),
            )
        console.print(rates)
    finally:
        code = server.terminate()
        console.print(f"server drained and exited with code {code}")


if __name__ == "__main__":
    main()
