"""Trajectory collection (what calibrate, train-classifier and the evaluation spend their time on):
this process vs a local Ray cluster with 1 and 2 workers, measured in one run.

    python benchmarks/bench_ray.py [--runs 192] [--deployment tiny-sd3]

On a GPU cluster give each worker a GPU (RayCollector(gpus_per_worker=1)); here every worker gets one
CPU thread, and "this process" uses all of torch's threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from run_record import append_row

from latentguard.server.config import Settings
from latentguard.server.offline.distributed import RayCollector, cluster
from latentguard.server.offline.trajectories import LocalCollector, default_prompts, run_grid
from latentguard.server.pipelines.deployments import load_deployment

HERE = Path(__file__).parent


def timed(source, runs) -> float:
    source.collect(runs[:8])  # warm-up
    start = time.perf_counter()
    source.collect(runs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=192)
    parser.add_argument("--deployment", default="tiny-sd3")
    args = parser.parse_args()
    settings = Settings()
    runs = run_grid(default_prompts("calibration"), 1)[: args.runs]
    results = {"runs": float(args.runs)}
    results["local_s"] = timed(LocalCollector(load_deployment(settings.deployment(args.deployment))), runs)
    for workers in (1, 2):
        with cluster("local", workers):
            results[f"ray_{workers}_s"] = timed(RayCollector(settings, args.deployment, workers), runs)
    results["ray_speedup_1_to_2"] = results["ray_1_s"] / results["ray_2_s"]
    results["ray_2_over_local"] = results["local_s"] / results["ray_2_s"]
    print(f"torch threads in this process: {torch.get_num_threads()}")
    for k, v in results.items():
        print(f"{k:22s} {v:10.3f}")
    append_row(HERE / "ray.csv", results)


if __name__ == "__main__":
    main()
