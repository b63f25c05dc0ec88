"""Threads that run torch beside the compute thread create no OpenMP team (server/core/threads.py)."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from latentguard.server.core.threads import PROCESS_THREADS, compute_threads, side_executor

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or PROCESS_THREADS < 2, reason="counts Linux threads; needs 2+ CPUs"
)


@pytest.fixture(autouse=True)
def process_default():
    """The default a new thread adopts, as at start (a side thread pinned earlier changed it)."""
    torch.set_num_threads(PROCESS_THREADS)


def _threads_added_by(executor: ThreadPoolExecutor) -> int:
    """OS threads this process gained when the executor's one thread ran a parallel op."""
    before = _settled_thread_count()
    x = torch.randn(1 << 20)
    executor.submit(lambda: float((x * 2).sum())).result()  # large enough to run in parallel
    added = len(os.listdir("/proc/self/task")) - before
    executor.shutdown()
    return added


def _settled_thread_count() -> int:
    """The thread count once the team threads of executors shut down earlier have exited."""
    count = len(os.listdir("/proc/self/task"))
    for _ in range(40):  # at most 2 s
        time.sleep(0.05)
        now = len(os.listdir("/proc/self/task"))
        if now == count:
            return now
        count = now
    return count


def test_a_plain_thread_brings_an_openmp_team_and_a_side_thread_does_not(settings):
    assert _threads_added_by(ThreadPoolExecutor(1)) == PROCESS_THREADS  # itself + its team
    assert _threads_added_by(compute_threads(settings)("tiny-sd3")) == PROCESS_THREADS  # the one team
    assert _threads_added_by(side_executor(1, "test-side")) == 1  # itself only


def test_thread_counts_are_pinned_per_thread_whatever_ran_before(settings):
    side = side_executor(1, "test-side")
    assert side.submit(torch.get_num_threads).result() == 1
    # a pin changes the default a new thread adopts; the compute thread sets its own count
    compute = compute_threads(settings)("tiny-sd3")
    assert compute.submit(torch.get_num_threads).result() == PROCESS_THREADS
    assert torch.get_num_threads() == PROCESS_THREADS  # this thread's count is its own
    side.shutdown()
    compute.shutdown()
