"""Service benchmarks; every figure is a ratio or latency measured in this one run.

    python benchmarks/bench_service.py [--quick] [--only inspect,grpc,...]

1. guarded vs bare pipeline, same seeds: a widened tiny-sd3 (more layers, wider heads) at 512 x 512,
   24 steps, so that a denoising step costs tens of milliseconds as a real one does relative to
   the guard; `guard overhead` = guarded / bare - 1, the median over sets of back-to-back runs
   (order rotating), with a 95% bootstrap interval; sets are added until the interval is
   narrower than 1 point (or --max-pairs). Wall time and process CPU time (all threads). Guarded
   runs twice: without the attention probes (`guard_overhead_pct`) and with them on every joint
   block of the widened model (`probed_overhead_pct`; `probe_overhead_pct` = probed / guarded - 1).
2. gRPC Generate over loopback vs the in-process call on the default tiny-sd3, and the same request
   in-process before and after torch has also computed on a second thread (what a server does).
2b. dynamic batching: 8 requests over gRPC with 1, 2, 4, 8 in flight, per built-in fp32 deployment
   (a `latentguard serve` process per configuration),
   with batching (the default: max_batch_size 8, max_batch_delay_ms 5) and without
   (max_batch_size 1): requests/s (= images/s: one image per request), the speedup of 8 at once
   over 8 one after another, and a lone request's latency with and without batching.
3. the cost per step of each detector (the ONNX classifier included) and of trajectory_stats on a
   tiny-sd3 step (16 x 32 x 32).
4. Inspect (sidecar) throughput in steps/s and p50/p99 added latency per step, for
   16 x 128 x 128 bf16 latents over loopback to a `latentguard serve` process, and that process's
   lone Generate latency before and after the Inspect sessions (`generate_after_ratio`); with the
   eager statistics (`inspect_*`) and with `compile_stats` (`inspect_compiled_*`).
5. sidecar: a user's own pipeline bare, with the blocking InspectCallback and with the pipelined one
   (what each adds per step).
Results are printed and appended to benchmarks/results.csv with device, commit and date.
"""

from __future__ import annotations

import argparse
import logging
import math
import queue
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch

warnings.filterwarnings("ignore")

from run_record import append_row  # noqa: E402

from latentguard.detectors import DetectorPolicy  # noqa: E402
from latentguard.detectors.registry import latent_only  # noqa: E402
from latentguard.server.config import Limits, Settings  # noqa: E402
from latentguard.server.harness.background import BackgroundServer  # noqa: E402
from latentguard.server.pipelines import attention_probes  # noqa: E402
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


#: where the models run: the GPU when there is one (--device overrides); every CSV row names it
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def loopback_settings(**overrides) -> Settings:
    return Settings(host="127.0.0.1", port=0, metrics_port=0, device=DEVICE, **overrides)


def widened_sd3(layers: int, head_dim: int):
    """The built-in tiny-sd3 with a wider, deeper transformer of the same design (seeded weights: the
    cost is measured here, not the pictures)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    base = load_pipeline(Settings().deployment("tiny-sd3"), DEVICE)
    config = {**base.transformer.config, "num_layers": layers, "attention_head_dim": head_dim}
    config["caption_projection_dim"] = config["num_attention_heads"] * head_dim
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel.from_config(config).eval()
    pipe = StableDiffusion3Pipeline(**{**base.components, "transformer": transformer.to(DEVICE)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_guard_overhead(
    steps: int, min_pairs: int, max_pairs: int, layers: int, head_dim: int
) -> dict[str, float]:
    pipe = widened_sd3(layers, head_dim)
    cfg = Settings().deployment("tiny-sd3")
    dep = Deployment(config=cfg, pipe=pipe, family=FAMILIES["sd3"], fingerprint=fingerprint(pipe))
    dep.probe_layers = attention_probes.install(pipe, "sd3", cfg.attention.layers)
    logging.getLogger("latentguard").setLevel(logging.ERROR)  # the widened model is not the profiled one
    attach_profile(dep)  # the built-in profile's envelopes: the cost, not the verdicts, is measured here
    probed, detectors = dep.probe_layers, dep.detectors
    plain = latent_only(detectors)
    assert probed and len(plain) < len(detectors), "the profile has no attention detectors"
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

    def guarded(seed: int, probes: bool = False) -> float:
        dep.probe_layers = probed if probes else []
        dets = detectors if probes else plain
        t = time.perf_counter()
        runner.denoise(
            ["a red circle on a blue background"],
            [seed],
            steps,
            size,
            size,
            guidance,
            detectors=dets,
            policies={n: DetectorPolicy() for n in dets},
        )
        return time.perf_counter() - t

    arms = {"bare": bare, "guarded": guarded, "probed": lambda seed: guarded(seed, probes=True)}
    for arm in arms.values():  # warm-up
        arm(0)
    wall: dict[str, list[float]] = {k: [] for k in arms}  # per arm, one value per set
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    low = high = math.nan
    while len(wall["bare"]) < max_pairs:
        n = len(wall["bare"])
        for kind in list(arms)[n % 3 :] + list(arms)[: n % 3]:
            c, t = time.process_time(), arms[kind](n)
            wall[kind].append(t)
            cpu[kind].append(time.process_time() - c)
        if n + 1 >= min_pairs:
            low, high = overhead_interval(list(zip(wall["bare"], wall["guarded"], strict=True)))
            if high - low < 1.0:
                break
    pairs = {k: list(zip(wall["bare"], wall[k], strict=True)) for k in ("guarded", "probed")}
    dep.probe_layers, dep.detectors = [], plain
    run = runner.denoise(
        ["a red circle on a blue background"],
        [0],
        steps,
        size,
        size,
        guidance,
        detectors={},
        policies={},
        record=True,
    )
    return {
        **guard_breakdown(dep, run.trajectory),
        "bare_step_ms": statistics.median(wall["bare"]) / steps * 1e3,
        "guarded_step_ms": statistics.median(wall["guarded"]) / steps * 1e3,
        "guard_overhead_pct": overhead(pairs["guarded"]),
        "guard_overhead_ci_low": low,
        "guard_overhead_ci_high": high,
        "guard_overhead_pairs": float(len(wall["bare"])),
        "guard_cpu_overhead_pct": overhead(list(zip(cpu["bare"], cpu["guarded"], strict=True))),
        "probed_overhead_pct": overhead(pairs["probed"]),
        "probe_overhead_pct": overhead(list(zip(wall["guarded"], wall["probed"], strict=True))),
    }


def guard_breakdown(dep: Deployment, trajectory, repeats: int = 20) -> dict[str, float]:
    """Where a guarded step's time goes (ms per step, medians over a recorded trajectory's steps):
    x0_hat from consecutive latents, trajectory_stats, all detectors, and the whole RequestGuard.check
    (the rest of it is bookkeeping: scores, verdicts)."""
    from latentguard.detectors import RequestGuard
    from latentguard.kernels import trajectory_stats

    sigmas, latents = trajectory.sigmas, trajectory.latents
    parts: dict[str, list[float]] = {"x0_hat": [], "stats": [], "detectors": [], "check": []}
    for _ in range(repeats):
        guard = RequestGuard(dep.detectors, {}, latents[0], sigmas)
        previous = latents[0].float()  # what the monitor compares step 0's x0_hat with
        for step in range(len(latents) - 1):
            t0 = time.perf_counter()
            x0 = guard.monitor.x0_hat(step, latents[step + 1])
            t1 = time.perf_counter()
            stats = trajectory_stats(x0, previous=previous)  # as the monitor calls it
            t2 = time.perf_counter()
            previous = x0
            for det in dep.detectors.values():
                det.step_score(stats, sigmas[step])
            t3 = time.perf_counter()
            guard.check(step, latents[step + 1])
            t4 = time.perf_counter()
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[name].append(seconds)
    out = {f"guard_{name}_ms": statistics.median(v) * 1e3 for name, v in parts.items()}
    out["guard_ms_per_step"] = out.pop("guard_check_ms")
    out["guard_bookkeeping_ms"] = out["guard_ms_per_step"] - sum(
        out[f"guard_{n}_ms"] for n in ("x0_hat", "stats", "detectors")
    )
    return out


def overhead(pairs: list[tuple[float, float]]) -> float:
    """Median over pairs of guarded / bare - 1, in percent."""
    return float(np.median([g / b - 1 for b, g in pairs]) * 100)


def overhead_interval(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """95% bootstrap interval (percentile) of `overhead`."""
    ratios = np.array([g / b - 1 for b, g in pairs]) * 100
    ci = scipy.stats.bootstrap(
        (ratios,), np.median, confidence_level=0.95, method="percentile", random_state=0
    )
    return float(ci.confidence_interval.low), float(ci.confidence_interval.high)


def bench_detector_costs(repeats: int = 200) -> dict[str, float]:
    """Per detector: the median cost of scoring one step of a real tiny-sd3 request (16 x 32 x 32),
    the learned classifier (onnxruntime) included; and trajectory_stats itself."""
    from latentguard.kernels import trajectory_stats
    from latentguard.server.pipelines.deployments import load_deployment

    dep = load_deployment(Settings().deployment("tiny-sd3"), DEVICE)
    run = PipelineRunner(dep).denoise(
        ["a red circle on a blue background"], [0], 12, 256, 256, 4.5, detectors=dep.detectors, policies={}
    )
    x0 = run.latents  # the final latents: image-like, as a late step's x0_hat
    stats = run.guard.monitor.series[-1]  # the last step's statistics, the attention probes' included
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
    out["stats_with_previous_us_16x32x32"] = median_us(lambda: trajectory_stats(x0, previous=0.9 * x0))
    for name, det in dep.detectors.items():
        out[f"{name}_us"] = median_us(lambda d=det: d.step_score(stats, sigma))
    return out


def bench_second_compute_thread(repeats: int) -> dict[str, float]:
    """A tiny-sd3 request in this process before and after torch has also run on a second thread.

    It needs a process where torch has computed on one thread only (main() runs it before the
    benchmarks that start servers). GNU OpenMP (torch's
    CPU wheels) keeps a thread team per calling thread and throttles its spin-waiting once it manages
    more threads than there are CPUs, so every small op then pays a futex wake-up. The server computes
    on one worker thread per deployment (and Inspect threads), so on CPU it always pays this."""
    from latentguard.server.pipelines.deployments import load_deployment

    dep = load_deployment(Settings().deployment("tiny-sd3"), DEVICE)
    runner = PipelineRunner(dep)
    req = resolve(GenerateRequest("tiny-sd3", "a red circle on a blue background", seed=1), dep, Limits())

    def median_ms() -> float:
        runner.generate(req)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            runner.generate(req)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    one = median_ms()
    with ThreadPoolExecutor(1) as other:
        other.submit(runner.generate, req).result()
        two = median_ms()
    return {"one_compute_thread_ms": one, "two_compute_threads_ms": two, "two_over_one_thread": two / one}


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


@contextmanager
def serve(deployment: str, settings: dict[str, Any] | None = None, **updates) -> Iterator[Any]:
    """A `latentguard serve` process serving one built-in deployment (with config `updates`, and
    top-level `settings`), as in production: the clients here run in another process. Yields
    (a Guardrail stub, the target)."""
    import subprocess
    import tempfile

    import yaml

    from latentguard.server.config import builtin_deployments
    from latentguard.server.harness.process import ServeProcess
    from latentguard.server.rpc.client import channel
    from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

    cfg = next(d for d in builtin_deployments() if d.name == deployment).model_copy(update=updates)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "latentguard.yaml"
        dump = {"device": DEVICE, "deployments": [cfg.model_dump(mode="json", exclude_none=True)]}
        dump |= settings or {}
        config.write_text(yaml.safe_dump(dump))
        server = ServeProcess(config=str(config), stderr=subprocess.DEVNULL)
        try:
            target = server.wait_serving(timeout=600).target  # compile_stats: minutes the first time
            yield pb_grpc.GuardrailStub(channel(target)), target
        finally:
            server.terminate()


def generate_call(stub: Any, deployment: str, side: int = 0) -> Callable[[int], float]:
    """One Generate with seed i (side x side; 0: the deployment's default); returns its latency in seconds."""
    from latentguard.v1 import guardrail_pb2 as pb

    def call(i: int) -> float:
        t = time.perf_counter()
        request = pb.GenerateRequest(
            deployment=deployment, prompt="a red circle on a blue background", seed=i, width=side, height=side
        )
        stub.Generate(request, timeout=120)
        return time.perf_counter() - t

    return call


def bench_batching(deployment: str, total: int, repeats: int) -> dict[str, float]:
    """`total` requests over gRPC with 1, 2, 4, 8 in flight, and a lone request's latency, with dynamic
    batching on (default) and off. Each server is a `latentguard serve` process of its own, as in
    production (on CPU a process computes on one thread: `compute_threads`), run one at a time."""
    out: dict[str, float] = {}
    for mode, size in {"batched": 8, "unbatched": 1}.items():
        with serve(deployment, max_batch_size=size, max_queue=total) as (stub, _):
            call = generate_call(stub, deployment)
            with ThreadPoolExecutor(total) as pool:  # warm-up, a full batch included
                list(pool.map(call, range(total)))
            out[f"{deployment}_{mode}_lone_ms"] = (
                statistics.median(call(i) for i in range(10 * repeats)) * 1e3
            )
            for inflight in (1, 2, 4, 8):
                rounds = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    with ThreadPoolExecutor(inflight) as pool:
                        list(pool.map(call, range(total)))
                    rounds.append(time.perf_counter() - t)
                out[f"{deployment}_{mode}_c{inflight}_rps"] = total / statistics.median(rounds)
        c1, c8 = (out[f"{deployment}_{mode}_c{c}_rps"] for c in (1, 8))
        out[f"{deployment}_{mode}_c8_over_c1"] = c8 / c1
    out[f"{deployment}_lone_ms_batched_minus_unbatched"] = (
        out[f"{deployment}_batched_lone_ms"] - out[f"{deployment}_unbatched_lone_ms"]
    )
    return out


def bench_inspect(sessions: int, steps: int, compile_stats: bool) -> dict[str, float]:
    """Inspect sessions against a `latentguard serve` process, and a lone 256 x 256 tiny-sd3
    Generate's latency before and after them (median of 15): Inspect computes on threads of its own,
    which must not slow the model's (server/core/threads.py). The deployment's default size is
    1024 x 1024 (latents 16 x 128 x 128, the frames sent), which `compile_stats` compiles for."""
    from latentguard.server.rpc.client import tensor_frame

    sigmas = torch.linspace(1, 0, steps + 1).tolist()
    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 16, 128, 128, generator=g).to(torch.bfloat16) for _ in range(steps + 1)]
    settings = {"compile_stats": compile_stats}
    with serve("tiny-sd3", settings, width=1024, height=1024) as (stub, _):
        call = generate_call(stub, "tiny-sd3", side=256)
        call(0)
        before = statistics.median(call(i) for i in range(15))
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
        after = statistics.median(call(i) for i in range(15))
    latencies.sort()
    key = "inspect_compiled" if compile_stats else "inspect"
    return {
        f"{key}_steps_per_s": total_steps / elapsed,
        f"{key}_p50_ms": latencies[len(latencies) // 2] * 1e3,
        f"{key}_p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        f"{key}_generate_before_ms": before * 1e3,
        f"{key}_generate_after_ms": after * 1e3,
        f"{key}_generate_after_ratio": after / before,
    }


def bench_sidecar(steps: int, repeats: int) -> dict[str, float]:
    """A user's own tiny-sd3 pipeline at 1024 x 1024 (latents 16 x 128 x 128) in this process, bare
    and with InspectCallback to a `latentguard serve` process (compile_stats on), blocking and
    pipelined, on the same seeds, order rotating; medians of `repeats` runs per mode. What the
    pipeline pays per step for each mode: (mode - bare) / steps."""
    from latentguard.server.config import builtin_deployments
    from latentguard.server.pipelines.deployments import load_deployment
    from latentguard.server.rpc.client import InspectCallback

    dep = load_deployment(next(d for d in builtin_deployments() if d.name == "tiny-sd3"), DEVICE)
    side = 1024

    def run(mode: str, target: str, seed: int) -> float:
        noise = initial_noise(dep, [seed], side, side)
        callback = None
        if mode != "bare":
            callback = InspectCallback(
                target, "tiny-sd3", dep.pipe, noise, side, side, pipelined=mode == "pipelined"
            )
        t = time.perf_counter()
        dep.pipe(
            "a red circle on a blue background",
            num_inference_steps=steps,
            latents=dep.family.to_pipeline(noise),
            output_type="latent",
            max_sequence_length=dep.config.max_sequence_length,
            height=side,
            width=side,
            callback_on_step_end=callback,
        )
        return time.perf_counter() - t

    modes = ["bare", "blocking", "pipelined"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    with serve("tiny-sd3", {"compile_stats": True}, width=side, height=side) as (_, target):
        for m in modes:
            run(m, target, 0)  # warm-up
        for r in range(repeats):
            for m in modes[r % 3 :] + modes[: r % 3]:
                times[m].append(run(m, target, 100 + r))
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "sidecar_bare_step_ms": med["bare"] / steps * 1e3,
        "sidecar_blocking_added_step_ms": (med["blocking"] - med["bare"]) / steps * 1e3,
        "sidecar_pipelined_added_step_ms": (med["pipelined"] - med["bare"]) / steps * 1e3,
        "sidecar_blocking_over_bare": med["blocking"] / med["bare"],
        "sidecar_pipelined_over_bare": med["pipelined"] / med["bare"],
    }


#: what `--only` chooses from, in the order they run
SECTIONS = ("guard", "threads", "batching", "detectors", "grpc", "inspect", "sidecar")


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--device", default=DEVICE, help=f"where the models run [{DEVICE}]")
    parser.add_argument("--max-pairs", type=int, default=60, help="guard overhead: most pairs of runs")
    # 4 layers: the built-in profile's attention detectors expect 4 probed blocks (with 2, every probed
    # step failed its two detectors and the probed arm timed the error path)
    parser.add_argument("--layers", type=int, default=4, help="widened tiny-sd3: transformer layers")
    parser.add_argument("--head-dim", type=int, default=32, help="widened tiny-sd3: head dim (4 heads)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run, comma-separated [{','.join(SECTIONS)}]"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    DEVICE = args.device
    torch.set_num_threads(torch.get_num_threads())
    results: dict[str, float] = {}
    pairs = (4, 6) if args.quick else (10, args.max_pairs)
    if "guard" in only:
        results.update(bench_guard_overhead(24, *pairs, layers=args.layers, head_dim=args.head_dim))
    if "threads" in only:  # before anything else computes on another thread: see its docstring
        results.update(bench_second_compute_thread(repeats=3 if args.quick else 9))
    if "batching" in only:
        for deployment in ("tiny-sd3", "tiny-flux"):
            results.update(bench_batching(deployment, total=8, repeats=1 if args.quick else 3))
    if "detectors" in only:
        results.update(bench_detector_costs(repeats=50 if args.quick else 500))
    if "grpc" in only:
        results.update(bench_grpc_vs_inprocess(repeats=3 if args.quick else 10))
    if "inspect" in only:
        for compile_stats in (False, True):
            results.update(bench_inspect(2 if args.quick else 5, 20, compile_stats))
    if "sidecar" in only:
        results.update(bench_sidecar(steps=8, repeats=1 if args.quick else 5))
    for k, v in results.items():
        print(f"{k:24s} {v:10.3f}")
    append_row(HERE / "results.csv", results, DEVICE)


if __name__ == "__main__":
    main()
