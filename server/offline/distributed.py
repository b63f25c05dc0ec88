"""The batch jobs on a Ray cluster: `--ray ADDRESS` on calibrate, train-classifier, ab and the
evaluation script (`local` starts a cluster on this machine; anything else is given to ray.init,
e.g. `auto` inside a KubeRay head pod or `ray://head:10001`).

The (prompt, seed) grid is cut into shards of whole batches; each Ray actor loads the deployment
once (one device each: `gpus_per_worker`) and returns per-step statistics only, never latents; the
shards are put back in order, so the result is the one a local run gives (same batches, same
drills per batch). Ray is an optional extra: `pip install latentguard[ray]`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import latentguard.kernels
from latentguard.kernels import TrajectoryStats
from latentguard.server.config import Settings

if TYPE_CHECKING:  # imported by the actors only once they have left the checkout (see _leave_checkout)
    from latentguard.server.offline.trajectories import Collected, Drills, Progress

log = logging.getLogger(__name__)
SHARD_BATCHES = 4  # batches per shard: small enough for an even spread and a smooth progress bar


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'latentguard[ray]'") from None
    return ray


@contextmanager
def cluster(address: str, workers: int) -> Iterator[Any]:
    """ray.init for the duration; `local` starts (and then stops) a cluster of `workers` CPUs here."""
    ray = _ray()
    if address == "local":
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def _leave_checkout() -> None:
    """Ray puts the driver's working directory first on its workers' sys.path. Run from a checkout, that is
    the repository root, whose kernels/ would then shadow Hugging Face's `kernels` package (transformers and
    diffusers import it). The actors drop it before their first import of diffusers; latentguard itself
    is installed, so nothing is lost."""
    ours = Path(latentguard.kernels.__file__).resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() / "kernels" / "__init__.py" != ours]


class _Worker:
    """One deployment, loaded once per actor."""

    def __init__(self, settings: Settings, name: str, batch_size: int, threads: int):
        _leave_checkout()
        import torch

        from latentguard.server.offline.trajectories import LocalCollector
        from latentguard.server.pipelines.deployments import load_deployment

        torch.set_num_threads(threads)
        self.local = LocalCollector(load_deployment(settings.deployment(name), settings.device), batch_size)

    def identity(self) -> tuple[Any, str]:
        return self.local.config, self.local.fingerprint

    def collect(
        self, runs: list[tuple[str, int]], drill: Drills, first_batch: int
    ) -> tuple[TrajectoryStats, list[float]]:
        from latentguard.server.offline.trajectories import collect

        local = self.local
        got = collect(local.dep, runs, drill=drill, batch_size=local.batch_size, first_batch=first_batch)
        return got.stats, got.sigmas


class RayCollector:
    """A Collector whose runs go to `workers` Ray actors (inside `cluster(...)`)."""

    def __init__(
        self,
        settings: Settings,
        deployment: str,
        workers: int = 2,
        batch_size: int = 8,
        gpus_per_worker: float = 0,
        threads_per_worker: int = 1,
    ):
        ray = _ray()
        actor = ray.remote(num_cpus=threads_per_worker, num_gpus=gpus_per_worker)(_Worker)
        self.ray, self.batch_size = ray, batch_size
        self.workers = [
            actor.remote(settings, deployment, batch_size, threads_per_worker) for _ in range(workers)
        ]
        self.config, self.fingerprint = ray.get(self.workers[0].identity.remote())

    def collect(
        self, runs: list[tuple[str, int]], drill: Drills = None, progress: Progress | None = None
    ) -> Collected:
        from latentguard.server.offline.trajectories import Collected

        if not runs:
            raise ValueError("no runs to collect")
        size = SHARD_BATCHES * self.batch_size
        shards = [runs[i : i + size] for i in range(0, len(runs), size)]
        pending = {
            self.workers[k % len(self.workers)].collect.remote(shard, drill, k * SHARD_BATCHES): k
            for k, shard in enumerate(shards)
        }
        results: dict[int, tuple[TrajectoryStats, list]] = {}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            k = pending.pop(done[0])
            results[k] = self.ray.get(done[0])
            if progress is not None:
                progress(len(shards[k]))
        parts = [results[k][0] for k in range(len(shards))]
        return Collected(TrajectoryStats.cat(parts), results[0][1])


class _PairWorker:
    """Both deployments of an A/B comparison, loaded once per actor."""

    def __init__(self, settings: Settings, threads: int):
        _leave_checkout()
        import torch

        from latentguard.server.offline.ab_sources import InProcessSource

        torch.set_num_threads(threads)
        self.source = InProcessSource(settings)

    def info(self, deployment: str) -> Any:
        return self.source.info(deployment)

    def pairs(self, baseline: str, candidate: str, items: list[tuple[str, int]], drill: str) -> list[Any]:
        from latentguard.server.offline.ab import run_pairs

        return run_pairs(self.source, baseline, candidate, items, drill)


def ray_pairs(
    settings: Settings,
    baseline: str,
    candidate: str,
    items: list[tuple[str, int]],
    drill: str,
    workers: int,
    on_pair: Any = None,
) -> tuple[Any, Any, list[Any]]:
    """(baseline info, candidate info, pairs in the order of `items`) from `workers` Ray actors;
    each pair is reduced to its per-step divergence on the actor, so only small records travel."""
    ray = _ray()
    actor = ray.remote(num_cpus=1)(_PairWorker)
    pool = [actor.remote(settings, 1) for _ in range(workers)]
    infos = ray.get([pool[0].info.remote(baseline), pool[0].info.remote(candidate)])
    shards = [items[i : i + 4] for i in range(0, len(items), 4)]
    pending = {
        pool[k % workers].pairs.remote(baseline, candidate, shard, drill): k for k, shard in enumerate(shards)
    }
    results: dict[int, list[Any]] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(done[0])
        results[k] = ray.get(done[0])
        if on_pair is not None:
            for _ in results[k]:
                on_pair()
    return infos[0], infos[1], [p for k in range(len(shards)) for p in results[k]]
