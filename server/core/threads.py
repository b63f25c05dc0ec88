"""The threads that run torch in the server, and how many OpenMP threads each may use.

GNU OpenMP (torch's CPU wheels) gives every thread that runs a parallel op a team of its own; once
the process holds more OpenMP threads than there are CPUs it throttles their spin-waiting, and every
small op then pays a futex wake-up, on every thread, for the life of the process: a tiny-sd3
request 1.4-2x slower (benchmarks/bench_service.py, `two_over_one_thread` and
`inspect_generate_after_ratio`). So on CPU:

- the models run on one compute thread that uses torch's full thread count (`compute_threads`);
- every other thread that runs torch ops (Inspect sessions) uses one OpenMP thread, so it never
  creates a team: its ops are small, and a second team is what slows everyone down.

The count is per thread (OpenMP's per-thread setting, MKL's local one), but torch also stores it as
the process default that a thread adopts on its first parallel op; `pinned_executor` has each thread
adopt that default first and then set its own, so no thread inherits another's choice, and the
compute thread's count is the one this process had before any side thread pinned its own
(`PROCESS_THREADS`, read when this module is imported). The same count also keeps results
reproducible: reductions and matrix products may round differently with another thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from latentguard.server.config import Settings

#: torch's intra-op thread count in this process, read on import (before any executor here pinned a
#: thread: a pin also changes the default that threads created later adopt)
PROCESS_THREADS = torch.get_num_threads()


def _pin(threads: int) -> None:
    torch.get_num_threads()  # the thread adopts the process default now (torch does it once per thread)
    torch.set_num_threads(threads)


def pinned_executor(workers: int, threads: int, name: str) -> ThreadPoolExecutor:
    """`workers` threads, each running torch with `threads` OpenMP threads."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=_pin, initargs=(threads,))


def compute_threads(settings: Settings) -> Callable[[str], ThreadPoolExecutor]:
    """The worker thread of each deployment. On CPU every deployment shares one, with torch's thread
    count (`PROCESS_THREADS`; the CPU's cores are shared by the deployments anyway; a thread of
    its own each would be a team each). On a GPU each deployment gets its own thread (its kernels
    run asynchronously; the CPU side is small)."""
    if settings.device != "cpu":
        return lambda name: ThreadPoolExecutor(1, thread_name_prefix=f"lg-{name}")
    shared = pinned_executor(1, PROCESS_THREADS, "lg-cpu")
    return lambda name: shared


def side_executor(workers: int, name: str) -> ThreadPoolExecutor:
    """Threads for torch work beside the models' (Inspect sessions): one OpenMP thread each."""
    return pinned_executor(workers, 1, name)
