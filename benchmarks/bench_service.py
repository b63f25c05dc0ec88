"""Service benchmarks; every figure is a ratio or latency measured in this one run.

    python benchmarks/bench_service.py [--quick]

1. guarded vs bare pipeline, same seeds: a widened tiny-sd3 (more layers, wider heads) at 512 x 512,
   24 steps, so that a denoising step costs tens of milliseconds as a real one does relative to
   the guard; `guard overhead` = guarded / bare - 1 (median of alternating runs).
2. gRPC Generate over loopback vs the in-process call on the default tiny-sd3.
3. the cost per step of each detector (the ONNX classifier included) and of trajectory_stats on a
   tiny-sd3 step (16 x 32 x 32).
4. Inspect (sidecar) throughput in steps/s and p50/p99 added latency per step, for
   16 x 128 x 128 bf16 latents over loopback.
Results are printed and appended to benchmarks/results.csv with device, commit and date.
"""

from __future__ import annotations

import argparse
import logging
import queue
import statistics
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from run_record import append_row  # noqa: E402

from latentguard.detectors import DetectorPolicy  # noqa: E402
from latentguard.server.config import Limits, Settings  # noqa: E402
from latentguard.server.harness.background import BackgroundServer  # noqa: E402
from latentguard.server.pipelines.deployments import (  # noqa: E402
    FAMILIES,
    Deployment,
    attach_profile,
    fingerprint,
    load_pipeline,
)
from latentguard.server.pipelines.requests import GenerateRequest, resolve  # noqa: E402
from latentguard.server.pipelines.runner import PipelineRunner, initial_noise  # noqa: E402

HERE = Path(__file__).parent


def loopback_settings(**overrides) -> Settings:
    return Settings(host="127.0.0.1", port=0, metrics_port=0, **overrides)


def widened_sd3(layers: int, head_dim: int):
    """The built-in tiny-sd3 with a wider, deeper transformer of the same design (seeded weights: the
    cost is measured here, not the pictures)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    base = load_pipeline(Settings().deployment("tiny-sd3"))
    config = {**base.transformer.config, "num_layers": layers, "attention_head_dim": head_dim}
    config["caption_projection_dim"] = config["num_attention_heads"] * head_dim
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel.from_config(config).eval()
    pipe = StableDiffusion3Pipeline(**{**base.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_guard_overhead(steps: int, repeats: int, layers: int, head_dim: int) -> dict[str, float]:
    pipe = widened_sd3(layers, head_dim)
    cfg = Settings().deployment("tiny-sd3")
    dep = Deployment(config=cfg, pipe=pipe, family=FAMILIES["sd3"], fingerprint=fingerprint(pipe))
    logging.getLogger("latentguard").setLevel(logging.ERROR)  # the widened model is not the profiled one
    attach_profile(dep)  # the built-in profile's envelopes: the cost, not the verdicts, is measured here
    runner = PipelineRunner(dep)
    size, guidance = 512, 4.5

    def bare(seed: int) -> float:
        noise = initial_noise(dep, [seed], size, size)
        t = time.perf_counter()
        pipe(
            prompt=["a red circle on a blue background"],
            num_inference_steps=steps,
            height=size,
            width=size,
            guidance_scale=guidance,
            latents=noise,
            output_type="latent",
            max_sequence_length=cfg.max_sequence_length,
        )
        return time.perf_counter() - t

    def guarded(seed: int) -> float:
        t = time.perf_counter()
        runner.denoise(
            ["a red circle on a blue background"],
            [seed],
            steps,
            size,
            size,
            guidance,
            detectors=dep.detectors,
            policies={n: DetectorPolicy() for n in dep.detectors},
        )
        return time.perf_counter() - t

    bare(0), guarded(0)  # warm-up
    b, g = [], []
    for i in range(repeats):
        b.append(bare(i))
        g.append(guarded(i))
    guard_step = []
    for i in range(3):
        guard = runner.denoise(
            ["a red circle on a blue background"],
            [i],
            steps,
            size,
            size,
            guidance,
            detectors=dep.detectors,
            policies={},
        ).guard
        guard_step += guard.step_seconds
    return {
        "bare_step_ms": statistics.median(b) / steps * 1e3,
        "guarded_step_ms": statistics.median(g) / steps * 1e3,
        "guard_ms_per_step": statistics.median(guard_step) * 1e3,
        "guard_overhead_pct": (statistics.median(g) / statistics.median(b) - 1) * 100,
    }


def bench_detector_costs(repeats: int = 200) -> dict[str, float]:
    """Per detector: the median cost of scoring one step of a real tiny-sd3 request (16 x 32 x 32),
    the learned classifier (onnxruntime) included; and trajectory_stats itself."""
    from latentguard.kernels import trajectory_stats
    from latentguard.server.pipelines.deployments import load_deployment

    dep = load_deployment(Settings().deployment("tiny-sd3"))
    run = PipelineRunner(dep).denoise(
        ["a red circle on a blue background"], [0], 12, 256, 256, 4.5, detectors=dep.detectors, policies={}
    )
    x0 = run.latents  # the final latents: image-like, as a late step's x0_hat
    stats = trajectory_stats(x0)
    sigma = run.guard.sigmas[5]
    out = {}

    def median_us(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6

    out["stats_us_16x32x32"] = median_us(lambda: trajectory_stats(x0))
    for name, det in dep.detectors.items():
        out[f"{name}_us"] = median_us(lambda d=det: d.step_score(stats, sigma))
    return out


def bench_grpc_vs_inprocess(repeats: int) -> dict[str, float]:
    from latentguard.server.rpc.client import channel
    from latentguard.v1 import guardrail_pb2 as pb
    from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

    srv = BackgroundServer(loopback_settings()).start()
    try:
        stub = pb_grpc.GuardrailStub(channel(srv.target))
        dep = srv.server.service.workers["tiny-sd3"].dep
        local = PipelineRunner(dep)
        req = resolve(GenerateRequest("tiny-sd3", "a red circle on a blue background", seed=1), dep, Limits())
        msg = pb.GenerateRequest(deployment="tiny-sd3", prompt="a red circle on a blue background", seed=1)
        inproc, remote = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            local.generate(req)
            inproc.append(time.perf_counter() - t)
            t = time.perf_counter()
            stub.Generate(msg, timeout=60)
            remote.append(time.perf_counter() - t)
        return {
            "inprocess_ms": statistics.median(inproc) * 1e3,
            "grpc_ms": statistics.median(remote) * 1e3,
            "grpc_over_inprocess": statistics.median(remote) / statistics.median(inproc),
        }
    finally:
        srv.stop()


def bench_inspect(sessions: int, steps: int) -> dict[str, float]:
    from latentguard.server.rpc.client import channel, tensor_frame
    from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

    srv = BackgroundServer(loopback_settings(warmup=False)).start()
    try:
        stub = pb_grpc.GuardrailStub(channel(srv.target))
        sigmas = torch.linspace(1, 0, steps + 1).tolist()
        g = torch.Generator().manual_seed(0)
        frames = [torch.randn(1, 16, 128, 128, generator=g).to(torch.bfloat16) for _ in range(steps + 1)]
        latencies, total_steps = [], 0
        t0 = time.perf_counter()
        for _ in range(sessions):
            q: queue.Queue = queue.Queue()
            q.put(tensor_frame(frames[0], -1, deployment="tiny-sd3", sigmas=sigmas))
            responses = stub.Inspect(iter(q.get, None), timeout=120)
            for step in range(steps):
                t = time.perf_counter()
                q.put(tensor_frame(frames[step + 1], step))
                next(responses)
                latencies.append(time.perf_counter() - t)
                total_steps += 1
            q.put(None)
            list(responses)
        elapsed = time.perf_counter() - t0
        latencies.sort()
        return {
            "inspect_steps_per_s": total_steps / elapsed,
            "inspect_p50_ms": latencies[len(latencies) // 2] * 1e3,
            "inspect_p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        }
    finally:
        srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--layers", type=int, default=2, help="widened tiny-sd3: transformer layers")
    parser.add_argument("--head-dim", type=int, default=32, help="widened tiny-sd3: head dim (4 heads)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results: dict[str, float] = {}
    repeats = 2 if args.quick else 5
    results.update(
        bench_guard_overhead(steps=24, repeats=repeats, layers=args.layers, head_dim=args.head_dim)
    )
    results.update(bench_detector_costs(repeats=50 if args.quick else 500))
    results.update(bench_grpc_vs_inprocess(repeats=3 if args.quick else 10))
    results.update(bench_inspect(sessions=2 if args.quick else 5, steps=20))
    for k, v in results.items():
        print(f"{k:24s} {v:10.3f}")
    append_row(HERE / "results.csv", results)


if __name__ == "__main__":
    main()
