"""Shadow mode's cost to primary traffic; every figure is measured in this one run.

    python benchmarks/bench_shadow.py [--quick]

Two loopback servers with the built-in deployments: one without shadow mode, one mirroring every
tiny-sd3 request to tiny-sd3-int4 (fraction 1.0). The same primary Generate requests go to each, in
alternating blocks (plain, shadow, plain, ...; a block starts once the other server's shadow runs are
over, so only a server's own shadow work can slow its primaries), in two patterns:
    back-to-back   the next request leaves as soon as the last answer arrives: shadows get preempted
    paced          0.5 s between requests: shadow runs complete in the gaps
Reported: median primary latency with and without shadow, the overhead in %, and the shadow outcomes.
Appended to benchmarks/shadow.csv with device, commit and date.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

from run_record import append_row  # noqa: E402

from latentguard.server.config import Settings, ShadowConfig  # noqa: E402
from latentguard.server.harness.background import BackgroundServer  # noqa: E402
from latentguard.server.rpc.client import channel  # noqa: E402
from latentguard.v1 import guardrail_pb2 as pb  # noqa: E402
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc  # noqa: E402

HERE = Path(__file__).parent
PAIR = ShadowConfig(baseline="tiny-sd3", candidate="tiny-sd3-int4", fraction=1.0)


def outcomes(srv: BackgroundServer) -> dict[str, float]:
    srv.call(srv.server.service.shadow.wait())
    counter = srv.server.metrics.shadow_runs
    return {
        o: counter.labels(PAIR.baseline, PAIR.candidate, o)._value.get() for o in ("compared", "preempted")
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    args = parser.parse_args()
    logging.getLogger("latentguard").setLevel(logging.ERROR)
    n = 6 if args.quick else 30
    plain = BackgroundServer(Settings(host="127.0.0.1", port=0, metrics_port=0)).start()
    shadow = BackgroundServer(Settings(host="127.0.0.1", port=0, metrics_port=0, shadow=[PAIR])).start()
    results: dict[str, float] = {}
    try:
        stubs = {
            "plain": pb_grpc.GuardrailStub(channel(plain.target)),
            "shadow": pb_grpc.GuardrailStub(channel(shadow.target)),
        }
        for pattern, gap in (("back_to_back", 0.0), ("paced", 0.5)):
            latency: dict[str, list[float]] = {"plain": [], "shadow": []}
            before = outcomes(shadow)
            for block in range(3):  # alternating blocks, so drift on the machine hits both alike
                for name, stub in stubs.items():
                    shadow.call(shadow.server.service.shadow.wait())
                    for i in range(block * n // 3, (block + 1) * n // 3):
                        msg = pb.GenerateRequest(
                            deployment="tiny-sd3", prompt="a red fox", seed=i, skip_image=True
                        )
                        t = time.perf_counter()
                        stub.Generate(msg, timeout=60)
                        latency[name].append(time.perf_counter() - t)
                        time.sleep(gap)
            after = outcomes(shadow)
            p, s = statistics.median(latency["plain"]), statistics.median(latency["shadow"])
            results |= {
                f"{pattern}_plain_ms": p * 1e3,
                f"{pattern}_shadow_ms": s * 1e3,
                f"{pattern}_overhead_pct": (s / p - 1) * 100,
                f"{pattern}_compared": after["compared"] - before["compared"],
                f"{pattern}_preempted": after["preempted"] - before["preempted"],
            }
    finally:
        plain.stop()
        shadow.stop()
    for key, value in results.items():
        print(f"{key:28s} {value:10.3f}")
    append_row(HERE / "shadow.csv", results)


if __name__ == "__main__":
    main()
