"""The quick-start demo: a real `latentguard serve` on loopback, a batch of requests over gRPC
(benign and every drill kind) to every served deployment, the verdicts, the images written to disk,
each deployment's canaries replayed, and the artifact rates read back from /metrics.

    python -m latentguard.server.harness.demo [--requests 3] [--out out/demo]
"""

from __future__ import annotations

import argparse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from latentguard.detectors import DETECTOR_NAMES
from latentguard.server.harness.process import ServeProcess
from latentguard.server.pipelines.requests import GenerateRequest
from latentguard.server.rpc.client import channel
from latentguard.server.rpc.convert import request_to_proto
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

console = Console(width=160)
PROMPTS = [
    "a red circle on a blue background",
    "two yellow squares on a white background",
    "a green triangle at the top left on a black background",
    "three small pink stars on blue and white stripes",
]
DRILLS = [
    "aliasing:step=4,strength=0.5",
    "checkerboard:step=4,strength=0.2",
    "grain:step=4,strength=0.4",
    "collapse:step=4,strength=0.5",  # caught on tiny-sd3 (round 7), often missed on tiny-flux (README)
    "blur:step=4,strength=0.8",
    "nan:step=3",
]


def run_requests(stub: pb_grpc.GuardrailStub, benign: int, out: Path) -> Table:
    """Benign requests and one per drill to every served deployment; images go to `out`."""
    table = Table(
        "deployment", "prompt", "seed", "drill", "verdict", "flagged (first step)", "steps", "image"
    )
    served = [d.name for d in stub.ListDeployments(pb.ListDeploymentsRequest(), timeout=10).deployments]
    for dep in served:
        plan = [(PROMPTS[s % len(PROMPTS)], s, "") for s in range(benign)]
        plan += [(PROMPTS[0], 100, drill) for drill in DRILLS]
        for prompt, seed, drill in plan:
            resp = stub.Generate(
                request_to_proto(GenerateRequest(dep, prompt, seed, drill=drill)), timeout=120
            )
            rep = resp.report
            image = "-"
            if resp.image_png:
                path = out / f"{dep}-{seed}-{drill.split(':')[0] or 'benign'}.png"
                path.write_bytes(resp.image_png)
                image = str(path)
            colour = {"pass": "green", "flag": "yellow", "abort": "red"}[rep.verdict]
            table.add_row(
                dep,
                prompt,
                str(seed),
                drill or "-",
                f"[{colour}]{rep.verdict}[/{colour}]",
                ", ".join(f"{d.name} ({d.first_step})" for d in rep.detectors if d.flagged) or "-",
                f"{rep.steps_run}/{rep.steps_requested}",
                image,
            )
    return table


def canaries(stub: pb_grpc.GuardrailStub) -> Table:
    """Each deployment's control-prompt canaries replayed now (RunCanaries): the model unchanged?"""
    table = Table(
        "deployment", "canaries", "divergence", "tolerance", "model", title="canaries (RunCanaries)"
    )
    for dep in stub.ListDeployments(pb.ListDeploymentsRequest(), timeout=10).deployments:
        if dep.canaries:
            r = stub.RunCanaries(pb.RunCanariesRequest(deployment=dep.name), timeout=120)
            verdict = "[red]changed[/red]" if r.changed else "[green]as recorded[/green]"
            table.add_row(dep.name, str(len(r.canaries)), f"{r.divergence:.3g}", f"{r.tolerance:g}", verdict)
    return table


def artifact_rates(metrics_port: int) -> Table:
    """latentguard_artifacts_total / latentguard_requests_total per deployment, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    requests: dict[str, float] = {}
    flagged: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "latentguard_requests_total":
                requests[s.labels["deployment"]] = requests.get(s.labels["deployment"], 0.0) + s.value
            if s.name == "latentguard_artifacts_total":
                flagged[(s.labels["deployment"], s.labels["detector"])] = s.value
    table = Table(
        "deployment",
        "requests",
        *DETECTOR_NAMES,
        title="artifact rates read back from /metrics (latentguard_artifacts_total / requests_total)",
    )
    for dep, n in requests.items():
        rates = (f"{flagged.get((dep, d), 0.0) / max(n, 1.0):.2f}" for d in DETECTOR_NAMES)
        table.add_row(dep, f"{n:.0f}", *rates)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3, help="benign requests per deployment")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where the images go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = ServeProcess(grace_seconds=30)
    console.print(
        f"[bold]starting[/bold] latentguard serve on {server.target} (metrics :{server.metrics_port})"
    )
    try:
        server.wait_serving()
        stub = pb_grpc.GuardrailStub(channel(server.target))
        console.print(run_requests(stub, args.requests, args.out))
        console.print(canaries(stub))
        console.print(artifact_rates(server.metrics_port))
    finally:
        code = server.terminate()
        console.print(f"server drained and exited with code {code}")


if __name__ == "__main__":
    main()
