"""Threads that run torch beside the compute thread create no OpenMP team (server/core/threads.py)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from latentguard.server.core.threads import PROCESS_THREADS, compute_threads, side_executor

# In a fresh process: this one has gRPC and earlier tests' threads coming and going.
_COUNT_THREADS = textwrap.dedent(
    """
    import json, os, sys
    from concurrent.futures import ThreadPoolExecutor

    import torch

    torch.set_num_threads(2)
    from latentguard.server.config import Settings
    from latentguard.server.core.threads import compute_threads, side_executor

    alive = []  # an executor that is collected ends its thread, and the count with it

    def added_by(executor):
        alive.append(executor)
        before = len(os.listdir("/proc/self/task"))
        x = torch.randn(1 << 20)
        executor.submit(lambda: float((x * 2).sum())).result()  # large enough to run in parallel
        return len(os.listdir("/proc/self/task")) - before

    # the side thread first: its pin (one OpenMP thread) must not reach the compute thread
    print(json.dumps({
        "side": added_by(side_executor(1, "side")),
        "compute": added_by(compute_threads(Settings())("d")),
        "plain": added_by(ThreadPoolExecutor(1)),
    }))
    """
)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts Linux threads")
def test_a_side_thread_brings_no_openmp_team_and_the_compute_thread_brings_the_one():
    out = subprocess.run(
        [sys.executable, "-P", "-c", _COUNT_THREADS], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout.strip().splitlines()[-1])
    assert added["side"] == 1  # itself only
    assert added["compute"] == 2  # itself + its team, although the side thread pinned 1 before
    assert added["plain"] == 2  # an unpinned thread brings a team: what Inspect threads did


def test_thread_counts_are_pinned_per_thread(settings):
    side = side_executor(1, "test-side")
    assert side.submit(torch.get_num_threads).result() == 1
    compute = compute_threads(settings)("tiny-sd3")
    assert compute.submit(torch.get_num_threads).result() == PROCESS_THREADS
    assert torch.get_num_threads() == PROCESS_THREADS  # this thread's count is its own
    side.shutdown()
    compute.shutdown()


def test_compile_stats_compiles_at_start_for_each_thread_count_that_computes_statistics(monkeypatch):
    """The compiled epilogue is keyed by thread count (inductor builds it into the code): the server
    compiles it for the deployment's default latent size on the compute thread and on an Inspect
    thread, before serving, and not at all without compile_stats."""
    from latentguard.server.config import Settings, builtin_deployments
    from latentguard.server.core import service
    from latentguard.server.harness.background import BackgroundServer

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(
        service, "warm_up_compiled", lambda h, w: calls.append((h, w, torch.get_num_threads()))
    )
    sd3 = next(d for d in builtin_deployments() if d.name == "tiny-sd3")
    for compile_stats in (False, True):
        settings = Settings(
            deployments=[sd3],
            compile_stats=compile_stats,
            warmup=False,
            host="127.0.0.1",
            port=0,
            metrics_port=0,
        )
        BackgroundServer(settings).start().stop()
    assert calls == [(32, 32, PROCESS_THREADS), (32, 32, 1)]  # tiny-sd3: 256 x 256, latents 32 x 32
