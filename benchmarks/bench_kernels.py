"""trajectory_stats benchmarks; every figure is a time or ratio measured in this one run.

    python benchmarks/bench_kernels.py [--quick]

CPU (always), per latent shape 1 x 16 x H x W:
    naive     per-channel op-by-op eager baseline (kernels/oracle.py in float32)
    fast      the torch path `backend="reference"` (what runs off-GPU), eager
    compiled  the same with its epilogue compiled by inductor (`compile_stats`; kernels/compiled.py),
              after `warm_up_compiled` (its compile time is reported too)
    isolation the part of it that computes `isolation` / `isolation_at` (round 6), alone
    rfft2     torch.fft.rfft2 of the same planes alone: the floor the fast path is measured against
GPU (only when CUDA is present; runs unchanged there), per batch and input dtype, CUDA events:
    triton    the fused kernel, one launch
    torch     the torch path on the GPU
    launch    an empty kernel launch (launch-latency floor)
    bandwidth the input bytes at the copy bandwidth measured on this GPU (memory floor)
Rows are appended to benchmarks/kernels.csv with device, commit and date.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from run_record import append_row  # noqa: E402

from latentguard.kernels import compiled, pack_int4, trajectory_stats  # noqa: E402
from latentguard.kernels.oracle import trajectory_stats_oracle  # noqa: E402
from latentguard.kernels.torch_stats import _isolation  # noqa: E402

HERE = Path(__file__).parent
SIZES = [64, 128]


def cpu_ms(fn: Callable[[], object], repeats: int, inner: int) -> float:
    """Median over `repeats` of the mean time of `inner` back-to-back calls, after warm-up."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(samples)


def bench_cpu(quick: bool) -> dict[str, float]:
    results: dict[str, float] = {"cpu_threads": torch.get_num_threads()}
    repeats = 3 if quick else 9
    for n in SIZES:
        x = torch.randn(1, 16, n, n, generator=torch.Generator().manual_seed(n))
        planes = x.reshape(16, n, n)
        naive = cpu_ms(lambda: trajectory_stats_oracle(x, torch.float32), repeats, 2)  # noqa: B023
        fast = cpu_ms(lambda: trajectory_stats(x, backend="reference"), repeats, 50)  # noqa: B023
        previous = 0.9 * x  # as the monitor calls it: with the previous step's x0_hat
        served = cpu_ms(lambda: trajectory_stats(x, backend="reference", previous=previous), repeats, 50)  # noqa: B023
        floor = cpu_ms(lambda: torch.fft.rfft2(planes), repeats, 50)  # noqa: B023
        isolation = cpu_ms(lambda: _isolation(planes), repeats, 50)  # noqa: B023
        t0 = time.perf_counter()
        compiled.warm_up_compiled(n, n)
        compile_s = time.perf_counter() - t0
        fast_c = cpu_ms(lambda: trajectory_stats(x, backend="reference"), repeats, 50)  # noqa: B023
        served_c = cpu_ms(lambda: trajectory_stats(x, backend="reference", previous=previous), repeats, 50)  # noqa: B023
        compiled.reset()
        key = f"cpu_16x{n}x{n}"
        results |= {
            f"{key}_naive_ms": naive,
            f"{key}_fast_ms": fast,
            f"{key}_rfft2_ms": floor,
            f"{key}_speedup_vs_naive": naive / fast,
            f"{key}_fast_over_rfft2": fast / floor,
            f"{key}_with_previous_ms": served,
            f"{key}_with_previous_over_fast": served / fast,
            f"{key}_isolation_share": isolation / fast,
            f"{key}_compiled_ms": fast_c,
            f"{key}_compiled_over_rfft2": fast_c / floor,
            f"{key}_compiled_with_previous_ms": served_c,
            f"{key}_compiled_with_previous_over_rfft2": served_c / floor,
            f"{key}_eager_over_compiled": fast / fast_c,
            f"{key}_compile_s": compile_s,
        }
    return results


def cuda_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 20)
    return statistics.median(samples)


def bench_gpu(quick: bool) -> dict[str, float]:  # pragma: no cover - needs a GPU
    import triton

    @triton.jit
    def _empty(ptr):
        pass

    results: dict[str, float] = {}
    repeats = 5 if quick else 25
    dummy = torch.empty(1, device="cuda")
    launch = cuda_ms(lambda: _empty[(1,)](dummy), repeats)
    big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    copy_ms = cuda_ms(lambda: big.clone(), repeats)
    bandwidth = 2 * big.numel() / (copy_ms * 1e-3)  # read + write bytes per second
    results |= {"gpu_launch_us": launch * 1e3, "gpu_copy_bandwidth_gbps": bandwidth / 1e9}
    for batch in (1, 4, 8):
        x32 = torch.randn(batch, 16, 128, 128, device="cuda")
        for name, x in {
            "bf16": x32.to(torch.bfloat16),
            "fp8": x32.to(torch.float8_e4m3fn),
            "int4": pack_int4(x32),
        }.items():
            nbytes = x.numel() * x.element_size() if isinstance(x, torch.Tensor) else x.nbytes
            tri = cuda_ms(lambda: trajectory_stats(x, backend="triton"), repeats)  # noqa: B023
            ref = cuda_ms(lambda: trajectory_stats(x, backend="reference"), repeats)  # noqa: B023
            key = f"gpu_b{batch}_{name}"
            results |= {
                f"{key}_triton_us": tri * 1e3,
                f"{key}_torch_us": ref * 1e3,
                f"{key}_torch_over_triton": ref / tri,
                f"{key}_bandwidth_floor_us": nbytes / bandwidth * 1e6,
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args()
    results = bench_cpu(args.quick)
    if torch.cuda.is_available():
        results |= bench_gpu(args.quick)
    else:
        print("no CUDA device: GPU rows skipped (the Triton figures in the README are estimates)")
    for key, value in results.items():
        print(f"{key:44s} {value:10.3f}")
    append_row(HERE / "kernels.csv", results)


if __name__ == "__main__":
    main()
